"""The real services behind the test suite behave as the library expects."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import redis
from botocore.exceptions import ClientError
from redis.cluster import RedisCluster
from redis.crc import key_slot

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


def test_redis_cluster_spreads_keys_over_three_masters(
    redis_cluster_client: RedisCluster,
) -> None:
    primaries = redis_cluster_client.get_primaries()
    assert len(primaries) == 3
    for node in primaries:
        info = redis_cluster_client.cluster_info(target_nodes=node)
        assert info["cluster_state"] == "ok"
    keys = [f"k{i}" for i in range(30)]
    assert len({key_slot(k.encode()) for k in keys}) == 30  # 30 different slots
    for key in keys:
        redis_cluster_client.set(key, key.upper())
    assert [redis_cluster_client.get(k) for k in keys] == [k.upper().encode() for k in keys]
    owners = {redis_cluster_client.get_node_from_key(k).name for k in keys}
    assert owners == {node.name for node in primaries}


def test_redis_cluster_url_is_a_seed(redis_cluster_url: str, services: Any) -> None:
    assert redis_cluster_url.startswith("redis+cluster://127.0.0.1:")
    assert len(services.redis_cluster_pids) == 3


def test_redis_cluster_client_starts_empty(redis_cluster_client: RedisCluster) -> None:
    assert redis_cluster_client.dbsize(target_nodes=RedisCluster.PRIMARIES) == 0


def test_restart_redis_loses_data_and_keeps_port(
    redis_client: redis.Redis, restart_redis: Callable[[], Any], services: Any
) -> None:
    redis_client.set("survives", b"no")
    before = redis_client.info("server")["process_id"]
    restarted = restart_redis()
    assert restarted.redis_url == services.redis_url
    assert restarted.redis_pid != before
    fresh = redis.Redis.from_url(services.redis_url)
    try:
        assert fresh.ping() is True
        assert fresh.info("server")["process_id"] == restarted.redis_pid
        assert fresh.get("survives") is None
        assert fresh.dbsize() == 0
    finally:
        fresh.close()


def _processes_inside(root: Path) -> list[int]:
    """PIDs of live processes whose working directory is in root."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and (cwd == str(root) or cwd.startswith(f"{root}/")):
            found.append(int(proc.name))
    return found


def test_a_failed_cluster_start_stops_every_server_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dev_services: ModuleType
) -> None:
    # redis and the three cluster nodes are up when `redis-cli --cluster create` fails.
    monkeypatch.setattr(dev_services, "_find_redis_cli", lambda: shutil.which("false"))
    root = tmp_path.resolve()
    with pytest.raises(dev_services.ServiceError, match="cluster create exited with code 1"):
        dev_services.start(root, die_with_parent=True)
    assert _processes_inside(root) == []
    assert not (root / dev_services.STATE_FILE).exists()


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
