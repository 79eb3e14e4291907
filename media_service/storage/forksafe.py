"""Make a forked child open its own database connections: one at-fork hook for every adapter.

The shipped gunicorn configuration loads the app in each worker, after the fork
(config/gunicorn.conf.py: `preload_app = False`), so there no worker inherits a connection. The
hook stays all the same, because nothing else guarantees that: `gunicorn --preload` on the
command line wins over the file, other pre-forking servers load the app in the master by
default, and tools and tests fork with `multiprocessing`. A child that used its parent's pymongo
client or sqlite3 connections would share their sockets, monitor threads and locks with the
parent (SQLite forbids it outright). Registering costs nothing while no process forks.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkSafe(Protocol):
    """Something holding per-process connections that a forked child must not use."""

    def forget_connections_after_fork(self) -> None:
        """Drop (never use or close) what the parent opened; runs in the child, single-threaded."""
        ...


_tracked: weakref.WeakSet[ForkSafe] = weakref.WeakSet()


def forget_in_forked_children(resource: ForkSafe) -> None:
    """Call `resource.forget_connections_after_fork()` in every child forked from now on."""
    _tracked.add(resource)


def _after_fork_in_child() -> None:
    for resource in list(_tracked):
        resource.forget_connections_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
