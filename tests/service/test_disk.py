"""The free-space reserve and the spare file, without a real small disk (see
tests/faults/test_disk_full.py for the API and a real tmpfs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from media_service.errors import InsufficientStorage
from media_service.service.disk import DiskGuard
from media_service.settings import local_volumes
from media_service.storage.disk import SpareFile
from tests.conftest import make_settings

MIB = 1024 * 1024


def test_spare_file_is_allocated_released_and_allocated_again(tmp_path: Path) -> None:
    spare = SpareFile(tmp_path, MIB)
    assert not spare.present()
    assert spare.ensure() and spare.present()
    st = os.stat(spare.path)
    assert st.st_size == MIB and st.st_blocks * 512 >= MIB  # real blocks, not a sparse file
    assert spare.ensure()  # idempotent
    assert spare.release() and not spare.present()
    assert not spare.release()  # released once
    assert spare.ensure() and spare.present()
    assert sorted(p.name for p in tmp_path.iterdir()) == [spare.path.name]  # no temp left


def test_a_zero_spare_is_disabled(tmp_path: Path) -> None:
    spare = SpareFile(tmp_path, 0)
    assert spare.present() and spare.ensure() and not spare.release()
    assert list(tmp_path.iterdir()) == []


def test_volumes_are_the_local_directories_the_service_writes(tmp_path: Path) -> None:
    embedded = make_settings(tmp_path)
    assert local_volumes(embedded) == {
        "blob_store": tmp_path / "blobs",
        "database": tmp_path.resolve(),
    }
    remote = embedded.with_overrides(
        storage_url="s3://bucket/prefix", database_url="mongodb://127.0.0.1/media"
    )
    assert local_volumes(remote) == {}
    guard = DiskGuard.from_settings(remote.with_overrides(min_free_bytes=2**62))
    guard.admit(10**12)  # nothing local to fill
    guard.check_chunk(MIB)


@pytest.mark.parametrize(
    ("free", "size", "refused"),
    [(10 * MIB, MIB, False), (5 * MIB, MIB, False), (5 * MIB - 1, MIB, True), (0, 0, True)],
)
def test_a_chunk_may_not_cross_the_reserve(
    tmp_path: Path, free: int, size: int, refused: bool
) -> None:
    guard = DiskGuard({"blob_store": tmp_path}, 4 * MIB, free=lambda _: free)
    if refused:
        with pytest.raises(InsufficientStorage) as caught:
            guard.check_chunk(size)
        assert caught.value.status == 507 and str(tmp_path) not in caught.value.detail
    else:
        guard.check_chunk(size)


def test_uploads_wait_for_the_spare_to_be_allocated_again(tmp_path: Path) -> None:
    """A released spare is allocated again before the next upload, if the reserve allows;
    until then uploads are refused."""
    free = {"now": 4 * MIB + MIB - 1}
    spare = SpareFile(tmp_path, MIB)
    guard = DiskGuard({"database": tmp_path}, 4 * MIB, spare=spare, free=lambda _: free["now"])
    with pytest.raises(InsufficientStorage):
        guard.admit()
    assert not spare.present()
    free["now"] = 6 * MIB
    guard.admit()
    assert spare.present()
