"""The deployment files (docker-compose.yml, infra/k8s/, the Dockerfile, .dockerignore,
infra/redis/redis.conf) are correct without a Docker engine or a cluster: schemas, the
real CLI and demo parsers, CheckpointConfig, BuildKit's parser, hadolint and a real
redis-server. Each check also runs on a broken copy, which it must reject.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import deploy_checks as dc
import deploy_k8s_checks as kc
import kubernetes_validate
import pytest
import redis
import yaml

from bbp_dist_resume.errors import EncryptionKeyError
from bbp_dist_resume.repository.keys import KdfParams, derive_kek

DELETE = object()
BIN = Path(sys.executable).parent
# The oldest Kubernetes the manifests target, and the newest the schemas know.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


def setp(doc: Any, path: Sequence[str | int], value: Any) -> Any:
    """A deep copy of ``doc`` with the item at ``path`` set to ``value``, deleted
    (``DELETE``) or, for a callable, replaced by ``value(old)``."""
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    elif callable(value):
        node[path[-1]] = value(node[path[-1]])
    else:
        node[path[-1]] = value
    return out


def swap(old: str, new: str) -> Callable[[list[Any]], list[Any]]:
    """A command line with the token ``old`` replaced by ``new`` (which must be there)."""

    def change(args: list[Any]) -> list[Any]:
        assert old in args, f"{old} not in {args}"
        return [new if a == old else a for a in args]

    change.__name__ = f"{old}->{new}"
    return change


def case_id(value: Any) -> str | None:
    """Test ids: the check's name, the changed key and the new value."""
    if callable(value):
        return getattr(value, "__name__", None)
    if isinstance(value, tuple):
        return str(value[-1])
    return None if value is DELETE else str(value)[:40]


def tool(name: str) -> str:
    """A dev tool installed beside this Python (never skipped when missing)."""
    path = BIN / name
    assert path.is_file(), f"{name} is missing: pip install -e '.[dev]'"
    return str(path)


# -- docker-compose.yml ----------------------------------------------------------------


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    argv = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    good = check_compose_schema(dc.COMPOSE)
    assert good.returncode == 0, good.stdout + good.stderr
    doc = setp(dc.load_compose(), ("services", "worker-rank", "depends_on", "redis"), {})
    broken = setp(doc, ("services", "minio-init", "depends_on", "minio", "condition"), "up")
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    assert check_compose_schema(tmp_path / "docker-compose.yml").returncode != 0


@pytest.mark.parametrize("check", dc.COMPOSE_CHECKS, ids=lambda c: c.__name__)
def test_compose_file_passes(check: Callable[[Any], None]) -> None:
    check(dc.load_compose())


S = "services"
BROKEN_COMPOSE: list[tuple[Callable[[Any], None], tuple[str | int, ...], Any]] = [
    (dc.check_services, (S, "worker-rank"), DELETE),
    (dc.check_images, (S, "minio", "image"), "quay.io/minio/minio:latest"),
    (dc.check_images, (S, "redis", "image"), "redis"),
    (dc.check_images, (S, "worker-rank", "image"), "bbp-dist-resume:0.0.9"),
    (dc.check_healthchecks, (S, "minio", "healthcheck"), DELETE),
    (dc.check_healthchecks, (S, "redis", "healthcheck", "test"), ["NONE"]),
    (dc.check_depends_on, (S, "worker-rank", "depends_on", "minio-init", "condition"), "x"),
    (dc.check_depends_on, (S, "coordinator", "depends_on", "redis"), DELETE),
    (dc.check_depends_on, (S, "coordinator", "depends_on"), ["redis", "minio-init"]),
    (dc.check_restart, (S, "worker-expand", "restart"), "no"),
    (dc.check_bucket_init, (S, "minio-init", "command"), ["mb", "local/other-bucket"]),
    (
        dc.check_bucket_init,
        (S, "minio-init", "environment", "MC_HOST_local"),
        "http://a:b@minio:9000",
    ),
    (dc.check_redis, (S, "redis", "command"), ["redis-server", "--appendonly", "no"]),
    (dc.check_redis, (S, "redis", "command"), ["redis-server", "/usr/local/etc/redis/redis.conf"]),
    (dc.check_redis, (S, "redis", "volumes"), ["redis-data:/data"]),
    (dc.check_commands, (S, "coordinator", "command"), ["coordinator", "--bogus"]),
    (dc.check_commands, (S, "coordinator", "command"), ["coordinate"]),
    (dc.check_commands, (S, "coordinator", "command"), ["plan", "demo"]),
    (dc.check_commands, (S, "worker-expand", "entrypoint"), ["bbp-resume"]),
    (dc.check_commands, (S, "worker-expand", "command"), swap("expand", "probe-0")),
    (dc.check_commands, (S, "worker-expand", "command"), swap("expand", "probe-1")),
    (dc.check_commands, (S, "worker-expand", "command"), swap("--worker", "--wroker")),
    (dc.check_commands, (S, "worker-rank", "command"), swap("3000", "3001")),
    (dc.check_commands, (S, "worker-rank", "command"), swap("${DEMO_OP:-demo}", "a/b")),
    (dc.check_commands, (S, "coordinator", "command"), swap("--id", "--name")),
    (dc.check_environment, (S, "coordinator", "environment", "BBP_LEASE_TYME"), "15"),
    (dc.check_environment, (S, "coordinator", "environment", "BBP_HEARTBEAT_INTERVAL"), "10"),
    (dc.check_environment, (S, "coordinator", "environment", "BBP_STORE_URL"), "ftp://x"),
    (dc.check_interpolation, (S, "minio", "environment", "MINIO_ROOT_USER"), "${ROOT_USER}"),
]


