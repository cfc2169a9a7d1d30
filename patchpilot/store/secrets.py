"""Secrets a store keeps for itself: the key that signs frozen plans, made on first use."""

from __future__ import annotations

import secrets

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from patchpilot.store.db import session_scope
from patchpilot.store.models import StoreSecret

PLAN_KEY = "frozen-plan-hmac"


def plan_key(engine: Engine) -> bytes:
    """This store's key for frozen plans (32 random bytes), created the first time."""
    with session_scope(engine) as s:
        row = s.get(StoreSecret, PLAN_KEY)
        if row is not None:
            return bytes.fromhex(row.value)
    try:
        with session_scope(engine) as s:
            s.add(StoreSecret(name=PLAN_KEY, value=secrets.token_hex(32)))
    except IntegrityError:
        pass  # made by another process at the same moment: use that one
    with session_scope(engine) as s:
        row = s.get(StoreSecret, PLAN_KEY)
        assert row is not None
        return bytes.fromhex(row.value)
