"""FerretDB v1 with its embedded SQLite handler: a MongoDB wire-protocol server on loopback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from realservers import pins
from realservers.process import LOOPBACK, Daemon, LoopbackServer, port_open


@dataclass
class FerretDB(LoopbackServer):
    name = "ferretdb"

    def url(self, database: str = "media") -> str:
        return f"mongodb://{LOOPBACK}:{self.port}/{database}"

    def healthy(self) -> bool:
        return port_open(self.port)

    def new_daemon(self) -> Daemon:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            str(pins.ferretdb_binary()),
            "--handler=sqlite",
            f"--sqlite-url=file:{data}/",
            f"--listen-addr={LOOPBACK}:{self.port}",
            "--debug-addr=-",  # no debug HTTP listener (its default port would clash)
            "--telemetry=disable",  # telemetry would try to reach the internet
            f"--state-dir={self.root}",
            "--log-level=warn",
        ]
        env = {"HOME": str(self.root)}
        return Daemon("ferretdb", argv, self.root / "ferretdb.log", env=env, cwd=self.root)


def start_ferretdb(root: Path) -> FerretDB:
    """Start FerretDB with its SQLite files under `root` and wait until it accepts connections."""
    server = FerretDB(root)
    server.start()
    return server