@pytest.mark.parametrize(("check", "path", "value"), BROKEN_COMPOSE, ids=case_id)
def test_compose_checks_reject_a_broken_copy(
    check: Callable[[Any], None], path: tuple[str | int, ...], value: Any
) -> None:
    with pytest.raises(AssertionError):
        check(setp(dc.load_compose(), path, value))


def test_compose_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    cases = {"$$HOME": "$HOME", "${SET}-$SET": "x-x", "${EMPTY:-d}": "d", "${EMPTY-d}": ""}
    for text, want in cases.items():
        assert dc.interpolate(text, env) == want, text
    assert dc.interpolate("${UNSET-d}/${UNSET:-e}", env) == "d/e"
    with pytest.raises(AssertionError):
        dc.interpolate("${UNSET}", env)


def test_cli_parser_helper_rejects_what_bbp_resume_rejects() -> None:
    assert dc.parse_bbp_resume(["--log-format", "json", "coordinator", "--id", "c"]) == [
        "coordinator"
    ]
    assert dc.parse_bbp_resume(["keys", "list"]) == ["keys", "list"]
    for bad in (["nope"], ["coordinator", "--nope"], ["--log-format", "xml", "ops"]):
        with pytest.raises(AssertionError):
            dc.parse_bbp_resume_ok(bad, "test")


# -- infra/redis/redis.conf, through a real redis-server --------------------------------


