"""``S3BlobStore``: an S3 bucket prefix as a blob store (AWS S3, MinIO, SeaweedFS).

Create-only writes use ``If-None-Match: *``: the server refuses (412) a PUT to a key that
exists. Every write carries a checksum the server verifies: a CRC32 header when the
client's request checksums are on, else ``Content-MD5`` (for servers that refuse the
newer checksum headers). Throttling, 5xx and connection errors are retried by botocore
(standard or adaptive mode), except while a GET's body is read: botocore returns once the
head is in, so a body cut or stalled midway repeats the whole GET here (``_get``). What is
left is translated into the library's ``StoreError`` tree here, and only here.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal

import boto3
import botocore.exceptions as bexc
import urllib3
from botocore.config import Config
from botocore.retries.standard import ExponentialBackoff, RetryContext

from bbp_dist_resume.blobstore.base import ObjectInfo, StoreProperties, check_key, check_prefix
from bbp_dist_resume.blobstore.s3_fastget import FastGetter
from bbp_dist_resume.errors import (
    BucketNotFound,
    ObjectNotFound,
    StoreAccessDenied,
    StoreError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

_PROPS = StoreProperties(name="s3", atomic_create=True, durable_put=True)
_DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
_PRECONDITION = {"PreconditionFailed", "412"}
# AWS answers 409 while another conditional write to the same key is in flight.
_CONFLICT = {"ConditionalRequestConflict", "409"}
_CONFLICT_ATTEMPTS = 5
_BACKOFF = ExponentialBackoff()
_TRANSIENT_CODES = {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout"}


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Settings:
    """How to reach one bucket prefix.

    Attributes:
        bucket: the bucket name.
        prefix: the key prefix inside the bucket ("" for the whole bucket).
        endpoint_url: None for AWS, else e.g. ``http://127.0.0.1:8333``.
        region: the signing region.
        addressing_style: "path" suits MinIO and SeaweedFS; "virtual" or "auto" for AWS.
        checksum: botocore's ``request_checksum_calculation``: "when_supported" sends CRC32
            headers, "when_required" sends only what the operation needs (we add MD5).
        payload_signing: SHA-256-sign request bodies; redundant with the checksum, and slow.
        retry_mode: botocore retry mode, "standard" or "adaptive" (client-side rate limit).
        max_attempts: total attempts per request, first try included.
        max_pool_connections: size of the HTTP connection pool (>= upload concurrency).
        connect_timeout, read_timeout: seconds.
        fast_get: whole-object GETs through the lean path of ``s3_fastget`` (falling
            back to botocore on anything unexpected); off for "auto" addressing.
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "path"
    checksum: Literal["when_supported", "when_required"] = "when_supported"
    payload_signing: bool = False
    retry_mode: Literal["standard", "adaptive"] = "standard"
    max_attempts: int = 5
    max_pool_connections: int = 16
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    fast_get: bool = True


