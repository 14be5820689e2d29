"""The real services behind the test suite behave as the library expects."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import redis
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _key() -> str:
    return f"t-{uuid.uuid4().hex}/object"


def test_redis_ping(redis_client: redis.Redis) -> None:
    assert redis_client.ping() is True
    redis_client.set("k", b"v")
    assert redis_client.get("k") == b"v"


def test_redis_client_starts_empty(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0


def test_s3_put_get(s3_client: S3Client, services: Any) -> None:
    key = _key()
    s3_client.put_object(Bucket=services.bucket, Key=key, Body=b"hello")
    got = s3_client.get_object(Bucket=services.bucket, Key=key)
    assert got["Body"].read() == b"hello"


def test_s3_credentials_come_from_environment(s3_endpoint: str, services: Any) -> None:
    # No keys passed: the boto3 chain must find the ones the fixture exported, as the
    # library's own clients will. A new Session, as the library makes: boto3's default
    # session caches whatever credentials an earlier test's environment had.
    client = boto3.session.Session().client("s3", endpoint_url=s3_endpoint)
    try:
        key = _key()
        client.put_object(Bucket=services.bucket, Key=key, Body=b"env")
        assert client.get_object(Bucket=services.bucket, Key=key)["Body"].read() == b"env"
    finally:
        client.close()


def test_s3_wrong_access_key_refused(s3_endpoint: str, services: Any) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="not-" + services.access_key,
        aws_secret_access_key=services.secret_key,
        region_name=services.region,
    )
    try:
        with pytest.raises(ClientError) as raised:
            client.put_object(Bucket=services.bucket, Key=_key(), Body=b"x")
    finally:
        client.close()
    assert raised.value.response["Error"]["Code"] in ("InvalidAccessKeyId", "AccessDenied")


def test_s3_if_none_match_refuses_overwrite(s3_client: S3Client, services: Any) -> None:
    key = _key()
    s3_client.put_object(Bucket=services.bucket, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as raised:
        s3_client.put_object(Bucket=services.bucket, Key=key, Body=b"second", IfNoneMatch="*")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    got = s3_client.get_object(Bucket=services.bucket, Key=key)
    assert got["Body"].read() == b"first"


def test_s3_url_is_fresh_per_test(s3_url: str, s3_endpoint: str, services: Any) -> None:
    assert s3_url.startswith(f"s3://{services.bucket}/t-")
    assert s3_url.endswith(f"?endpoint_url={s3_endpoint}&region=us-east-1")
