"""One backend pair, app and set of credentials shared by a whole test module.

`conftest.py` builds fresh backends and a fresh app for every test, which costs a quarter to
half a second (creating a boto3 client and `create_app` dominate). The download and
hostile-input tables have hundreds of rows, so those modules open one `World` per backend pair
instead, and every test creates the items it needs under fresh ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from media_service.factory import create_app
from media_service.settings import Settings
from media_service.storage.interfaces import Application, Backends
from tests.conftest import Credentials, make_settings, provision
from tests.real_backends import REAL_PAIR, open_real_pair

KeyPair = tuple[str, str]


@dataclass(frozen=True)
class World:
    settings: Settings
    backends: Backends
    app: Flask
    owner: Credentials  # account acct0001, application app-one
    sibling: Credentials  # the same account, application app-two
    stranger: Credentials  # account acct0002, application app-other


@contextmanager
def open_world(
    pair: str, directory: Path, keypair: KeyPair, second_keypair: KeyPair, **overrides: Any
) -> Iterator[World]:
    """Open `pair` (one of conftest's BACKEND_PAIRS) under `directory`, with an app."""
    settings = make_settings(directory, **overrides)
    with ExitStack() as stack:
        if pair == "sqlite-files":
            backends = _sqlite_files(settings, stack)
        elif pair == "mongomock-moto":
            backends = _mongomock_moto(stack)
        elif pair == REAL_PAIR:
            backends = stack.enter_context(open_real_pair(settings))
        else:
            raise ValueError(f"unknown backend pair {pair!r}")
        app = create_app(settings, backends=backends)
        app.config["TESTING"] = True
        owner = provision(backends, keypair, api_key="acct0001", application_id="app-one")
        backends.credentials.add_application(
            Application("app-two", owner.api_key, (second_keypair[1],))
        )
        sibling = Credentials(owner.api_key, owner.api_secret, "app-two", second_keypair[0])
        stranger = provision(
            backends, second_keypair, api_key="acct0002", application_id="app-other"
        )
        yield World(settings, backends, app, owner, sibling, stranger)


def _sqlite_files(settings: Settings, stack: ExitStack) -> Backends:
    from media_service.backends import open_backends

    backends = open_backends(settings)
    for closer in backends.closers:
        stack.callback(closer.close)  # type: ignore[attr-defined]
    return backends


def _mongomock_moto(stack: ExitStack) -> Backends:
    import boto3
    import mongomock
    from moto import mock_aws

    from media_service.storage.mongo import (
        MongoCredentialStore,
        MongoDatabase,
        MongoMediaRepository,
    )
    from media_service.storage.s3 import S3BlobStore

    # The same sandbox as conftest's per-test one, for the module's lifetime.
    env = stack.enter_context(pytest.MonkeyPatch.context())
    env.setenv("AWS_ACCESS_KEY_ID", "testing")
    env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    env.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        env.delenv(name, raising=False)
    stack.enter_context(mock_aws())
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket="media-test")
    database = MongoDatabase.wrap(mongomock.MongoClient(tz_aware=True)["media"])
    backends = Backends(
        blobs=S3BlobStore(client, "media-test", "items/"),
        media=MongoMediaRepository.from_database(database),
        credentials=MongoCredentialStore.from_database(database),
    )
    backends.media.ensure_schema()
    backends.credentials.ensure_schema()
    return backends
