"""SQLite's per-process cache of accounts: off the database on a hit, never stale after a write.

Every process on the database shares the generation file beside it; each store below stands for
one process (and the last test uses a real second process).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media_service.auth.secrets import hash_secret
from media_service.storage import sqlite
from media_service.storage.interfaces import Account
from media_service.storage.sqlite import SqliteCredentialStore, SqliteDatabase


def _account(api_key: str = "key-1", secret: str = "s" * 24) -> Account:
    salt, digest = hash_secret(secret)
    return Account(api_key=api_key, secret_salt=salt, secret_digest=digest, enabled=True)


class _Counting:
    """Counts the SELECTs a store sends to its database."""

    def __init__(self, store: SqliteCredentialStore) -> None:
        self.selects = 0
        fetch = store.db.fetch

        def counted(sql: str, *args: Any, **kwargs: Any) -> Any:
            if sql.startswith("SELECT * FROM accounts"):
                self.selects += 1
            return fetch(sql, *args, **kwargs)

        store.db.fetch = counted  # type: ignore[method-assign]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SqliteCredentialStore, SqliteCredentialStore]]:
    first_db = SqliteDatabase(tmp_path / "media.db")
    second_db = SqliteDatabase(tmp_path / "media.db")
    first, second = SqliteCredentialStore(first_db), SqliteCredentialStore(second_db)
    first.prepare_database()
    yield first, second
    first_db.close()
    second_db.close()


def test_a_hit_does_not_ask_the_database(
    stores: tuple[SqliteCredentialStore, SqliteCredentialStore],
) -> None:
    reader, _ = stores
    reader.add_account(_account())
    counting = _Counting(reader)
    for _ in range(5):
        found = reader.get_account("key-1")
        assert found is not None and found.enabled
    assert counting.selects == 1


def test_another_store_disabling_is_seen_at_once(
    stores: tuple[SqliteCredentialStore, SqliteCredentialStore],
) -> None:
    reader, writer = stores
    writer.add_account(_account())
    assert reader.get_account("key-1") is not None  # now cached
    assert writer.set_account_enabled("key-1", False)
    disabled = reader.get_account("key-1")
    assert disabled is not None and not disabled.enabled
    assert writer.set_account_enabled("key-1", True)
    enabled = reader.get_account("key-1")
    assert enabled is not None and enabled.enabled


def test_another_store_rotating_or_deleting_is_seen_at_once(
    stores: tuple[SqliteCredentialStore, SqliteCredentialStore],
) -> None:
    reader, writer = stores
    writer.add_account(_account())
    before = reader.get_account("key-1")
    assert before is not None
    salt, digest = hash_secret("t" * 24)
    assert writer.replace_secret("key-1", salt, digest)
    after = reader.get_account("key-1")
    assert after is not None and after.secret_digest == digest != before.secret_digest
    assert writer.delete_account("key-1")
    assert reader.get_account("key-1") is None


def test_unknown_keys_are_not_kept_and_the_cache_is_bounded(
    stores: tuple[SqliteCredentialStore, SqliteCredentialStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader, writer = stores
    monkeypatch.setattr(sqlite, "_ACCOUNT_CACHE_SIZE", 3)
    assert reader.get_account("nobody") is None
    writer.add_account(_account("nobody"))  # added later: found at once
    assert reader.get_account("nobody") is not None
    for n in range(6):
        writer.add_account(_account(f"key-{n}"))
    for n in range(6):
        assert reader.get_account(f"key-{n}") is not None
    assert len(reader._accounts) <= 3


def test_an_entry_expires_even_without_a_write(
    stores: tuple[SqliteCredentialStore, SqliteCredentialStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader, _ = stores
    reader.add_account(_account())
    counting = _Counting(reader)
    monkeypatch.setattr(sqlite, "_ACCOUNT_CACHE_SECONDS", 0.0)
    reader.get_account("key-1")
    reader.get_account("key-1")
    assert counting.selects == 2


def test_a_disable_by_another_process_is_seen_at_once(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "media.db")
    reader = SqliteCredentialStore(db)
    reader.prepare_database()
    reader.add_account(_account())
    assert reader.get_account("key-1") is not None
    script = (
        "import sys; from pathlib import Path;"
        "from media_service.storage.sqlite import SqliteCredentialStore, SqliteDatabase;"
        "store = SqliteCredentialStore(SqliteDatabase(Path(sys.argv[1])));"
        "assert store.set_account_enabled('key-1', False)"
    )
    subprocess.run([sys.executable, "-c", script, str(db.path)], check=True, timeout=60)
    disabled = reader.get_account("key-1")
    assert disabled is not None and not disabled.enabled
    db.close()


def test_without_a_generation_file_every_lookup_asks(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "media.db")
    store = SqliteCredentialStore(db)
    store.prepare_database()
    store._generation = None
    store.add_account(_account())
    counting = _Counting(store)
    store.get_account("key-1")
    store.get_account("key-1")
    assert counting.selects == 2
    db.close()
