"""API keys: random, shown once, stored only as a SHA-256.

The keys are 256 random bits, so a fast hash is enough (no password-style KDF is needed to
resist guessing) and lets every request find its key with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from batcher._exceptions import InvalidRequestError
from batcher.api import keys_store
from batcher.api.errors import ApiError

KEY_PREFIX = "bk-"
DEFAULT_WEIGHT = 1.0
"""A key's weight unless set: every key an equal share."""


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the API key's id owns everything it creates."""

    id: uuid.UUID
    name: str
    is_admin: bool
    can_set_api_base: bool = False
    """Made with ``--allow-api-base``: may send jobs with their own ``api_base`` (and their own ``api_key``)."""

    @property
    def may_set_api_base(self) -> bool:
        """Admins always may; other keys with the permission."""
        return self.is_admin or self.can_set_api_base

    def can_see(self, owner_id: uuid.UUID | None) -> bool:
        return self.is_admin or owner_id == self.id


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: uuid.UUID
    name: str
    prefix: str
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None
    can_set_api_base: bool = False
    weight: float = DEFAULT_WEIGHT
    """Its share of the cluster against other keys with work waiting (the dispatcher's fair shares)."""
    max_concurrent_requests: int | None = None
    """At most this many of its requests released to the workers at once (``None``: no quota)."""
    max_queued_prompts: int | None = None
    """At most this many unfinished prompts; a submission past it is a 429 (``None``: no quota)."""


def check_limits(limits: dict[str, Any]) -> dict[str, Any]:
    """A key's share and quotas (``keys_store.LIMIT_COLUMNS``) checked: a weight above 0, quotas of at least 1
    (``None`` clears a quota). Raises ``InvalidRequestError`` naming the setting and how to fix it."""
    for name, value in limits.items():
        if name not in keys_store.LIMIT_COLUMNS:
            raise InvalidRequestError(f"is not a setting of a key ({', '.join(keys_store.LIMIT_COLUMNS)})", field=name)
        if name == "weight":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise InvalidRequestError(
                    f"must be a number above 0 (1 = an equal share; 2 = twice another key's), got {value!r}",
                    field=name,
                )
        elif value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidRequestError(
                f"must be a whole number of at least 1 (or none, for no quota), got {value!r}", field=name
            )
    return limits


def create_key(
    engine: Engine,
    name: str,
    *,
    admin: bool = False,
    allow_api_base: bool = False,
    weight: float = DEFAULT_WEIGHT,
    max_concurrent_requests: int | None = None,
    max_queued_prompts: int | None = None,
) -> tuple[KeyInfo, str]:
    """Store a new key's hash; returns its record and the key itself (the only time it exists in clear).

    ``allow_api_base``: the key may send jobs naming their own ``api_base`` (admins always may).
    ``weight``, ``max_concurrent_requests``, ``max_queued_prompts``: its share and quotas (``check_limits``).
    """
    if not name.strip():
        raise ValueError("a key needs a name")
    limits = check_limits(
        {
            "weight": weight,
            "max_concurrent_requests": max_concurrent_requests,
            "max_queued_prompts": max_queued_prompts,
        }
    )
    key = generate_key()
    with engine.begin() as conn:
        row = keys_store.insert_key(
            conn,
            name=name,
            key_hash=hash_key(key),
            prefix=key[:10],
            admin=admin,
            allow_api_base=allow_api_base,
            limits=limits,
        )
    return _info(row), key


def set_key_limits(engine: Engine, key_id: uuid.UUID, limits: dict[str, Any]) -> KeyInfo | None:
    """Change a key's share or quotas (only the names given; ``None`` clears a quota): its record, or
    ``None`` for an unknown key. Takes effect at the next submission and the dispatcher's next tick."""
    check_limits(limits)
    with engine.begin() as conn:
        row = keys_store.set_limits(conn, key_id, limits)
    return _info(row) if row is not None else None


def list_keys(engine: Engine) -> list[KeyInfo]:
    with engine.connect() as conn:
        return [_info(r) for r in keys_store.all_keys(conn)]


def revoke_key(engine: Engine, key_id: uuid.UUID) -> bool:
    with engine.begin() as conn:
        return keys_store.revoke(conn, key_id)


def _info(row: Any) -> KeyInfo:
    return KeyInfo(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        is_admin=row["is_admin"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        can_set_api_base=row["can_set_api_base"],
        weight=row["weight"],
        max_concurrent_requests=row["max_concurrent_requests"],
        max_queued_prompts=row["max_queued_prompts"],
    )


def lookup(engine: Engine, key: str) -> Principal | None:
    with engine.connect() as conn:
        row = keys_store.active_key(conn, hash_key(key))
    if row is None:
        return None
    return Principal(id=row["id"], name=row["name"], is_admin=row["is_admin"], can_set_api_base=row["can_set_api_base"])


_bearer = HTTPBearer(auto_error=False, description="An API key made with `batcher keys create`.")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def require_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise _unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' "
            "(make one with `batcher keys create`)."
        )
    principal = lookup(request.app.state.ctx.engine, credentials.credentials)
    if principal is None:
        raise _unauthorized("Incorrect API key provided.")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(require_principal)]
