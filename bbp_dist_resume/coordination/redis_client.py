"""Plumbing of the Redis backend: error translation, retries of idempotent calls, the
registered scripts, and connecting from a URL (standalone, TLS or Cluster)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import redis
import redis.exceptions as rexc
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from bbp_dist_resume.coordination import keys as K
from bbp_dist_resume.coordination import scripts
from bbp_dist_resume.errors import CoordinationError, CoordinationUnavailable

T = TypeVar("T")
_RETRIES = 3


def longest_call_s(timeout_s: float) -> float:
    """How long one retried call (a renewal, a read) can block on a hung link: every
    attempt times out (``_RETRIES`` in the loop, then one more that reports), with the
    backoff between them."""
    backoff = sum(0.05 * 2.0**i for i in range(_RETRIES - 1))
    return (_RETRIES + 1) * timeout_s + backoff


# Cluster errors of reachability (no node answers, cluster down) are transient too.
_TRANSIENT = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.ClusterDownError,
    rexc.SlotNotCoveredError,
    rexc.RedisClusterUnreachableError,
)
# RedisClusterException is not a RedisError: both are refusals when not transient.
_REFUSED = (rexc.RedisError, rexc.RedisClusterException)
SCRIPT_NAMES = (
    "CREATE_OPERATION",
    "ACQUIRE",
    "RENEW",
    "RELEASE",
    "MARK_DONE",
    "RECORD",
    "REPAIR",
    "PUBLISH_PLAN",
    "ACK_PLAN",
    "RESTART_FENCE",
    "LEADER",
    "COMPARE_AND_DELETE",
)


class Retrying(Protocol):
    """The type of ``RedisCalls.retry``, for the backend's mixins that use it."""

    def __call__(self, fn: Callable[[], T]) -> T: ...


class RedisCalls:
    """A redis-py client (``Redis`` or ``RedisCluster``) with the library's call rules:
    errors become ``CoordinationError``s, and only idempotent calls are retried."""

    def __init__(self, client: Any) -> None:
        self.r = client
        self._scripts = {
            name: client.register_script(getattr(scripts, name)) for name in SCRIPT_NAMES
        }

    def marker_keys(self) -> list[str]:
        """Instance marker keys: one on a standalone server; on a Cluster one per master,
        so that any master that loses its data is noticed."""
        if not isinstance(self.r, RedisCluster):
            return [K.INSTANCE]
        cluster: Any = self.r  # redis-py's cluster node API is untyped
        primaries = {node.name for node in cluster.get_primaries()}
        keys: dict[str, str] = {}
        for i in range(16384):
            key = K.instance_marker(i)
            keys.setdefault(cluster.get_node_from_key(key).name, key)
            if set(keys) >= primaries:
                break
        return sorted(keys.values())

    def call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except rexc.AuthenticationError as exc:  # a ConnectionError, but never transient
            raise CoordinationError(f"Redis refused the credentials: {exc}") from exc
        except _TRANSIENT as exc:
            raise CoordinationUnavailable(f"Redis did not answer: {exc}") from exc
        except _REFUSED as exc:
            raise CoordinationError(f"Redis refused the call: {exc}") from exc

    def retry(self, fn: Callable[[], T]) -> T:
        """Run an idempotent call, retrying connection errors with a short backoff."""
        for attempt in range(_RETRIES):
            try:
                return fn()
            except rexc.AuthenticationError:
                break  # call() says so once, without retrying
            except _TRANSIENT:
                if attempt == _RETRIES - 1:
                    break
                time.sleep(0.05 * 2**attempt)
            except _REFUSED as exc:
                raise CoordinationError(f"Redis refused the call: {exc}") from exc
        return self.call(fn)

    def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self._scripts[name](keys=keys, args=args)

    def sha(self, name: str) -> str:
        """The SHA1 of a registered script, for EVALSHA in a pipeline."""
        return str(self._scripts[name].sha)

    def load(self, name: str) -> None:
        """SCRIPT LOAD a registered script (after NOSCRIPT from a pipeline)."""
        self.r.script_load(self._scripts[name].script)

    def now_ms(self) -> int:
        seconds, micros = self.retry(self.r.time)
        return int(seconds) * 1000 + int(micros) // 1000


def connect_client(url: str, *, timeout_s: float = 5.0, wait_s: float = 0.0) -> Any:
    """A redis-py client for ``redis://``, ``rediss://`` (TLS) or ``redis+cluster://``;
    ``wait_s`` is the longest WAIT it sends, added to the read timeout."""
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout_s + wait_s,
        "socket_connect_timeout": timeout_s,
    }
    # No retries in the client: _retry retries the idempotent calls, and only those.
    no_retry = Retry(NoBackoff(), 0)
    try:
        if url.startswith("redis+cluster://"):
            seed = "redis://" + url[len("redis+cluster://") :]
            client: Any = RedisCluster.from_url(seed, retry=no_retry, **common)
        else:
            client = redis.Redis.from_url(url, retry=no_retry, **common)
        return client
    except _TRANSIENT as exc:
        raise CoordinationUnavailable(f"cannot reach Redis at {_safe(url)}: {exc}") from exc
    except (*_REFUSED, ValueError) as exc:
        raise CoordinationError(f"cannot use Redis at {_safe(url)}: {exc}") from exc


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    return scheme + sep + (rest.split("@", 1)[1] if "@" in rest else rest)
