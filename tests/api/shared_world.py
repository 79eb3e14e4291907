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
from tests.conftest import Credentials, make_settings, open_pair, provision, sandbox_aws

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
        sandbox_aws(stack.enter_context(pytest.MonkeyPatch.context()))  # for the module's life
        backends = stack.enter_context(open_pair(pair, settings))
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
