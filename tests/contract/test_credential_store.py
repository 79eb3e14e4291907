"""One contract for every CredentialStore: SQLite, mongomock, and real MongoDB when configured."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mongomock
import pytest

from media_service.settings import Settings
from media_service.storage.interfaces import (
    Account,
    AlreadyExists,
    Application,
    BackendUnavailable,
    CredentialStore,
    KeyRemoval,
)
from media_service.storage.mongo import MongoCredentialStore, MongoDatabase
from media_service.storage.sqlite import SqliteCredentialStore, SqliteDatabase

MONGO_URL = os.environ.get("MEDIA_TEST_MONGO_URL")
BACKENDS: list[Any] = ["sqlite", "mongomock"]
if MONGO_URL:
    BACKENDS.append(pytest.param("mongo-real", marks=pytest.mark.mongo))

KEY_1 = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
KEY_2 = "-----BEGIN PUBLIC KEY-----\nBBBB\n-----END PUBLIC KEY-----\n"
KEY_3 = "-----BEGIN PUBLIC KEY-----\nCCCC\n-----END PUBLIC KEY-----\n"


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CredentialStore]:
    if request.param == "sqlite":
        db = SqliteDatabase(tmp_path / "media.db", timeout=5.0)
        credentials: CredentialStore = SqliteCredentialStore(db)
        credentials.prepare_database()
        yield credentials
        db.close()
    elif request.param == "mongomock":
        client: Any = mongomock.MongoClient(tz_aware=True)
        credentials = MongoCredentialStore(MongoDatabase.wrap(client["media_test"]))
        credentials.prepare_database()
        yield credentials
    else:
        assert MONGO_URL
        name = f"media_test_{uuid.uuid4().hex[:12]}"
        base = MONGO_URL.split("?", 1)[0].rstrip("/")
        if base.count("/") > 2:
            base = base.rsplit("/", 1)[0]
        settings = Settings(database_url=f"{base}/{name}", storage_url="file:///unused")
        mdb = MongoDatabase.from_settings(settings)
        credentials = MongoCredentialStore(mdb)
        credentials.prepare_database()
        yield credentials
        mdb.database.client.drop_database(name)
        mdb.close()


def make_account(api_key: str = "key-1", enabled: bool = True) -> Account:
    return Account(
        api_key=api_key,
        secret_salt=os.urandom(16),
        secret_digest=b"\x00\xff" + os.urandom(30),  # any byte, NUL included
        enabled=enabled,
    )


def test_account_round_trips(store: CredentialStore) -> None:
    account = make_account()
    store.add_account(account)
    disabled = make_account("key-2", enabled=False)
    store.add_account(disabled)
    assert store.get_account("key-1") == account
    assert store.get_account("key-2") == disabled
    assert store.get_account("key-3") is None


def test_duplicate_account_raises_already_exists(store: CredentialStore) -> None:
    store.add_account(make_account())
    with pytest.raises(AlreadyExists):
        store.add_account(make_account())


def test_application_round_trips_with_its_keys_in_order(store: CredentialStore) -> None:
    application = Application("app-1", "key-1", (KEY_2, KEY_1))
    store.add_application(application)
    disabled = Application("app-2", "key-1", (), enabled=False)
    store.add_application(disabled)
    assert store.get_application("app-1") == application
    assert store.get_application("app-2") == disabled
    assert store.get_application("app-3") is None


def test_duplicate_application_raises_already_exists(store: CredentialStore) -> None:
    store.add_application(Application("app-1", "key-1", (KEY_1,)))
    with pytest.raises(AlreadyExists):
        store.add_application(Application("app-1", "key-2", (KEY_2,)))
    got = store.get_application("app-1")
    assert got is not None and got.public_keys == (KEY_1,)


def test_add_public_key_appends(store: CredentialStore) -> None:
    store.add_application(Application("app-1", "key-1", (KEY_1,)))
    assert store.add_public_key("app-1", KEY_2) is True
    assert store.add_public_key("app-1", KEY_3) is True
    got = store.get_application("app-1")
    assert got is not None and got.public_keys == (KEY_1, KEY_2, KEY_3)


def test_add_public_key_is_idempotent(store: CredentialStore) -> None:
    store.add_application(Application("app-1", "key-1", (KEY_1, KEY_2)))
    assert store.add_public_key("app-1", KEY_1) is True
    got = store.get_application("app-1")
    assert got is not None and got.public_keys == (KEY_1, KEY_2)


def test_add_public_key_to_a_missing_application_is_false(store: CredentialStore) -> None:
    assert store.add_public_key("app-404", KEY_1) is False
    assert store.get_application("app-404") is None


def test_lookups_refuse_non_string_keys(store: CredentialStore) -> None:
    store.add_account(make_account())
    with pytest.raises(TypeError):
        store.get_account({"$ne": None})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.get_application({"$gt": ""})  # type: ignore[arg-type]
    assert store.get_account('{"$ne": null}') is None


def test_prepare_database_is_idempotent(store: CredentialStore) -> None:
    store.add_account(make_account())
    store.prepare_database()
    assert store.get_account("key-1") is not None


def test_sqlite_public_keys_appended_concurrently_are_all_kept(tmp_path: Path) -> None:
    # mongomock is not atomic across threads, so this runs on SQLite (and proves nothing is lost
    # by the transaction that checks the application and appends).
    db = SqliteDatabase(tmp_path / "media.db", timeout=10.0)
    store = SqliteCredentialStore(db)
    store.prepare_database()
    store.add_application(Application("app-1", "key-1", ()))
    keys = [f"-----BEGIN PUBLIC KEY-----\n{n}\n-----END PUBLIC KEY-----\n" for n in range(16)]
    errors: list[BaseException] = []

    def append(key: str) -> None:
        try:
            assert store.add_public_key("app-1", key)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    got = store.get_application("app-1")
    assert got is not None and sorted(got.public_keys) == sorted(keys)
    db.close()


def test_sqlite_unopenable_path_is_backend_unavailable(tmp_path: Path) -> None:
    store = SqliteCredentialStore(SqliteDatabase(tmp_path / "missing" / "media.db", timeout=1.0))
    with pytest.raises(BackendUnavailable):
        store.get_account("key-1")


# --------------------------------------------------------------------------- administration


def test_list_accounts_is_ordered_by_api_key(store: CredentialStore) -> None:
    assert store.list_accounts() == []
    accounts = [make_account("key-b"), make_account("key-a", enabled=False), make_account("key-c")]
    for account in accounts:
        store.add_account(account)
    assert store.list_accounts() == sorted(accounts, key=lambda a: a.api_key)


def test_list_applications_all_or_by_account(store: CredentialStore) -> None:
    assert store.list_applications() == []
    two = Application("app-2", "key-1", (KEY_2, KEY_1))
    one = Application("app-1", "key-1", (KEY_1,), enabled=False)
    other = Application("app-0", "key-2", (KEY_3,))
    keyless = Application("app-3", "key-2", ())
    for application in (two, one, other, keyless):
        store.add_application(application)
    assert store.list_applications() == [other, one, two, keyless]
    assert store.list_applications("key-1") == [one, two]
    assert store.list_applications("key-2") == [other, keyless]
    assert store.list_applications("key-404") == []


def test_set_account_enabled(store: CredentialStore) -> None:
    store.add_account(make_account())
    assert store.set_account_enabled("key-1", False) is True
    got = store.get_account("key-1")
    assert got is not None and got.enabled is False
    assert store.set_account_enabled("key-1", False) is True  # already disabled: still found
    assert store.set_account_enabled("key-1", True) is True
    got = store.get_account("key-1")
    assert got is not None and got.enabled is True
    assert store.set_account_enabled("key-404", False) is False
    assert store.get_account("key-404") is None


def test_set_application_enabled(store: CredentialStore) -> None:
    store.add_application(Application("app-1", "key-1", (KEY_1,)))
    assert store.set_application_enabled("app-1", False) is True
    assert store.get_application("app-1") == Application("app-1", "key-1", (KEY_1,), False)
    assert store.set_application_enabled("app-1", True) is True
    assert store.get_application("app-1") == Application("app-1", "key-1", (KEY_1,), True)
    assert store.set_application_enabled("app-404", True) is False
    assert store.get_application("app-404") is None


def test_replace_secret_keeps_the_rest(store: CredentialStore) -> None:
    store.add_account(make_account(enabled=False))
    salt, digest = os.urandom(16), b"\x00" + os.urandom(31)
    assert store.replace_secret("key-1", salt, digest) is True
    assert store.get_account("key-1") == Account("key-1", salt, digest, enabled=False)
    assert store.replace_secret("key-404", salt, digest) is False
    assert store.get_account("key-404") is None


def test_remove_public_key(store: CredentialStore) -> None:
    store.add_application(Application("app-1", "key-1", (KEY_1, KEY_2, KEY_3)))
    assert store.remove_public_key("app-1", KEY_2) is KeyRemoval.REMOVED
    got = store.get_application("app-1")
    assert got is not None and got.public_keys == (KEY_1, KEY_3)
    assert store.remove_public_key("app-1", KEY_2) is KeyRemoval.NO_SUCH_KEY
    assert store.remove_public_key("app-1", KEY_1) is KeyRemoval.REMOVED
    assert store.remove_public_key("app-1", KEY_3) is KeyRemoval.LAST_KEY
    got = store.get_application("app-1")
    assert got is not None and got.public_keys == (KEY_3,)
    assert store.remove_public_key("app-404", KEY_3) is KeyRemoval.NO_APPLICATION


def test_remove_public_key_of_a_keyless_application(store: CredentialStore) -> None:
    store.add_application(Application("app-1", "key-1", ()))
    assert store.remove_public_key("app-1", KEY_1) is KeyRemoval.NO_SUCH_KEY


def test_delete_application_takes_its_keys(store: CredentialStore) -> None:
    store.add_application(Application("app-1", "key-1", (KEY_1, KEY_2)))
    store.add_application(Application("app-2", "key-1", (KEY_1,)))
    assert store.delete_application("app-1") is True
    assert store.get_application("app-1") is None
    assert store.delete_application("app-1") is False
    assert store.get_application("app-2") == Application("app-2", "key-1", (KEY_1,))
    # The id is free again, and the new application starts without the old keys.
    store.add_application(Application("app-1", "key-2", (KEY_3,)))
    assert store.get_application("app-1") == Application("app-1", "key-2", (KEY_3,))


def test_delete_account_takes_its_applications(store: CredentialStore) -> None:
    store.add_account(make_account("key-1"))
    other = make_account("key-2")
    store.add_account(other)
    store.add_application(Application("app-1", "key-1", (KEY_1,)))
    store.add_application(Application("app-2", "key-1", (KEY_2,)))
    store.add_application(Application("app-3", "key-2", (KEY_3,)))
    assert store.delete_account("key-1") is True
    assert store.get_account("key-1") is None
    assert store.get_application("app-1") is None and store.get_application("app-2") is None
    assert store.list_applications() == [Application("app-3", "key-2", (KEY_3,))]
    assert store.list_accounts() == [other]
    assert store.delete_account("key-1") is False


def test_admin_methods_refuse_non_string_keys(store: CredentialStore) -> None:
    with pytest.raises(TypeError):
        store.set_account_enabled({"$ne": None}, False)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.delete_account({"$ne": None})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.delete_application({"$gt": ""})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.list_applications({"$ne": None})  # type: ignore[arg-type]


def test_sqlite_concurrent_key_removals_keep_one_key(tmp_path: Path) -> None:
    # Atomicity is proven on SQLite: mongomock is not atomic across threads.
    db = SqliteDatabase(tmp_path / "media.db", timeout=10.0)
    store = SqliteCredentialStore(db)
    store.prepare_database()
    keys = [f"-----BEGIN PUBLIC KEY-----\n{n}\n-----END PUBLIC KEY-----\n" for n in range(8)]
    store.add_application(Application("app-1", "key-1", tuple(keys)))
    outcomes: list[KeyRemoval] = []
    threads = [
        threading.Thread(target=lambda k=key: outcomes.append(store.remove_public_key("app-1", k)))
        for key in keys
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    got = store.get_application("app-1")
    assert got is not None and len(got.public_keys) == 1
    assert sorted(o.value for o in outcomes) == sorted(["last_key"] + ["removed"] * 7)
    db.close()
