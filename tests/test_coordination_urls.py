"""Coordination URLs: what parses, and the clear errors for what does not."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis
from assertions import raises_exactly

from bbp_dist_resume.coordination import open_coordination
from bbp_dist_resume.coordination.url import sqlite_path
from bbp_dist_resume.errors import ConfigError, CoordinationError, CoordinationUnavailable


@pytest.mark.parametrize(
    "url",
    [
        "",
        "mysql://h/db",
        "redis://",
        "redis://:pw@/0",
        "redis://h:99999/0",
        "redis://h:6379/notanumber",
        "redis+cluster://h:7000/3",
        "sqlite://host/file.db",
        "sqlite:///",
        "sqlite:///dir/",
        "sqlite:///x.db?mode=ro",
    ],
)
def test_a_url_that_does_not_parse_is_a_config_error(url: str) -> None:
    err = raises_exactly(ConfigError, lambda: open_coordination(url))
    assert "coord_url" in str(err)


def test_a_password_never_shows_in_the_error_of_an_unreachable_server() -> None:
    err = raises_exactly(
        CoordinationUnavailable,
        lambda: open_coordination("redis://:s3cret-pw@127.0.0.1:1/0", timeout_s=0.5),
    )
    assert "s3cret-pw" not in str(err)


def test_sqlite_urls_name_absolute_and_relative_files(tmp_path: Path) -> None:
    assert sqlite_path(f"sqlite://{tmp_path}/c.db") == str(tmp_path / "c.db")  # sqlite:///…
    assert sqlite_path("sqlite:rel/c.db") == "rel/c.db"
    coord = open_coordination(f"sqlite://{tmp_path}/sub/c.db")
    coord.close()
    assert (tmp_path / "sub" / "c.db").is_file()


def test_a_redis_url_with_password_and_db_reaches_the_server(redis_url: str) -> None:
    # The test server has no password: redis-py sends AUTH only when one is given, so a
    # db number is the part to check here.
    coord = open_coordination(redis_url.rsplit("/", 1)[0] + "/3")
    try:
        coord.create_operation("op", workers=["w0"])
        assert coord.get_operation("op").workers == ("w0",)
    finally:
        coord.close()


def test_wrong_credentials_are_a_refusal_not_an_outage(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # An ACL user on the test server: a wrong password is refused at once (not retried,
    # not CoordinationUnavailable, which callers treat as transient), the password unsaid.
    user = f"u{uuid.uuid4().hex[:8]}"
    redis_client.acl_setuser(
        user, enabled=True, passwords=["+right-pw"], commands=["+@all"], keys=["*"], channels=["*"]
    )
    host = redis_url.split("://", 1)[1]
    try:
        err = raises_exactly(
            CoordinationError, lambda: open_coordination(f"redis://{user}:wrong-pw@{host}")
        )
        assert "credentials" in str(err) and "wrong-pw" not in str(err)
        coord = open_coordination(f"redis://{user}:right-pw@{host}")
        coord.close()
    finally:
        redis_client.acl_deluser(user)
