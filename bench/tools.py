"""Install what the benchmarks need, once: Debian's nginx and wrk, matplotlib and py-spy.

Everything is idempotent and quick when already there: a tool found on PATH (or a module that
imports) is never reinstalled. The Python tools go into the running interpreter's environment
(.venv) with its own pip; they are benchmark-only, so they are not project dependencies.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

Log = Callable[[str], None]

# Debian package providing each command. nginx-light is Debian's smallest nginx build; it has
# everything a static `sendfile` server needs.
APT_PACKAGES = {"nginx": "nginx-light", "wrk": "wrk"}
# pip distribution providing each importable module or command.
PIP_PACKAGES = {"matplotlib": "matplotlib", "py-spy": "py-spy"}

# Debian's hook that tells maintainer scripts not to start services: installing nginx must not
# start a system nginx on port 80 as a side effect.
POLICY_RC = Path("/usr/sbin/policy-rc.d")
_POLICY_RC_DENY = (
    "#!/bin/sh\n# Written by media-service bench/tools.py during apt-get install.\nexit 101\n"
)


class ToolMissing(RuntimeError):
    """A tool could not be found or installed; the message says how to get it."""


def venv_bin() -> Path:
    """The directory of the running interpreter (not resolved: a venv's python is a symlink)."""
    return Path(sys.executable).parent


def find_command(name: str) -> str | None:
    """The path of `name` in .venv/bin, /usr/sbin (nginx lives there) or on PATH."""
    for directory in (venv_bin(), Path("/usr/sbin"), Path("/usr/local/sbin")):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def ensure_commands(names: list[str], log: Log = print) -> dict[str, str]:
    """Return {name: path} for Debian tools, installing the missing ones with apt-get."""
    missing = [name for name in names if find_command(name) is None]
    if missing:
        packages = sorted({APT_PACKAGES[name] for name in missing})
        log(f"installing {', '.join(packages)} with apt-get (one time)")
        _apt_install(packages)
    found = {name: find_command(name) for name in names}
    absent = [name for name, path in found.items() if path is None]
    if absent:
        raise ToolMissing(f"{', '.join(absent)} not found after apt-get install")
    return {name: str(path) for name, path in found.items()}


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0:
        raise ToolMissing(
            f"{' '.join(packages)} missing and not running as root: "
            f"sudo apt-get install -y {' '.join(packages)}"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    wrote_policy = False
    if not POLICY_RC.exists():
        POLICY_RC.write_text(_POLICY_RC_DENY)
        POLICY_RC.chmod(0o755)
        wrote_policy = True
    try:
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
            # The package lists may be missing or stale on a fresh machine: update once, retry.
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
            done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise ToolMissing(
                    f"apt-get install {' '.join(packages)} failed:\n{done.stderr[-2000:]}"
                )
    finally:
        if wrote_policy:
            POLICY_RC.unlink(missing_ok=True)


def ensure_python_tools(names: list[str], log: Log = print) -> None:
    """Install matplotlib / py-spy into the running environment if they are missing."""
    missing = []
    for name in names:
        present = (
            find_command(name) is not None
            if name == "py-spy"
            else importlib.util.find_spec(name) is not None
        )
        if not present:
            missing.append(PIP_PACKAGES[name])
    if not missing:
        return
    log(f"installing {', '.join(missing)} with pip into {venv_bin().parent} (one time)")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", *missing],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ToolMissing(f"pip install {' '.join(missing)} failed:\n{done.stderr[-2000:]}")
    importlib.invalidate_caches()


def version_of(command: list[str]) -> str:
    """The first line a `--version`-like command prints (to stdout or stderr), or '?'."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"
