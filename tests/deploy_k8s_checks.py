"""Checks of infra/k8s/ and of the Dockerfile and .dockerignore, shared by
tests/test_deploy_files.py. Not a test module: like deploy_checks, each ``check_*``
takes the parsed files and raises AssertionError with what is wrong.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dockerfile
import kubernetes_validate
import yaml
from deploy_checks import (
    PIPELINE,
    ROOT,
    config_from_env,
    parse_bbp_resume_ok,
    parse_pipeline,
    pipeline_worker_ids,
)

K8S = ROOT / "infra" / "k8s"
KUSTOMIZATION = "kustomization.yaml"
SECRET_FILE = "secret.example.yaml"
SECRET_NAME = "bbp-secrets"
CONFIGMAP_NAME = "bbp-config"
# Variables that carry a credential: only ever from the Secret.
SECRET_ENV = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "BBP_ENCRYPTION_KEY",
        "BBP_DECRYPTION_KEYS",
        "BBP_COORD_URL",
    }
)
_PASSWORD_IN_URL = re.compile(r"//[^/@\s]*:[^/@\s]+@")
_REF = re.compile(r"\$\((\w+)\)")
INDEX_VAR = "JOB_COMPLETION_INDEX"
INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"

Manifests = dict[str, list[dict[str, Any]]]

# -- loading ---------------------------------------------------------------------------


def load_manifests(folder: Path = K8S) -> Manifests:
    """file name -> its objects, for every manifest (not the kustomization)."""
    out: Manifests = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name != KUSTOMIZATION:
            docs = yaml.safe_load_all(path.read_text(encoding="utf-8"))
            out[path.name] = [d for d in docs if d is not None]
    return out


def load_kustomization(folder: Path = K8S) -> dict[str, Any]:
    doc = yaml.safe_load((folder / KUSTOMIZATION).read_text(encoding="utf-8"))
    assert isinstance(doc, dict), KUSTOMIZATION
    return doc


def objects(manifests: Manifests) -> Iterator[dict[str, Any]]:
    for docs in manifests.values():
        yield from docs


def one(manifests: Manifests, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in objects(manifests)
        if o.get("kind") == kind and name in (None, o.get("metadata", {}).get("name"))
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name or 'anything'}"
    return found[0]


def workloads(manifests: Manifests) -> list[dict[str, Any]]:
    return [o for o in objects(manifests) if o.get("kind") in ("Deployment", "Job")]


def containers(workload: Mapping[str, Any]) -> list[dict[str, Any]]:
    pod = workload["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def secret_values(manifests: Manifests) -> dict[str, str]:
    secret = one(manifests, "Secret", SECRET_NAME)
    return {**secret.get("data", {}), **secret.get("stringData", {})}


# -- manifests -------------------------------------------------------------------------


def check_schema(manifests: Manifests, version: str) -> None:
    """Every object against that Kubernetes version's OpenAPI schema, strict (an
    unknown or misspelt field fails)."""
    for o in objects(manifests):
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{o.get('kind')}: {exc.message} at {list(exc.path)}") from None


def check_no_namespace(manifests: Manifests) -> None:
    for o in objects(manifests):
        assert "namespace" not in o.get("metadata", {}), f"{o['kind']} names a namespace"


def check_kustomization(manifests: Manifests, kustomization: Mapping[str, Any]) -> None:
    """Every manifest but the placeholder Secret is applied by `kubectl apply -k`."""
    want = sorted(set(manifests) - {SECRET_FILE})
    assert sorted(kustomization.get("resources", [])) == want, kustomization.get("resources")
    assert "namespace" not in kustomization, "the kustomization names a namespace"


def _env_secrets(c: Mapping[str, Any], keys: set[str]) -> None:
    for entry in c.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        value = str(entry.get("value", ""))
        assert entry["name"] not in SECRET_ENV or ref, f"{entry['name']} not from a Secret"
        assert not _PASSWORD_IN_URL.search(value), f"{entry['name']}: password in a value"
        if ref:
            assert ref.get("name") == SECRET_NAME, f"{entry['name']}: Secret {ref.get('name')}"
            assert ref.get("key") in keys, f"{entry['name']}: {ref.get('key')} not in Secret"
    for source in c.get("envFrom", []):
        ref = source.get("secretRef")
        assert not ref or ref.get("name") == SECRET_NAME, f"envFrom Secret {ref}"


def check_secrets(manifests: Manifests) -> None:
    """Credentials reach containers only through secretKeyRef to the Secret, whose
    values are placeholders; the ConfigMap holds none."""
    secret = secret_values(manifests)
    assert all("REPLACE-ME" in v for v in secret.values()), "the Secret holds real values"
    data = one(manifests, "ConfigMap", CONFIGMAP_NAME).get("data", {})
    leaked = sorted(SECRET_ENV & set(data))
    assert not leaked, f"ConfigMap holds secrets: {leaked}"
    assert not any(_PASSWORD_IN_URL.search(str(v)) for v in data.values()), "ConfigMap URL"
    for workload in workloads(manifests):
        for c in containers(workload):
            _env_secrets(c, set(secret))


def container_env(c: Mapping[str, Any], manifests: Manifests) -> dict[str, str]:
    """The environment a container gets: its ConfigMaps, literal values and Secret keys
    (the example Secret's placeholders)."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if name:
            env |= {k: str(v) for k, v in one(manifests, "ConfigMap", name)["data"].items()}
    secret = secret_values(manifests)
    for entry in c.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            env[entry["name"]] = secret[ref["key"]]
        elif "value" in entry:
            env[entry["name"]] = str(entry["value"])
    return env


def check_environment(manifests: Manifests) -> None:
    """Every container's BBP_* variables are fields, and load into a valid config."""
    for workload in workloads(manifests):
        for c in containers(workload):
            where = f"{workload['metadata']['name']}/{c['name']}"
            config = config_from_env(container_env(c, manifests), where)
            assert config.store_url.startswith("s3://"), where
            assert config.coord_url.startswith("redis"), where


def expand_refs(args: Sequence[Any], c: Mapping[str, Any], values: Mapping[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of args: VAR must be declared in the container's env."""
    declared = {entry["name"] for entry in c.get("env", [])}

    def value(m: re.Match[str]) -> str:
        assert m[1] in declared, f"$({m[1]}) is not declared in {c['name']}'s env"
        return values.get(m[1], f"{m[1].lower()}-value")

    return [_REF.sub(value, str(a)) for a in args]


def _labels_match(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def check_coordinator(manifests: Manifests) -> None:
    """Two replicas (leader election), the real CLI's `coordinator`, a liveness probe,
    resources; the PodDisruptionBudget selects its pods."""
    deployment = one(manifests, "Deployment")
    spec = deployment["spec"]
    assert spec.get("replicas") == 2, f"coordinator replicas: {spec.get('replicas')}"
    labels = spec["template"]["metadata"]["labels"]
    assert _labels_match(spec["selector"], labels), "Deployment selector"
    pdb = one(manifests, "PodDisruptionBudget")
    assert _labels_match(pdb["spec"]["selector"], labels), "PodDisruptionBudget selector"
    (c,) = spec["template"]["spec"]["containers"]
    assert "command" not in c, "the coordinator must use the image's bbp-resume entrypoint"
    path = parse_bbp_resume_ok(expand_refs(c.get("args", []), c, {}), "coordinator")
    assert path == ["coordinator"], f"the Deployment runs {path}"
    assert c.get("livenessProbe"), "coordinator: no livenessProbe"
    resources = c.get("resources", {})
    assert resources.get("requests") and resources.get("limits", {}).get("memory"), "resources"


def _index_env(c: Mapping[str, Any]) -> None:
    entry: dict[str, Any] = next((e for e in c.get("env", []) if e["name"] == INDEX_VAR), {})
    field = entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    assert field == INDEX_FIELD, f"{INDEX_VAR} is not the pod's completion index"


def check_job(manifests: Manifests) -> None:
    """An Indexed Job with one pod per worker slot, all at once; pod N's command line
    parses with the demo parser and runs --worker-index N."""
    spec = one(manifests, "Job")["spec"]
    assert spec.get("completionMode") == "Indexed", "the workers' Job is not Indexed"
    n = spec.get("completions")
    assert spec.get("parallelism") == n, f"parallelism {spec.get('parallelism')} != {n}"
    assert isinstance(spec.get("backoffLimit"), int), "backoffLimit"
    pod = spec["template"]["spec"]
    assert pod.get("restartPolicy") in ("OnFailure", "Never"), pod.get("restartPolicy")
    (c,) = pod["containers"]
    assert c.get("command") == PIPELINE, f"the Job runs {c.get('command')}"
    _index_env(c)
    for index in range(n):
        args = expand_refs(c.get("args", []), c, {INDEX_VAR: str(index)})
        parsed = parse_pipeline(args, f"Job pod {index}")
        assert parsed.role == "worker" and parsed.worker_index == index, f"pod {index}"
        assert parsed.probers is not None, "the Job's workers must name --probers"
        slots = len(pipeline_worker_ids(parsed.probers))
        assert n == slots, f"completions {n}, but --probers {parsed.probers} has {slots} slots"


# -- Dockerfile and .dockerignore ------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
_SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL", re.IGNORECASE)
_ARG = re.compile(r"\$\{?(\w+)\}?")


def parse_dockerfile(text: str) -> tuple[dockerfile.Command, ...]:
    """Instructions, by BuildKit's own parser."""
    commands: tuple[dockerfile.Command, ...] = dockerfile.parse_string(text)
    return commands


def _names(c: dockerfile.Command) -> list[str]:
    if c.cmd == "ENV":
        return list(c.value[::2])
    return [v.split("=", 1)[0] for v in c.value] if c.cmd == "ARG" else []


def _base_images(commands: Sequence[dockerfile.Command]) -> Iterator[str]:
    """The images the stages start from, with ARG defaults substituted."""
    args: dict[str, str] = {}
    stages: set[str] = set()

    def arg(m: re.Match[str]) -> str:
        return args.get(m[1], m[0])

    for c in commands:
        if c.cmd == "ARG":
            args |= dict(v.split("=", 1) for v in c.value if "=" in v)
        elif c.cmd == "FROM":
            image = _ARG.sub(arg, c.value[0])
            if image not in stages:
                yield image
            if len(c.value) == 3:
                stages.add(c.value[2])


def check_dockerfile(commands: Sequence[dockerfile.Command], patterns: Sequence[str]) -> None:
    """Pinned python:3.11 base, a non-root USER, the bbp-resume entrypoint, no secret
    in ENV or ARG, and every COPY source in the build context."""
    for image in _base_images(commands):
        name, _, tag = image.partition(":")
        assert name == "python" and tag.startswith("3.11"), f"base image {image}"
    final = commands[max(i for i, c in enumerate(commands) if c.cmd == "FROM") :]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"runs as {users}"
    entrypoints = [c for c in commands if c.cmd == "ENTRYPOINT"]
    assert entrypoints and entrypoints[-1].json, "ENTRYPOINT must be the exec (JSON) form"
    assert entrypoints[-1].value == ("bbp-resume",), f"ENTRYPOINT {entrypoints[-1].value}"
    for c in commands:
        secret = [n for n in _names(c) if _SECRET_NAME.search(n)]
        assert not secret, f"{c.cmd} {secret}: secrets come from the environment at run time"
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            for source in c.value[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
                assert not dockerignored(source, patterns), f"COPY {source}: .dockerignored"


def dockerignore_patterns(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _pattern(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        step = 3 if pattern.startswith("**/", i) else 2 if pattern.startswith("**", i) else 1
        token = pattern[i : i + step]
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
            token, re.escape(token)
        )
        i += step
    return re.compile(out + r"\Z")


def dockerignored(path: str, patterns: Sequence[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last pattern that
    matches the path or one of its parents wins, ``!`` re-includes (the rules of moby's
    patternmatcher, for the pattern forms .dockerignore uses here)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern(posixpath.normpath(raw.removeprefix("!")).lstrip("/"))
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


KEPT = ("pyproject.toml", "README.md", "bbp_dist_resume/cli/main.py", "bbp_dist_resume/py.typed")
DROPPED = (
    ".git/config",
    ".venv/bin/python",
    ".services/state.json",
    ".env",
    "checkpoints/config",
    "tests/conftest.py",
    "bbp_dist_resume/__pycache__/config.cpython-311.pyc",
)


def check_dockerignore(patterns: Sequence[str]) -> None:
    """The context keeps what the build needs and leaves out local state and secrets."""
    for path in KEPT:
        assert not dockerignored(path, patterns), f"{path} is left out of the build context"
    for path in DROPPED:
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker build"
