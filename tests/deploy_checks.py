"""Checks of docker-compose.yml, shared by tests/test_deploy_files.py, and the helpers
every deployment check uses: compose interpolation, the real ``bbp-resume`` (click) and
demo pipeline (argparse) parsers, and ``BBP_*`` environments loaded as a config.

Not a test module. Each ``check_*`` takes the parsed file and raises AssertionError with
what is wrong, so the tests run it on the real file and on broken copies of it.
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click
import yaml

from bbp_dist_resume.cli.main import cli
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.demo.pipeline import build_parser
from bbp_dist_resume.errors import ConfigError, InvalidIdentifier
from bbp_dist_resume.ids import check_id

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
REDIS_CONF = ROOT / "infra" / "redis" / "redis.conf"
PIPELINE = ["python", "-m", "bbp_dist_resume.demo.pipeline"]
# BBP_ variables read by the CLI itself, not configuration fields.
CLI_ENV = frozenset({"BBP_CONFIG", "BBP_DEBUG", "BBP_LOG_FORMAT"})

MINIO, BUCKET_INIT, REDIS, COORDINATOR = "minio", "minio-init", "redis", "coordinator"
WORKERS = ("worker-expand", "worker-probe-0", "worker-rank")
BBP_SERVICES = (COORDINATOR, *WORKERS)
HEALTHY, DONE, STARTED = (
    "service_healthy",
    "service_completed_successfully",
    "service_started",
)
# Who waits for whom, and for what.
DEPENDS_ON = {
    BUCKET_INIT: {MINIO: HEALTHY},
    COORDINATOR: {REDIS: HEALTHY, BUCKET_INIT: DONE},
    **{w: {REDIS: HEALTHY, BUCKET_INIT: DONE, COORDINATOR: STARTED} for w in WORKERS},
}
RESTART = {
    MINIO: "unless-stopped",
    REDIS: "unless-stopped",
    COORDINATOR: "unless-stopped",
    BUCKET_INIT: "no",
    **dict.fromkeys(WORKERS, "on-failure"),
}

# -- loading and compose interpolation --------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    """docker-compose.yml as written (anchors merged, ``${...}`` left in place)."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), f"{path.name} is not a mapping"
    return doc


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``.

    A variable that is unset and has no default fails: `docker compose up` must work
    with no .env file.
    """

    def value(m: re.Match[str]) -> str:
        if m[1]:
            return "$"
        name, op, default = m[2] or m[5], m[3], m[4] or ""
        got = env.get(name)
        if op == ":-" and not got:
            return default
        if op == "-" and got is None:
            return default
        assert got is not None, f"${{{name}}} has no default and is not set"
        return got

    return _VARIABLE.sub(value, text)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string of a parsed compose file, as compose does."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(item, env) for key, item in node.items()}
    return node


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment (mapping or KEY=VALUE list form) as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


# -- the real parsers and the config -----------------------------------------------------


def parse_bbp_resume(args: Sequence[str]) -> list[str]:
    """Parse a ``bbp-resume`` command line with the real click CLI, down to the leaf
    command; returns the command path (``["keys", "init"]``). Raises click.UsageError."""
    ctx = cli.make_context("bbp-resume", list(args), resilient_parsing=False)
    command: click.Command = cli
    path: list[str] = []
    while isinstance(command, click.Group):
        with warnings.catch_warnings():
            # click 8.2 deprecates protected_args; click 9 puts everything in ctx.args.
            warnings.simplefilter("ignore", DeprecationWarning)
            rest = [*getattr(ctx, "protected_args", []), *ctx.args]
        name, sub, sub_args = command.resolve_command(ctx, rest)
        assert name is not None and sub is not None, f"no command in {list(args)}"
        ctx = sub.make_context(name, sub_args, parent=ctx, resilient_parsing=False)
        command, path = sub, [*path, name]
    return path


def parse_bbp_resume_ok(args: Sequence[str], where: str) -> list[str]:
    """parse_bbp_resume, with a usage error turned into an assertion naming ``where``."""
    try:
        return parse_bbp_resume(args)
    except click.UsageError as exc:
        raise AssertionError(f"{where}: bbp-resume {' '.join(args)}: {exc}") from None


def parse_pipeline(args: Sequence[str], where: str) -> argparse.Namespace:
    """Parse a demo pipeline command line with its real argparse parser."""
    try:
        parsed = build_parser().parse_args(list(args))
    except SystemExit:
        # argparse has printed why on stderr.
        raise AssertionError(f"{where}: the demo pipeline rejects {list(args)}") from None
    try:
        check_id(parsed.op, "operation id")
    except InvalidIdentifier as exc:
        raise AssertionError(f"{where}: {exc}") from None
    return parsed


def pipeline_worker_ids(probers: int) -> list[str]:
    """The worker slots of the demo pipeline with ``probers`` probers, in index order
    (its documented ``--worker-index`` mapping)."""
    return ["expand", *(f"probe-{j}" for j in range(probers)), "rank"]


def env_fields() -> frozenset[str]:
    """Every ``BBP_<FIELD>`` the environment can set."""
    fields = CheckpointConfig.model_fields
    return frozenset(f"BBP_{name.upper()}" for name, f in fields.items() if not f.exclude)


def config_from_env(env: Mapping[str, str], where: str) -> CheckpointConfig:
    """Load the config a process with this environment gets; every BBP_* name must be a
    field or the CLI's own, and the values must validate."""
    unknown = sorted(k for k in env if k.startswith("BBP_") and k not in env_fields() | CLI_ENV)
    assert not unknown, f"{where}: not configuration fields: {unknown}"
    try:
        return CheckpointConfig.load(env=dict(env))
    except ConfigError as exc:
        raise AssertionError(f"{where}: invalid config: {exc}") from None


