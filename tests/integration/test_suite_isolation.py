"""The test suite uses only what it creates: its own ``redis-server`` by default, and a Redis database named
by ``BATCHER_TEST_REDIS_URL`` only when it is empty (a run never flushes anybody else's keys)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from batcher.testing.servers import RedisServer

REPO_ROOT = Path(__file__).resolve().parents[2]
A_TEST_USING_REDIS = "tests/integration/test_ratelimit_script.py"


def _pytest(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", A_TEST_USING_REDIS],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_the_session_redis_is_a_server_of_its_own(redis_url: str) -> None:
    if os.environ.get("BATCHER_TEST_REDIS_URL"):
        assert redis_url == os.environ["BATCHER_TEST_REDIS_URL"]
    else:
        assert not redis_url.startswith("redis://127.0.0.1:6379"), redis_url


def test_a_named_database_holding_keys_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        url = server.url.rsplit("/", 1)[0] + "/5"
        someone_elses = redis.Redis.from_url(url)
        try:
            someone_elses.set("deployment:key", "keep me")
            result = _pytest({**os.environ, "BATCHER_TEST_REDIS_URL": url})
            assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
            assert (
                f"BATCHER_TEST_REDIS_URL ({url}) holds 1 key: the test suite uses only an empty Redis database"
                in result.stdout + result.stderr
            )
            assert someone_elses.get("deployment:key") == b"keep me"
            assert someone_elses.dbsize() == 1

            # An empty one is used, and emptied again at the end.
            empty = server.url.rsplit("/", 1)[0] + "/6"
            result = _pytest({**os.environ, "BATCHER_TEST_REDIS_URL": empty})
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
            with redis.Redis.from_url(empty) as used:
                assert used.dbsize() == 0
            assert someone_elses.get("deployment:key") == b"keep me"
        finally:
            someone_elses.close()
