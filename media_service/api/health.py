"""Liveness and readiness probes (SPEC §4.7)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from media_service.context import app_state, current_media_service
from media_service.errors import ServiceUnavailable
from media_service.storage.interfaces import BackendUnavailable

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz() -> Any:
    """The process is alive; no backend calls."""
    return jsonify(status="ok")


@blp.get("/readyz")
def readyz() -> Any:
    """The database and the blob store both answer, and no local volume is below the
    free-space reserve (then uploads are refused; deletes and downloads still work)."""
    backends = app_state().backends
    checks: dict[str, str] = {}
    failed = []
    for name, ping in (("database", backends.media.ping), ("blob_store", backends.blobs.ping)):
        try:
            ping()
            checks[name] = "ok"
        except BackendUnavailable as error:
            checks[name] = "unavailable"
            failed.append(f"{name}: {error.detail or 'unavailable'}")
    disk = current_media_service().disk
    low = disk.low()
    spare = disk.restore_spare()
    if low or not spare:
        checks["disk"] = "low"
        details = [f"{name} volume has {free} bytes free" for name, free in low.items()]
        if not spare:
            details.append("the database's spare file is in use")
        failed.append(f"disk: {', '.join(details)} (reserve: {disk.min_free_bytes} bytes)")
    else:
        checks["disk"] = "ok"
    if failed:
        raise ServiceUnavailable("Not ready: " + "; ".join(failed))
    return jsonify(status="ready", checks=checks)