@pytest.fixture(name="run_redis")
def _run_redis(tmp_path: Path) -> Iterator[Callable[[list[str]], redis.Redis]]:
    procs: list[subprocess.Popen[str]] = []

    def run(args: list[str]) -> redis.Redis:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (infra/dev/services.py installs it)"
        sock = tmp_path / f"redis-{len(procs)}.sock"
        argv = [server, *args, "--port", "0", "--unixsocket", str(sock), "--daemonize", "no"]
        proc = subprocess.Popen(
            argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        procs.append(proc)
        seen = []
        for line in proc.stdout or []:  # logfile "": the log is stdout
            seen.append(line)
            # "Ready to accept connections tcp" (7.2+), "... now ready to accept
            # connections at PATH" (a Unix socket, 7.0).
            if "ready to accept connections" in line.lower():
                password = dict(zip(args[1::2], args[2::2], strict=False)).get("--requirepass")
                return redis.Redis(
                    unix_socket_path=str(sock), password=password, decode_responses=True
                )
        raise AssertionError(f"redis-server did not start: {''.join(seen)}")

    yield run
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()


def server_settings(client: redis.Redis) -> dict[str, str]:
    names = ("appendonly", "appendfsync", "maxmemory-policy", "no-appendfsync-on-rewrite")
    settings: dict[str, str] = {}
    for name in names:
        settings |= {str(k): str(v) for k, v in client.config_get(name).items()}
    client.close()
    return settings


@pytest.mark.timeout(60)
def test_redis_conf_loads_in_redis_server_with_the_compose_command_line(
    run_redis: Callable[[list[str]], redis.Redis],
) -> None:
    svc = dc.resolve(dc.load_compose()[S]["redis"], {})
    conf = dc.redis_conf_in(svc)
    assert conf == dc.REDIS_CONF, f"compose mounts {conf}"
    settings = server_settings(run_redis([str(conf), *svc["command"][2:]]))
    dc.check_redis_conf(settings, "redis-server")
    assert settings["no-appendfsync-on-rewrite"] == "no"
    # The same check on a server that ignores the advice:
    broken = server_settings(run_redis([str(conf), "--appendfsync", "always"]))
    with pytest.raises(AssertionError):
        dc.check_redis_conf(broken, "redis-server")


def test_redis_conf_file_holds_the_durability_settings() -> None:
    settings = dc.conf_settings(dc.REDIS_CONF.read_text(encoding="utf-8"))
    dc.check_redis_conf(settings, "redis.conf")
    assert "requirepass" not in settings, "a password in a file that is not a secret"
    with pytest.raises(AssertionError):
        dc.check_redis_conf(settings | {"maxmemory-policy": "allkeys-lru"}, "copy")


# -- infra/k8s/ --------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    manifests = kc.load_manifests()
    kc.check_schema(manifests, version)
    with pytest.raises(AssertionError):
        kc.check_schema(setp(manifests, ("coordinator.yaml", 0, "spec", "replica"), 2), version)
    with pytest.raises(AssertionError):
        kc.check_schema(
            setp(manifests, ("workers-job.yaml", 0, "spec", "completions"), "3"), version
        )


K8S_CHECKS = (
    kc.check_no_namespace,
    kc.check_secrets,
    kc.check_environment,
    kc.check_coordinator,
    kc.check_job,
)


@pytest.mark.parametrize("check", K8S_CHECKS, ids=lambda c: c.__name__)
def test_manifests_pass(check: Callable[[kc.Manifests], None]) -> None:
    check(kc.load_manifests())


def test_kustomization_applies_every_manifest_but_the_secret() -> None:
    manifests, kustomization = kc.load_manifests(), kc.load_kustomization()
    assert {"configmap.yaml", "coordinator.yaml", "workers-job.yaml"} <= set(manifests)
    kc.check_kustomization(manifests, kustomization)
    for resources in (["configmap.yaml", "coordinator.yaml"], [*manifests]):
        with pytest.raises(AssertionError):
            kc.check_kustomization(manifests, {**kustomization, "resources": resources})


POD = ("spec", "template", "spec", "containers", 0)
BROKEN_K8S: list[tuple[Callable[[kc.Manifests], None], tuple[str | int, ...], Any]] = [
    (kc.check_no_namespace, ("configmap.yaml", 0, "metadata", "namespace"), "default"),
    (
        kc.check_secrets,
        ("coordinator.yaml", 0, *POD, "env", 2),
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"},
    ),
    (
        kc.check_secrets,
        ("workers-job.yaml", 0, *POD, "env", 3, "valueFrom", "secretKeyRef", "key"),
        "NOPE",
    ),
    (
        kc.check_secrets,
        ("workers-job.yaml", 0, *POD, "env", 3, "valueFrom", "secretKeyRef", "name"),
        "other",
    ),
    (kc.check_secrets, ("configmap.yaml", 0, "data", "BBP_ENCRYPTION_KEY"), "base64:x"),
    (
        kc.check_secrets,
        ("configmap.yaml", 0, "data", "BBP_STORE_URL"),
        "s3://b/p?endpoint_url=http://u:pw@h",
    ),
    (kc.check_secrets, ("secret.example.yaml", 0, "stringData", "AWS_SECRET_ACCESS_KEY"), "wJalrX"),
    (kc.check_environment, ("configmap.yaml", 0, "data", "BBP_LEASE_TTL"), "soon"),
    (kc.check_environment, ("configmap.yaml", 0, "data", "BBP_LEASE_TYME"), "30"),
    (kc.check_environment, ("configmap.yaml", 0, "data", "BBP_HEARTBEAT_INTERVAL"), "20"),
    (kc.check_coordinator, ("coordinator.yaml", 0, "spec", "replicas"), 1),
    (kc.check_coordinator, ("coordinator.yaml", 0, *POD, "args"), swap("--id", "--bogus")),
    (kc.check_coordinator, ("coordinator.yaml", 0, *POD, "args"), swap("coordinator", "plan")),
    (kc.check_coordinator, ("coordinator.yaml", 0, *POD, "args"), swap("$(POD_NAME)", "$(NAME)")),
    (kc.check_coordinator, ("coordinator.yaml", 0, *POD, "livenessProbe"), DELETE),
    (kc.check_coordinator, ("coordinator.yaml", 1, "spec", "selector", "matchLabels"), {"a": "b"}),
    (kc.check_job, ("workers-job.yaml", 0, "spec", "completions"), 4),
    (kc.check_job, ("workers-job.yaml", 0, "spec", "parallelism"), 1),
    (kc.check_job, ("workers-job.yaml", 0, "spec", "completionMode"), DELETE),
    (kc.check_job, ("workers-job.yaml", 0, *POD, "args"), swap("--worker-index", "--worker-idx")),
    (kc.check_job, ("workers-job.yaml", 0, *POD, "args"), swap("$(JOB_COMPLETION_INDEX)", "0")),
    (kc.check_job, ("workers-job.yaml", 0, *POD, "args"), swap("$(JOB_COMPLETION_INDEX)", "$(I)")),
    (kc.check_job, ("workers-job.yaml", 0, *POD, "args"), swap("1", "2")),
    (kc.check_job, ("workers-job.yaml", 0, *POD, "command"), ["bbp-resume"]),
    (
        kc.check_job,
        ("workers-job.yaml", 0, *POD, "env", 0, "valueFrom", "fieldRef", "fieldPath"),
        "metadata.name",
    ),
]


@pytest.mark.parametrize(("check", "path", "value"), BROKEN_K8S, ids=case_id)
def test_manifest_checks_reject_a_broken_copy(
    check: Callable[[kc.Manifests], None], path: tuple[str | int, ...], value: Any
) -> None:
    with pytest.raises(AssertionError):
        check(setp(kc.load_manifests(), path, value))


def test_placeholder_encryption_key_is_refused_by_the_key_layer() -> None:
    key = kc.secret_values(kc.load_manifests())["BBP_ENCRYPTION_KEY"]
    assert key.startswith("base64:"), "a passphrase placeholder would be a usable key"
    with pytest.raises(EncryptionKeyError):
        derive_kek(key, KdfParams(salt="AAAAAAAAAAAAAAAAAAAAAA=="))


# -- Dockerfile and .dockerignore --------------------------------------------------------


def dockerfile_text() -> str:
    return kc.DOCKERFILE.read_text(encoding="utf-8")


def ignore_patterns() -> list[str]:
    return kc.dockerignore_patterns(kc.DOCKERIGNORE.read_text(encoding="utf-8"))


def test_dockerfile_passes() -> None:
    kc.check_dockerfile(kc.parse_dockerfile(dockerfile_text()), ignore_patterns())


BROKEN_DOCKERFILE = [
    ("USER 10001:10001", "USER root"),
    ("USER 10001:10001", ""),
    ('ENTRYPOINT ["bbp-resume"]', "ENTRYPOINT bbp-resume"),
    ('ENTRYPOINT ["bbp-resume"]', 'ENTRYPOINT ["python"]'),
    ("python:3.11-slim-bookworm", "python:latest"),
    ("python:3.11-slim-bookworm", "python"),
    ("WORKDIR /home/bbp", "WORKDIR /home/bbp\nENV AWS_SECRET_ACCESS_KEY=abc"),
    ("WORKDIR /home/bbp", "WORKDIR /home/bbp\nARG BBP_ENCRYPTION_KEY"),
    ("COPY bbp_dist_resume ./bbp_dist_resume", "COPY src ./src"),
]


@pytest.mark.parametrize(("old", "new"), BROKEN_DOCKERFILE)
def test_dockerfile_check_rejects_a_broken_copy(old: str, new: str) -> None:
    text = dockerfile_text()
    assert old in text
    with pytest.raises(AssertionError):
        kc.check_dockerfile(kc.parse_dockerfile(text.replace(old, new)), ignore_patterns())


def hadolint(text: str) -> subprocess.CompletedProcess[str]:
    argv = [tool("hadolint"), "--no-color", "-"]
    return subprocess.run(argv, input=text, capture_output=True, text=True, timeout=60, check=False)


def test_dockerfile_passes_hadolint() -> None:
    result = hadolint(dockerfile_text())
    assert result.returncode == 0, result.stdout + result.stderr
    assert hadolint(dockerfile_text().replace("USER 10001:10001", "USER root")).returncode != 0


def test_dockerignore_keeps_the_build_inputs_and_drops_local_state() -> None:
    patterns = ignore_patterns()
    kc.check_dockerignore(patterns)
    for dropped in (["*"], ["!bbp_dist_resume/"], ["**/__pycache__", "**/*.pyc"]):
        assert set(dropped) <= set(patterns)
        with pytest.raises(AssertionError):
            kc.check_dockerignore([p for p in patterns if p not in dropped])
