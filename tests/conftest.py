"""Session fixtures over the real services started by infra/dev/services.py.

A redis-server, a 3-master Redis Cluster and a SeaweedFS S3 server are started
once per test session (or reused when BBP_TEST_SERVICES_DIR names a running
set, as the Makefile may start them once for a whole run). A server that
cannot start makes the tests that need it ERROR: they are never skipped.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import redis
from redis.cluster import RedisCluster

from bbp_dist_resume import CheckpointConfig

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SERVICES_PY = Path(__file__).resolve().parent.parent / "infra" / "dev" / "services.py"
SHARED_DIR_VAR = "BBP_TEST_SERVICES_DIR"
# The library takes credentials from the boto3 chain; a session token or
# profile left in the environment would be sent to SeaweedFS along with them.
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
)


def _import_services() -> ModuleType:
    """infra/dev/services.py, imported by path: neither directory is a package."""
    name = "bbp_dev_services"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SERVICES_PY)
    assert spec is not None and spec.loader is not None, SERVICES_PY
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses look the module up by name.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


dev_services = _import_services()


@pytest.fixture(name="dev_services", scope="session")
def _dev_services() -> ModuleType:
    """``infra/dev/services.py`` itself, for tests of the service helpers."""
    return dev_services


def _shared_dir() -> Path | None:
    """The directory of services started outside this session, if there is one. Under
    pytest-xdist each worker has its own set, in the sub-folder named after it (gw0, gw1,
    ...: infra/dev/test.sh starts them), because tests empty Redis and restart it."""
    shared = os.environ.get(SHARED_DIR_VAR)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if shared and worker:
        shared = str(Path(shared) / worker)
    if shared and (Path(shared) / dev_services.STATE_FILE).is_file():
        return Path(shared)
    return None


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The running services (a ``services.Services``), with AWS_* env set."""
    shared = _shared_dir()
    if shared is not None:
        found, owned = dev_services.load(shared), False
    else:
        root = tmp_path_factory.mktemp("services")
        found, owned = dev_services.start(root, die_with_parent=True), True
    saved = {var: os.environ.get(var) for var in AWS_VARS}
    for var in AWS_VARS:
        os.environ.pop(var, None)
    os.environ["AWS_ACCESS_KEY_ID"] = found.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = found.secret_key
    os.environ["AWS_DEFAULT_REGION"] = found.region
    try:
        yield found
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        if owned:
            dev_services.stop(found)


@pytest.fixture(scope="session")
def redis_url(services: Any) -> str:
    """``redis://127.0.0.1:PORT/0``."""
    return str(services.redis_url)


@pytest.fixture(scope="session")
def redis_cluster_url(services: Any) -> str:
    """``redis+cluster://127.0.0.1:PORT``, a seed node of the 3-master cluster."""
    if not services.redis_cluster_url:
        # A services.json written before the cluster existed: an error, not a skip.
        raise dev_services.ServiceError(
            f"the services in {services.dir} have no redis cluster; stop and start them again"
        )
    return str(services.redis_cluster_url)


def cluster_seed(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ``redis+cluster://host:port`` URL."""
    host, _, port = url.removeprefix("redis+cluster://").rstrip("/").rpartition(":")
    return host, int(port)


@pytest.fixture
def redis_cluster_client(redis_cluster_url: str) -> Iterator[RedisCluster]:
    """A cluster client on emptied masters."""
    host, port = cluster_seed(redis_cluster_url)
    client = RedisCluster(host=host, port=port)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture
def restart_redis(services: Any) -> Callable[[], Any]:
    """Call it to SIGKILL the standalone redis-server and start it again, empty, on the
    same port (``redis_url`` stays valid); returns the updated ``services.Services``."""

    def restart() -> Any:
        # A server this session started dies with it, as the first one would have.
        return dev_services.restart_redis(services, die_with_parent=_shared_dir() is None)

    return restart


@pytest.fixture(scope="session")
def s3_endpoint(services: Any) -> str:
    """``http://127.0.0.1:PORT``, the SeaweedFS S3 endpoint."""
    return str(services.s3_endpoint)


@pytest.fixture
def s3_url(services: Any) -> str:
    """A store URL under a prefix no other test uses."""
    return (
        f"s3://{services.bucket}/t-{uuid.uuid4().hex}"
        f"?endpoint_url={services.s3_endpoint}&region={services.region}"
    )


@pytest.fixture(scope="session")
def s3_client(services: Any) -> Iterator[S3Client]:
    """A boto3 S3 client on the endpoint, for tests that inspect raw objects."""
    client = boto3.client(
        "s3",
        endpoint_url=services.s3_endpoint,
        aws_access_key_id=services.access_key,
        aws_secret_access_key=services.secret_key,
        region_name=services.region,
    )
    yield client
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on an emptied database."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(params=["s3-redis", "file-sqlite"])
def backend_urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """``(store_url, coord_url)`` of one backend pair, fresh for the test: S3 under a new
    prefix + the standalone Redis (db 0, emptied), or a local directory + a SQLite file."""
    if request.param == "s3-redis":
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        client.flushdb()
        client.close()
        return request.getfixturevalue("s3_url"), request.getfixturevalue("redis_url")
    return f"file:{tmp_path / 'store'}", f"sqlite:{tmp_path / 'coord.db'}"


@pytest.fixture
def make_config(backend_urls: tuple[str, str]) -> Callable[..., Any]:
    """``make_config(**overrides)``: a ``CheckpointConfig`` on ``backend_urls`` with short
    leases (2 s ttl, 0.5 s heartbeats) unless overridden."""
    store_url, coord_url = backend_urls

    def make(**overrides: Any) -> Any:
        base: dict[str, Any] = {
            "store_url": store_url,
            "coord_url": coord_url,
            "lease_ttl": 2,
            "heartbeat_interval": 0.5,
        }
        return CheckpointConfig(**(base | overrides))

    return make


@pytest.fixture(autouse=True)
def _package_logger_level_restored() -> Iterator[None]:
    """A system with ``detailed_logging`` sets the package logger to DEBUG; put it back
    after every test, so no later test of the same process sees records it did not ask
    for (the CLI prints what reaches the root handler)."""
    logger = logging.getLogger("bbp_dist_resume")
    level = logger.level
    yield
    logger.setLevel(level)
