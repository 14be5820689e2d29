"""``open_coordination``: a coordination URL in, a backend out."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from bbp_dist_resume.coordination.base import Coordination
from bbp_dist_resume.coordination.redis_backend import connect
from bbp_dist_resume.coordination.sqlite_backend import SQLiteCoordination
from bbp_dist_resume.errors import ConfigError

_REDIS = ("redis://", "rediss://", "redis+cluster://")
_STANDALONE = ("redis://", "rediss://")
# redis-py sends WAIT on a Cluster to every node over other connections than the write's.
_WAIT_WHERE = "WAIT needs one Redis primary (redis:// or rediss://): not a Cluster, not SQLite"


def open_coordination(
    url: str,
    *,
    timeout_s: float = 5.0,
    wait_replicas: int = 0,
    wait_timeout_ms: int = 1000,
    create: bool = True,
) -> Coordination:
    """Open ``redis://[:password@]host:port/db``, ``rediss://…`` (TLS),
    ``redis+cluster://host:port`` (a Cluster seed) or ``sqlite:///path/to/file.db``.

    Args:
        url: the coordination URL.
        timeout_s: connect and read timeout of each call.
        wait_replicas: Redis replicas that must acknowledge a lease acquisition (WAIT)
            before it counts; 0 for none (``coordination.redis_wait`` has the rules).
        wait_timeout_ms: how long WAIT waits for them.
        create: False for a reader: a SQLite database must exist already, and nothing
            is created (Redis has no file to create).

    Raises:
        ConfigError: the URL does not parse or has an unknown scheme, or WAIT is asked
            of a backend that is not a standalone Redis primary.
        CoordinationUnavailable: the server does not answer.
        CoordinationNotFound: ``create=False`` and no SQLite database at the path.
    """
    if not isinstance(url, str):
        raise ConfigError([("coord_url", "must be a string")])
    if wait_replicas and not url.startswith(_STANDALONE):
        raise ConfigError([("redis_wait_replicas", _WAIT_WHERE)])
    if url.startswith(_REDIS):
        _check_redis_url(url)
        return connect(
            url, timeout_s=timeout_s, wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms
        )
    if url.startswith("sqlite:"):
        return SQLiteCoordination(sqlite_path(url), timeout_s=timeout_s, create=create)
    raise ConfigError(
        [("coord_url", "must start with redis://, rediss://, redis+cluster:// or sqlite:")]
    )


def _check_redis_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError([("coord_url", "the Redis URL does not parse")]) from None
    if not parts.hostname or (port is not None and not 0 < port < 65536):
        raise ConfigError([("coord_url", "a Redis URL needs a host (and a valid port)")])
    db = parts.path.strip("/")
    if db and (not db.isdigit() or url.startswith("redis+cluster://")):
        raise ConfigError([("coord_url", "the Redis db must be a number (none on a Cluster)")])


def sqlite_path(url: str) -> str:
    """The file of ``sqlite:///abs/path`` or ``sqlite:relative/path``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced "[" or "]" in the host
        raise ConfigError([("coord_url", "the sqlite URL does not parse")]) from None
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ConfigError([("coord_url", "use sqlite:///absolute/path or sqlite:relative/path")])
    path = unquote(parts.path)
    if not path or path.endswith("/") or "\x00" in path:
        raise ConfigError([("coord_url", "a sqlite: URL needs a file path")])
    return path
