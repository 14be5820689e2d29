"""Store URLs: ``file:///abs/dir``, ``file:rel/dir`` and ``s3://bucket/prefix?...``.

S3 query parameters (all optional): ``endpoint_url``, ``region``, ``addressing_style``
(auto|path|virtual), ``checksum`` (when_supported|when_required), ``payload_signing``
(true|false), ``retry_mode`` (standard|adaptive), ``max_attempts``, ``connect_timeout``,
``read_timeout``, ``fast_get`` (true|false). Anything else is an error, so a typo is
never silently ignored.
"""

from __future__ import annotations

import re
from dataclasses import fields, replace
from typing import Any
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from bbp_dist_resume.blobstore.base import BlobStore, check_prefix
from bbp_dist_resume.blobstore.local import LocalBlobStore
from bbp_dist_resume.blobstore.s3 import S3BlobStore, S3Settings
from bbp_dist_resume.errors import ConfigError, InvalidIdentifier

# S3 bucket naming rules: 3-63 of lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CHOICES = {
    "addressing_style": {"auto", "path", "virtual"},
    "checksum": {"when_supported", "when_required"},
    "retry_mode": {"standard", "adaptive"},
}
_INTS = {"max_attempts": (1, 20)}
_FLOATS = {"connect_timeout": (0.1, 600.0), "read_timeout": (0.1, 3600.0)}
_BOOLS = {"payload_signing", "fast_get"}


def open_store(url: str, *, concurrency: int = 8, create: bool = True) -> BlobStore:
    """Open the blob store a URL names.

    Args:
        url: ``file://`` or ``s3://`` URL.
        concurrency: the caller's parallel requests; sizes the S3 connection pool.
        create: False for a reader: a local store's folder must exist already (a bucket
            is never created either way).

    Raises:
        ConfigError: the URL is malformed or has an unknown scheme or parameter.
        BucketNotFound: ``create=False`` and the local folder does not exist.
    """
    scheme = url.split(":", 1)[0].lower() if isinstance(url, str) and ":" in url else ""
    if scheme == "file":
        return LocalBlobStore(parse_file_url(url), create=create)
    if scheme == "s3":
        settings = parse_s3_url(url)
        pool = max(settings.max_pool_connections, concurrency + 4)
        return S3BlobStore(replace(settings, max_pool_connections=pool))
    raise ConfigError([("store_url", "must start with file: or s3://")])


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError:  # an unbalanced "[" or "]" in the host
        raise ConfigError([("store_url", "the URL does not parse")]) from None


def parse_file_url(url: str) -> str:
    """Return the directory of a ``file:`` URL."""
    parts = _split(url)
    if parts.query or parts.fragment:
        raise ConfigError([("store_url", "a file: URL takes no query or fragment")])
    if parts.netloc not in ("", "localhost"):
        raise ConfigError([("store_url", "use file:///absolute/path or file:relative/path")])
    path = unquote(parts.path)
    if not path or "\x00" in path:
        raise ConfigError([("store_url", "a file: URL needs a directory path")])
    return path


def parse_s3_url(url: str) -> S3Settings:
    """Parse ``s3://bucket/prefix?params`` into ``S3Settings``."""
    parts = _split(url)
    if parts.fragment or parts.username or parts.password:
        raise ConfigError([("store_url", "put credentials in the boto3 chain, not the URL")])
    if not _BUCKET.fullmatch(parts.netloc or ""):
        raise ConfigError([("store_url", f"invalid S3 bucket name {parts.netloc!r}")])
    prefix = unquote(parts.path).strip("/")
    try:
        check_prefix(prefix)
    except InvalidIdentifier as exc:
        raise ConfigError([("store_url", f"invalid S3 prefix: {exc}")]) from exc
    values = _query_values(parts.query)
    return S3Settings(bucket=parts.netloc, prefix=prefix, **values)


def _query_values(query: str) -> dict[str, Any]:
    known = {f.name for f in fields(S3Settings)} - {"bucket", "prefix", "max_pool_connections"}
    out: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for name, vals in parse_qs(query, keep_blank_values=True, strict_parsing=False).items():
        if name not in known:
            problems.append(("store_url", f"unknown parameter {name!r}"))
        elif len(vals) != 1:
            problems.append(("store_url", f"parameter {name!r} given more than once"))
        else:
            try:
                out[name] = _convert(name, vals[0])
            except ValueError as exc:
                problems.append(("store_url", f"parameter {name!r}: {exc}"))
    if problems:
        raise ConfigError(problems)
    return out


def _convert(name: str, raw: str) -> Any:
    if name in _CHOICES:
        if raw not in _CHOICES[name]:
            raise ValueError(f"must be one of {sorted(_CHOICES[name])}")
        return raw
    if name in _BOOLS:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError("must be true or false")
        return raw.lower() in ("true", "1")
    if name in _INTS or name in _FLOATS:
        lo, hi = _INTS.get(name) or _FLOATS[name]
        value = int(raw) if name in _INTS else float(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value
    if name == "endpoint_url":
        return _endpoint(raw)
    if not raw:
        raise ValueError("must not be empty")
    return raw


def _endpoint(raw: str) -> str:
    ep = urlsplit(raw)
    if ep.scheme not in ("http", "https") or not ep.hostname:
        raise ValueError("must be an http:// or https:// URL")
    if ep.username or ep.password:  # botocore would log them with every request
        raise ValueError("put credentials in the boto3 chain, not the URL")
    return raw
