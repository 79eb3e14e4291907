"""FerretDB v1 with its embedded SQLite handler: a MongoDB wire-protocol server on loopback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from realservers import pins
from realservers.process import LOOPBACK, Daemon, free_port, port_open

START_TIMEOUT = 30.0


@dataclass
class FerretDB:
    """A running (or stopped) FerretDB; `restart()` brings it back on the same port and data."""

    root: Path
    port: int
    daemon: Daemon
    name: str = field(default="ferretdb")

    def url(self, database: str = "media") -> str:
        return f"mongodb://{LOOPBACK}:{self.port}/{database}"

    def healthy(self) -> bool:
        return port_open(self.port)

    def stop(self) -> None:
        self.daemon.stop()

    def kill(self) -> None:
        self.daemon.kill()

    def restart(self) -> None:
        self.daemon.stop()
        self.daemon = _daemon(self.root, self.port)
        self.daemon.start().wait_until(self.healthy, START_TIMEOUT)


def _daemon(root: Path, port: int) -> Daemon:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        str(pins.ferretdb_binary()),
        "--handler=sqlite",
        f"--sqlite-url=file:{data}/",
        f"--listen-addr={LOOPBACK}:{port}",
        "--debug-addr=-",  # no debug HTTP listener (its default port would clash)
        "--telemetry=disable",  # telemetry would try to reach the internet
        f"--state-dir={root}",
        "--log-level=warn",
    ]
    return Daemon("ferretdb", argv, root / "ferretdb.log", env={"HOME": str(root)}, cwd=root)


def start_ferretdb(root: Path, port: int | None = None) -> FerretDB:
    """Start FerretDB with its SQLite files under `root` and wait until it accepts connections."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    server = FerretDB(root=root, port=port, daemon=_daemon(root, port))
    server.daemon.start()
    try:
        server.daemon.wait_until(server.healthy, START_TIMEOUT)
    except BaseException:
        server.stop()
        raise
    return server
