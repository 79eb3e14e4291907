"""Who is asking: the result of authenticating one request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from media_service.auth.acl import Acl


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: an account (Basic) or one application of it (JWT)."""

    account_id: str  # the owning account's API key
    application_id: str | None  # None for Basic: it acts for the whole account
    scheme: Literal["basic", "jwt"]
    acl: Acl | None = None  # only JWTs carry one; None means no path restriction