def conf_settings(text: str) -> dict[str, str]:
    """redis.conf directives (name -> the rest of the line), comments dropped."""
    lines = (line.strip() for line in text.splitlines())
    pairs = (line.split(None, 1) for line in lines if line and not line.startswith("#"))
    return {p[0].lower(): (p[1] if len(p) > 1 else "") for p in pairs}


def check_redis_conf(settings: Mapping[str, str], where: str) -> None:
    """The durability settings the leases rely on."""
    want = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}
    for name, value in want.items():
        assert settings.get(name) == value, f"{where}: {name} is {settings.get(name)!r}"


# -- docker-compose.yml ---------------------------------------------------------------------


def services(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(doc.get("services") or {})


def check_services(doc: Mapping[str, Any]) -> None:
    names = set(services(doc))
    want = {MINIO, BUCKET_INIT, REDIS, COORDINATOR, *WORKERS}
    assert names == want, f"services: missing {want - names}, unexpected {names - want}"


def check_images(doc: Mapping[str, Any]) -> None:
    """Every image pinned to a tag (no `latest`); built services tagged with the
    Dockerfile at the root as context."""
    for name, svc in services(doc).items():
        image = str(svc.get("image", ""))
        tag = image.rsplit("/", 1)[-1].partition(":")[2].partition("@")[0]
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned to a tag"
        if name in BBP_SERVICES:
            build = svc.get("build") or {}
            assert build.get("context") == ".", f"{name}: not built from the repository"
            assert (ROOT / build.get("dockerfile", "Dockerfile")).is_file(), name
    built = {services(doc)[n]["image"] for n in BBP_SERVICES}
    assert len(built) == 1, f"the bbp services run different images: {built}"


def check_healthchecks(doc: Mapping[str, Any]) -> None:
    """MinIO, Redis and the coordinator have a healthcheck that runs something."""
    for name in (MINIO, REDIS, COORDINATOR):
        check = services(doc)[name].get("healthcheck") or {}
        test = check.get("test") or []
        assert not check.get("disable") and test not in (["NONE"], "NONE"), name
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"


def check_depends_on(doc: Mapping[str, Any]) -> None:
    """Start order by conditions, and every `service_healthy` target has a healthcheck."""
    svcs = services(doc)
    for name, want in DEPENDS_ON.items():
        got = svcs[name].get("depends_on") or {}
        assert isinstance(got, dict), f"{name}: depends_on without conditions"
        conditions = {target: (spec or {}).get("condition") for target, spec in got.items()}
        assert conditions == want, f"{name}: depends_on {conditions}, want {want}"
    for name, svc in svcs.items():
        for target, spec in (svc.get("depends_on") or {}).items():
            healthy = (spec or {}).get("condition") == HEALTHY
            assert not healthy or svcs[target].get("healthcheck"), f"{name} -> {target}"


def check_restart(doc: Mapping[str, Any]) -> None:
    for name, want in RESTART.items():
        got = str(services(doc)[name].get("restart", "no"))
        assert got == want, f"{name}: restart {got!r}, want {want!r}"


def store_url_parts(url: str) -> tuple[str, str]:
    """(bucket, endpoint_url) of an s3:// store URL."""
    parts = urlsplit(url)
    assert parts.scheme == "s3", f"store URL {url!r} is not s3://"
    return parts.netloc, parse_qs(parts.query).get("endpoint_url", [""])[0]


def check_bucket_init(doc: Mapping[str, Any]) -> None:
    """minio-init creates the bucket the store URLs name, on MinIO, with MinIO's root
    credentials, which are also the ones the bbp services use."""
    svcs = resolve(services(doc), {})
    init = svcs[BUCKET_INIT]
    command = list(init.get("command") or [])
    assert command[:2] == ["mb", "--ignore-existing"], f"{BUCKET_INIT}: {command}"
    target = urlsplit(environment(init)["MC_HOST_local"])
    minio_env = environment(svcs[MINIO])
    assert (target.hostname, target.port) == (MINIO, 9000), f"{BUCKET_INIT}: {target}"
    root = (minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"])
    assert (target.username, target.password) == root, f"{BUCKET_INIT}: not MinIO's root"
    for name in BBP_SERVICES:
        env = environment(svcs[name])
        bucket, endpoint = store_url_parts(env["BBP_STORE_URL"])
        assert command[2:] == [f"local/{bucket}"], f"{name}: bucket {bucket} is not created"
        assert endpoint == f"http://{MINIO}:9000", f"{name}: store endpoint {endpoint}"
        creds = (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"))
        assert creds == root, f"{name}: S3 credentials are not MinIO's"


def redis_conf_in(svc: Mapping[str, Any]) -> Path | None:
    """The repository file mounted as the config file named on the command line."""
    command = [str(a) for a in svc.get("command") or []]
    if len(command) < 2 or not command[1].endswith(".conf"):
        return None
    for volume in svc.get("volumes") or []:
        source, _, rest = str(volume).partition(":")
        if rest.split(":")[0] == command[1]:
            return ROOT / source
    return None


def check_redis(doc: Mapping[str, Any]) -> None:
    """AOF with everysec (flags, or the mounted infra/redis/redis.conf), and the
    password Redis starts with is the one in every BBP_COORD_URL."""
    svc = resolve(services(doc)[REDIS], {})
    command = [str(a) for a in svc.get("command") or []]
    assert command[:1] == ["redis-server"], f"{REDIS}: command {command}"
    conf = redis_conf_in(svc)
    rest = command[2:] if conf else command[1:]
    flags = dict(zip(rest[::2], rest[1::2], strict=False))
    settings = conf_settings(conf.read_text(encoding="utf-8")) if conf else {}
    settings |= {k.removeprefix("--"): v for k, v in flags.items()}
    check_redis_conf(settings, REDIS)
    password = flags.get("--requirepass")
    for name in BBP_SERVICES:
        url = urlsplit(environment(resolve(services(doc)[name], {}))["BBP_COORD_URL"])
        assert (url.hostname, url.port) == (REDIS, 6379), f"{name}: coord URL {url}"
        assert url.password == password, f"{name}: not the password Redis starts with"


def check_commands(doc: Mapping[str, Any]) -> None:
    """The coordinator's command line parses with the real CLI; each worker's with the
    demo parser, all describing one pipeline whose slots are exactly the workers."""
    svcs = resolve(services(doc), {})
    path = parse_bbp_resume_ok(svcs[COORDINATOR].get("command") or [], COORDINATOR)
    assert path == ["coordinator"], f"{COORDINATOR} runs {path}"
    parsed = {}
    for name in WORKERS:
        assert svcs[name].get("entrypoint") == PIPELINE, f"{name}: not the demo pipeline"
        args = parse_pipeline(svcs[name].get("command") or [], name)
        assert args.role == "worker" and args.worker, f"{name}: not a --worker command line"
        parsed[name] = args
    shapes = {(a.op, a.probers, a.hosts, a.batch, a.seed) for a in parsed.values()}
    assert len(shapes) == 1, f"the workers describe different pipelines: {shapes}"
    probers = next(iter(parsed.values())).probers
    assert probers is not None, "the workers must name --probers"
    ids = sorted(a.worker for a in parsed.values())
    assert ids == sorted(pipeline_worker_ids(probers)), f"slots {ids}, probers {probers}"


def check_environment(doc: Mapping[str, Any]) -> None:
    """Each bbp service's environment loads into a valid config on S3 + Redis."""
    for name in BBP_SERVICES:
        env = environment(resolve(services(doc)[name], {}))
        config = config_from_env(env, name)
        assert config.store_url.startswith("s3://"), name
        assert config.coord_url.startswith("redis://"), name


def check_interpolation(doc: Mapping[str, Any]) -> None:
    """Every ${VAR} has a default: `docker compose up` works with no .env."""
    resolve(doc, {})


COMPOSE_CHECKS = (
    check_services,
    check_images,
    check_healthchecks,
    check_depends_on,
    check_restart,
    check_bucket_init,
    check_redis,
    check_commands,
    check_environment,
    check_interpolation,
)
