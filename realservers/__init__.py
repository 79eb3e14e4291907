"""Real servers for the real-backend suite and `make stack`: MinIO, FerretDB and Ceph RGW.

Development tooling, not part of the service. `python -m realservers install` builds or installs
each server once (pinned) into `.tools/`; `start_*` runs one on free loopback ports with its data
in a directory of the caller's, and `.stop()` ends it by PID. See `python -m realservers --help`.
`realservers.gunicorn_server.GunicornServer` runs the service itself under gunicorn the same way,
for the integration and fault tests and the bench.
"""

from realservers.ceph import CephRgw, start_ceph_rgw
from realservers.ferretdb import FerretDB, start_ferretdb
from realservers.minio import Minio, start_minio
from realservers.process import Daemon, ServerFailed, free_port

__all__ = [
    "CephRgw",
    "Daemon",
    "FerretDB",
    "Minio",
    "ServerFailed",
    "free_port",
    "start_ceph_rgw",
    "start_ferretdb",
    "start_minio",
]
