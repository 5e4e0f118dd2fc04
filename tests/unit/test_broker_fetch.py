"""Which brokers get several messages per fetch (``workers._broker``): Redis 7 and later (``BLMPOP``)."""

from __future__ import annotations

import pytest

from workers._broker import BLMPOP_MIN_REDIS_VERSION, redis_version


@pytest.mark.parametrize(
    ("reported", "has_blmpop"),
    [("6.2.14", False), ("6.0.0", False), ("7.0.15", True), ("7.2.4", True), ("8.2.1", True), ("unknown", False)],
)
def test_blmpop_is_used_from_redis_7(reported: str, has_blmpop: bool) -> None:
    assert (redis_version({"redis_version": reported}) >= BLMPOP_MIN_REDIS_VERSION) is has_blmpop


def test_a_server_that_does_not_say_its_version_gets_brpop() -> None:
    assert redis_version({}) == ()
    assert not redis_version({}) >= BLMPOP_MIN_REDIS_VERSION
