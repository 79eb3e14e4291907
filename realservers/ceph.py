"""A one-node Ceph cluster serving S3 through radosgw, on loopback, with no authentication.

Debian 12's Ceph (Pacific) has no standalone store for radosgw, so this is the smallest real
cluster: one ceph-mon, one ceph-osd on memstore (objects in RAM, no disk to prepare), and
radosgw with the beast frontend. No ceph-mgr: nothing here needs it. Start to first S3 answer
takes a few seconds.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from realservers.process import LOOPBACK, Daemon, S3Account, free_port, http_ok, run_checked

ACCESS_KEY = "media-test-rgw"
SECRET_KEY = "media-test-rgw-secret"  # loopback-only test cluster
START_TIMEOUT = 90.0

_CONF = """\
[global]
fsid = {fsid}
mon_host = v2:{host}:{mon_port}
public_network = {host}/32
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
# Without this, radosgw retries forever with auth none ("get_initial_auth_request returned -13").
ms_mon_client_mode = crc secure
ms_bind_ipv6 = false
run_dir = {root}/run
admin_socket = {root}/run/$name.asok
pid_file = {root}/run/$name.pid
log_file = {root}/log/$name.log
mon_data = {root}/mon/$name
osd_data = {root}/osd/$name
osd_objectstore = memstore
memstore_device_bytes = {memstore_bytes}
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
# radosgw creates its pools on first start; each waits for a paxos round (1 s by default).
paxos_propose_interval = 0.1
# Deleted objects' tails wait for garbage collection (2 h by default), in RAM on memstore.
rgw_gc_obj_min_wait = 30
rgw_gc_processor_period = 30
osd_max_object_size = 134217728

[mon.a]
mon_addr = v2:{host}:{mon_port}

[client.rgw]
rgw_frontends = beast endpoint={host}:{rgw_port}
rgw_dns_name = {host}
"""


@dataclass
class CephRgw:
    """The three daemons of the cluster; `s3` is the endpoint radosgw serves and its user."""

    root: Path
    port: int
    daemons: list[Daemon] = field(default_factory=list)
    name = "ceph-rgw"

    @property
    def s3(self) -> S3Account:
        return S3Account(ACCESS_KEY, SECRET_KEY, self.port)

    def healthy(self) -> bool:
        return http_ok(self.s3.endpoint)

    def stop(self) -> None:
        for daemon in reversed(self.daemons):  # radosgw, then the OSD, then the monitor
            daemon.stop()


def start_ceph_rgw(root: Path, memstore_bytes: int = 4 << 30) -> CephRgw:
    """Bootstrap a fresh cluster under `root` and start it; create the S3 user."""
    for sub in ("run", "log", "mon", "osd"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "ceph.conf"
    mon_port, rgw_port = free_port(), free_port()
    conf.write_text(
        _CONF.format(
            fsid=uuid.uuid4(),
            host=LOOPBACK,
            mon_port=mon_port,
            rgw_port=rgw_port,
            root=root,
            memstore_bytes=memstore_bytes,
        )
    )
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(root), "CEPH_CONF": str(conf)}
    common = ["--conf", str(conf)]
    cluster = CephRgw(root=root, port=rgw_port)
    try:
        fsid = conf.read_text().split("fsid = ", 1)[1].split("\n", 1)[0]
        monmap = root / "monmap"
        run_checked(
            ["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
             f"[v2:{LOOPBACK}:{mon_port}]", str(monmap)],
            env=env,
        )  # fmt: skip
        run_checked(["ceph-mon", *common, "-i", "a", "--mkfs", "--monmap", str(monmap)], env=env)
        mon = Daemon("ceph-mon", ["ceph-mon", *common, "-f", "-i", "a"], root / "mon.out", env=env)
        cluster.daemons.append(mon.start())

        osd_uuid = str(uuid.uuid4())
        osd_id = run_checked(["ceph", *common, "osd", "new", osd_uuid], env=env, timeout=60)
        osd_id = osd_id.strip()
        (root / "osd" / f"osd.{osd_id}").mkdir()  # memstore keeps only its fsid files here
        run_checked(["ceph-osd", *common, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid], env=env)
        osd = Daemon(
            "ceph-osd", ["ceph-osd", *common, "-f", "-i", osd_id], root / "osd.out", env=env
        )
        cluster.daemons.append(osd.start())
        osd.wait_until(lambda: _osd_up(common, env), START_TIMEOUT)

        rgw = Daemon(
            "radosgw", ["radosgw", *common, "-f", "-n", "client.rgw"], root / "rgw.out", env=env
        )
        cluster.daemons.append(rgw.start())
        rgw.wait_until(cluster.healthy, START_TIMEOUT)
        run_checked(
            ["radosgw-admin", *common, "user", "create", "--uid", "media-test",
             "--display-name", "media-test", "--access-key", ACCESS_KEY,
             "--secret", SECRET_KEY],
            env=env,
            timeout=60,
        )  # fmt: skip
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _osd_up(common: list[str], env: dict[str, str]) -> bool:
    out = run_checked(["ceph", *common, "osd", "stat", "--format", "json"], env=env, timeout=30)
    return int(json.loads(out).get("num_up_osds", 0)) >= 1
