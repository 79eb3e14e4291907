"""An in-memory CredentialStore and ready-made accounts, applications and keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from media_service.auth import generate_rsa_keypair, hash_secret
from media_service.storage.interfaces import Account, AlreadyExists, Application

API_KEY = "acc-key-1"
API_SECRET = "s3cret-s3cret-s3cret"  # >= 16 characters
APP_ID = "2b8e7c3a-6a0e-4d1f-9f43-5b1c9f2a7e10"


class FakeCredentialStore:
    """Dicts behind the CredentialStore protocol, recording every lookup."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.applications: dict[str, Application] = {}
        self.lookups: list[tuple[str, str]] = []

    def prepare_database(self) -> None:
        pass

    def add_account(self, account: Account) -> None:
        if account.api_key in self.accounts:
            raise AlreadyExists(account.api_key)
        self.accounts[account.api_key] = account

    def get_account(self, api_key: str) -> Account | None:
        self.lookups.append(("account", api_key))
        return self.accounts.get(api_key)

    def add_application(self, application: Application) -> None:
        if application.application_id in self.applications:
            raise AlreadyExists(application.application_id)
        self.applications[application.application_id] = application

    def get_application(self, application_id: str) -> Application | None:
        self.lookups.append(("application", application_id))
        return self.applications.get(application_id)

    def add_public_key(self, application_id: str, public_key_pem: str) -> bool:
        app = self.applications.get(application_id)
        if app is None:
            return False
        keys = (*app.public_keys, public_key_pem)
        self.applications[application_id] = dataclasses.replace(app, public_keys=keys)
        return True

    def set_public_keys(self, application_id: str, *keys: str) -> None:
        app = self.applications[application_id]
        self.applications[application_id] = dataclasses.replace(app, public_keys=keys)

    def set_enabled(
        self, *, account: str | None = None, application: str | None = None, enabled: bool
    ) -> None:
        if account is not None:
            self.accounts[account] = dataclasses.replace(self.accounts[account], enabled=enabled)
        if application is not None:
            app = self.applications[application]
            self.applications[application] = dataclasses.replace(app, enabled=enabled)


@dataclass(frozen=True)
class KeyPair:
    private: str
    public: str


@pytest.fixture(scope="session")
def keypair() -> KeyPair:
    return KeyPair(*generate_rsa_keypair())


@pytest.fixture(scope="session")
def other_keypair() -> KeyPair:
    return KeyPair(*generate_rsa_keypair())


@pytest.fixture
def store(keypair: KeyPair) -> FakeCredentialStore:
    """One enabled account with one application holding `keypair.public`."""
    fake = FakeCredentialStore()
    salt, digest = hash_secret(API_SECRET)
    fake.add_account(Account(api_key=API_KEY, secret_salt=salt, secret_digest=digest))
    fake.add_application(
        Application(application_id=APP_ID, api_key=API_KEY, public_keys=(keypair.public,))
    )
    return fake