class S3BlobStore:
    """Objects under ``s3://bucket/prefix/``."""

    def __init__(self, settings: S3Settings, *, client: S3Client | None = None) -> None:
        self._s = settings
        self._prefix = settings.prefix.strip("/") + "/" if settings.prefix.strip("/") else ""
        self._fast: FastGetter | None = None
        self._retry_client: S3Client | None = None
        self._retry_lock = threading.Lock()
        if client is None:
            client, self._fast = _make_client(settings)
        self._client: S3Client = client

    @property
    def properties(self) -> StoreProperties:
        return _PROPS

    @property
    def settings(self) -> S3Settings:
        return self._s

    def _k(self, key: str) -> str:
        return self._prefix + check_key(key)

    def check_bucket(self) -> None:
        """Raise ``BucketNotFound`` / ``StoreAccessDenied`` unless the bucket is usable."""
        try:
            self._client.head_bucket(Bucket=self._s.bucket)
        except bexc.ClientError as exc:
            if _code(exc) in {"404", "NoSuchBucket", "NotFound"}:
                raise BucketNotFound(f"bucket {self._s.bucket!r} does not exist") from exc
            raise _translate(exc, None) from exc
        except bexc.BotoCoreError as exc:
            raise _translate(exc, None) from exc

    def put_if_absent(self, key: str, data: bytes) -> bool:
        for _ in range(_CONFLICT_ATTEMPTS):
            try:
                self._put(key, data, IfNoneMatch="*")
                return True
            except bexc.ClientError as exc:
                if _code(exc) in _PRECONDITION:
                    return False
                if _code(exc) not in _CONFLICT:
                    raise _translate(exc, key) from exc
            except bexc.BotoCoreError as exc:
                raise _translate(exc, key) from exc
            # Another conditional write to the key was in flight; if it won, we lost.
            if self.head(key) is not None:
                return False
        raise StoreUnavailable("conditional write kept conflicting", key=key)

    def put(self, key: str, data: bytes) -> None:
        try:
            self._put(key, data)
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise _translate(exc, key) from exc

    def _put(self, key: str, data: bytes, **extra: Any) -> None:
        if self._s.checksum == "when_required":
            extra["ContentMD5"] = base64.b64encode(
                hashlib.md5(data, usedforsecurity=False).digest()
            ).decode()
        self._client.put_object(Bucket=self._s.bucket, Key=self._k(key), Body=data, **extra)

    def get(self, key: str) -> bytes:
        if self._fast is not None:
            data = self._fast.get(self._k(key))
            if isinstance(data, bytes):
                return data
            if data == "transient":
                return self._get_after_failed_try(key)
        return self._get(key, None)

    def _get_after_failed_try(self, key: str) -> bytes:
        """The lean try was a real attempt: spend only the attempts left, after botocore's
        own first backoff (jittered, up to 50 ms: the base of non-throttling errors)."""
        if self._s.max_attempts <= 1:
            raise StoreUnavailable("S3 GET failed on its only attempt", key=key)
        with self._retry_lock:
            if self._retry_client is None:
                fewer = replace(self._s, max_attempts=self._s.max_attempts - 1, fast_get=False)
                self._retry_client = _make_client(fewer)[0]
        time.sleep(_BACKOFF.delay_amount(RetryContext(attempt_number=1)))
        return self._get(key, None, self._retry_client, self._s.max_attempts - 1)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise StoreError("range start and length must be >= 0", key=key)
        if length == 0:
            self._require(key)
            return b""
        return self._get(key, f"bytes={start}-{start + length - 1}")

    def _require(self, key: str) -> None:
        if self.head(key) is None:
            raise ObjectNotFound("no such object", key=key)

    def _get(
        self,
        key: str,
        byte_range: str | None,
        client: S3Client | None = None,
        attempts: int | None = None,
    ) -> bytes:
        """GET through botocore, whose retries end once the answer's head is in: a body
        cut or stalled midway (a reset, a read timeout) repeats the GET, with the same
        backoff, ``attempts`` times in all (default ``max_attempts``)."""
        attempts = attempts or self._s.max_attempts
        attempt = 1
        while True:
            try:
                return self._read_once(client or self._client, key, byte_range)
            except StoreError:
                raise  # already judged (StoreAccessDenied is an OSError too)
            except _BROKEN as exc:
                if attempt >= attempts:
                    raise _translate(exc, key) from exc
            time.sleep(_BACKOFF.delay_amount(RetryContext(attempt_number=attempt)))
            attempt += 1

    def _read_once(self, client: S3Client, key: str, byte_range: str | None) -> bytes:
        body = self._open(client, key, byte_range)
        if body is None:
            return b""
        try:
            return body.read()
        finally:
            body.close()

    def _open(self, client: S3Client, key: str, byte_range: str | None) -> StreamingBody | None:
        """The answer's body, unread; None for a range past the end of an existing object."""
        try:
            if byte_range:
                resp = client.get_object(Bucket=self._s.bucket, Key=self._k(key), Range=byte_range)
            else:
                resp = client.get_object(Bucket=self._s.bucket, Key=self._k(key))
            return resp["Body"]
        except bexc.ClientError as exc:
            if _code(exc) == "InvalidRange":
                self._require(key)
                return None
            raise _translate(exc, key) from exc
        except bexc.BotoCoreError as exc:
            raise _translate(exc, key) from exc
        # _BROKEN's others (urllib3 or socket errors botocore let through) reach _get.

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self._client.head_object(Bucket=self._s.bucket, Key=self._k(key))
        except bexc.ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise _translate(exc, key) from exc
        except bexc.BotoCoreError as exc:
            raise _translate(exc, key) from exc
        age = store_age(_headers(resp), resp.get("LastModified"))
        return ObjectInfo(key=key, size=int(resp["ContentLength"]), age=age)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        args: dict[str, Any] = {"Bucket": self._s.bucket, "Prefix": self._prefix + prefix}
        if start_after is not None:
            args["StartAfter"] = self._prefix + start_after
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(**args):
                headers = _headers(page)
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        key=obj["Key"][len(self._prefix) :],
                        size=obj["Size"],
                        age=store_age(headers, obj.get("LastModified")),
                    )
        except (bexc.ClientError, bexc.BotoCoreError) as exc:
            raise _translate(exc, prefix or None) from exc

    def delete_many(self, keys: Iterable[str]) -> None:
        full = [self._k(k) for k in keys]
        for i in range(0, len(full), _DELETE_BATCH):
            batch: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in full[i : i + _DELETE_BATCH]]
            try:
                resp = self._client.delete_objects(
                    Bucket=self._s.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except (bexc.ClientError, bexc.BotoCoreError) as exc:
                raise _translate(exc, None) from exc
            errors = [e for e in resp.get("Errors", []) if e.get("Code") not in _NOT_FOUND]
            if errors:
                raise _delete_error(errors, len(self._prefix))

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
        if self._retry_client is not None:
            self._retry_client.close()
        self._client.close()


def _make_client(s: S3Settings) -> tuple[S3Client, FastGetter | None]:
    config = Config(
        region_name=s.region,
        signature_version="s3v4",
        max_pool_connections=s.max_pool_connections,
        connect_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
        retries={"mode": s.retry_mode, "total_max_attempts": s.max_attempts},
        request_checksum_calculation=s.checksum,
        response_checksum_validation="when_required",
        s3={"addressing_style": s.addressing_style, "payload_signing_enabled": s.payload_signing},
    )
    try:
        session = boto3.session.Session()
        client = session.client("s3", endpoint_url=s.endpoint_url, config=config)
        credentials = session.get_credentials()
    except (bexc.BotoCoreError, ValueError) as exc:
        raise StoreError(f"cannot create the S3 client: {exc}") from exc
    if not s.fast_get or credentials is None or s.addressing_style == "auto":
        return client, None  # "auto" leaves the URL form to botocore
    fast = FastGetter(
        client,
        credentials,
        bucket=s.bucket,
        virtual=s.addressing_style == "virtual",
        pool_size=s.max_pool_connections,
        timeout=urllib3.Timeout(connect=s.connect_timeout, read=s.read_timeout),
    )
    return client, fast


def _headers(resp: Mapping[str, Any]) -> Mapping[str, str]:
    meta = resp.get("ResponseMetadata") or {}
    return meta.get("HTTPHeaders") or {}


def store_age(headers: Mapping[str, str], last_modified: datetime | None) -> float | None:
    """Seconds between an object's ``LastModified`` and the answer's ``Date`` header: its
    age by the server's own clock (whole seconds both), never compared with ours. None
    when either is missing or unreadable; a negative difference counts as 0."""
    date = headers.get("date")
    if not date or last_modified is None:
        return None
    try:
        now = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None
    if now.tzinfo is None or last_modified.tzinfo is None:
        return None
    return max(0.0, (now - last_modified).total_seconds())


def _delete_error(errors: list[Any], prefix_len: int) -> StoreError:
    """One error for a DeleteObjects answer's per-key failures, naming the store key."""
    first = errors[0]
    code = str(first.get("Code", ""))
    key = str(first.get("Key", ""))[prefix_len:] or None
    kind = StoreUnavailable if code in _TRANSIENT_CODES else StoreError
    return kind(f"{len(errors)} deletes failed, first: {code}", key=key)


def _code(exc: bexc.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# A connection broken while a GET is answered: botocore's own errors, and the urllib3 or
# socket errors it sometimes lets through (a reset while it parses the answer's head).
_BROKEN = (bexc.BotoCoreError, urllib3.exceptions.HTTPError, OSError)


def _translate(exc: Exception, key: str | None) -> StoreError:
    """Map a botocore error to the library's tree; retryable ones to ``StoreUnavailable``."""
    if isinstance(exc, bexc.ClientError):
        return _translate_client(exc, key)
    if isinstance(exc, bexc.NoCredentialsError):
        return StoreAccessDenied("no AWS credentials found in the boto3 chain", key=key)
    if isinstance(exc, bexc.ParamValidationError):
        return StoreError(f"invalid S3 request: {exc}", key=key)
    if isinstance(exc, (bexc.EndpointConnectionError, bexc.ConnectionError, bexc.HTTPClientError)):
        return StoreUnavailable(f"cannot reach S3: {exc}", key=key)
    return StoreUnavailable(f"S3 request failed: {exc}", key=key)


def _translate_client(exc: bexc.ClientError, key: str | None) -> StoreError:
    code = _code(exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    kinds: list[tuple[bool, type[StoreError], str]] = [
        (code in _NOT_FOUND, ObjectNotFound, "no such object"),
        (code == "NoSuchBucket", BucketNotFound, "bucket does not exist"),
        (code in _DENIED, StoreAccessDenied, f"access denied ({code})"),
        (
            status >= 500 or status == 429 or "Throttl" in code or code == "SlowDown",
            StoreUnavailable,
            f"S3 {code or status} after retries",
        ),
    ]
    for matches, kind, message in kinds:
        if matches:
            return kind(message, key=key)
    return StoreError(f"S3 refused the request: {code or status}", key=key)
