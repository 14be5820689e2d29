"""The runnable examples: every ``examples/**/*.py`` with a ``__main__`` block, run as a real
subprocess, must exit 0 and print its key lines.

Examples are discovered, so a new one is run without being listed here. It runs with no
arguments, in a temporary folder (its working directory and ``TMPDIR``), with warnings as
errors and with no ``AWS_*`` or ``BBP_*`` variable. An example that needs more (arguments,
servers, credentials) or has key lines to check gets an entry in ``CASES``; one that needs
something it is not given fails here: it is never skipped. Each run has a timeout, and
must leave no process of its own behind.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
MAIN_BLOCK = re.compile(r"""^if __name__ == ["']__main__["']:""", re.MULTILINE)
TIMEOUT_S = 150.0  # per example; each takes 10-20 s on two busy cores
ISSUE_EXAMPLES = {"quickstart.py", "encrypted_s3.py", "custom_launcher.py"}


def discover() -> list[str]:
    """Paths (relative to examples/) of every example with a ``__main__`` block."""
    return sorted(
        p.relative_to(EXAMPLES_DIR).as_posix()
        for p in EXAMPLES_DIR.rglob("*.py")
        if MAIN_BLOCK.search(p.read_text(encoding="utf-8"))
    )


EXAMPLES = discover()


def load_example(name: str) -> ModuleType:
    """Import an example by path (its ``__main__`` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"example_{Path(name).stem}", EXAMPLES_DIR / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- what each example needs and prints ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """One finished run of an example."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    env: dict[str, str] = field(repr=False)

    def describe(self) -> str:
        return (
            f"exit {self.returncode} after {self.seconds:.1f} s\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


@dataclass(frozen=True, slots=True)
class Case:
    """How to run one example and what it must print.

    ``env(request)`` gives the variables it needs (fixtures through ``request``);
    ``lines`` are regular expressions, each matching a whole line of its output;
    ``check(run, request)`` looks further (at the output, the store...).
    """

    args: tuple[str, ...] = ()
    env: Callable[[pytest.FixtureRequest], dict[str, str]] | None = None
    lines: tuple[str, ...] = ()
    check: Callable[[Run, pytest.FixtureRequest], None] | None = None


def s3_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """SeaweedFS under a fresh prefix, its credentials, the standalone Redis, a passphrase."""
    services: Any = request.getfixturevalue("services")
    prefix = f"example-{uuid.uuid4().hex[:12]}"
    return {
        "BBP_STORE_URL": f"s3://{services.bucket}/{prefix}"
        f"?endpoint_url={services.s3_endpoint}&region={services.region}",
        "BBP_COORD_URL": request.getfixturevalue("redis_url"),
        "BBP_ENCRYPTION_KEY": secrets.token_urlsafe(24),
        "AWS_ACCESS_KEY_ID": services.access_key,
        "AWS_SECRET_ACCESS_KEY": services.secret_key,
        "AWS_DEFAULT_REGION": services.region,
    }


def bucket_and_prefix(store_url: str) -> tuple[str, str]:
    """The bucket and prefix of an ``s3://bucket/prefix?...`` store URL."""
    bucket, _, prefix = store_url.removeprefix("s3://").partition("?")[0].partition("/")
    return bucket, prefix


def check_quickstart(run: Run, request: pytest.FixtureRequest) -> None:
    steps = int(re.findall(r"^this run did (\d+) of 81 steps$", run.stdout, re.M)[-1])
    assert 0 < steps < 81, "the resumed run redid everything, or nothing"
    expected = load_example("quickstart.py").reference_result()
    assert re.findall(r"^result ([0-9a-f]{64})$", run.stdout, re.M) == [expected]


def check_encrypted(run: Run, request: pytest.FixtureRequest) -> None:
    # Independently of the example's own look: its prefix holds chunks, records and
    # two data keys (the first passphrase's and the rotated one's).
    s3 = request.getfixturevalue("s3_client")
    bucket, prefix = bucket_and_prefix(run.env["BBP_STORE_URL"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
    keys = [o["Key"].removeprefix(f"{prefix}/") for page in pages for o in page.get("Contents", [])]
    assert len([k for k in keys if k.startswith("keys/")]) == 2
    assert any(k.startswith("chunks/") for k in keys)
    assert any(k.startswith("checkpoints/encrypted-") for k in keys)


def check_launcher(run: Run, request: pytest.FixtureRequest) -> None:
    module = load_example("custom_launcher.py")
    for worker in module.WORKERS:
        total = module.expected_total(worker)
        assert f"{worker}: total {total}, uncrashed run {total}" in run.stdout.splitlines()
    # The replacement is another process than the one killed.
    pids = re.findall(r"^\s*\[w1 pid (\d+)\] (?:starting clean|resumed from)", run.stdout, re.M)
    assert len(pids) == 2 and pids[0] != pids[1], pids


def check_read_committed(run: Run, request: pytest.FixtureRequest) -> None:
    # Its folder is kept (an argument): each consumer's fold must be its final channel's,
    # recomputed here from the file itself, of every record; only the optimistic one
    # rolled back.
    module = load_example("read_committed.py")
    for style, rolled_back in (("read-committed", False), ("optimistic", True)):
        channel = request.getfixturevalue("tmp_path") / "run" / style / "channel.txt"
        final = module.records(channel)
        assert len(final) == module.TOTAL, style
        line = rf"^{style}: consumer (\d+) records, fold (\w+)$"
        folds = re.findall(line, run.stdout, re.M)
        assert folds == [(str(module.TOTAL), module.fold(module.SEED, final)[:16])], folds
        rollbacks = int(re.findall(rf"^{style}: rolled back (\d+) time", run.stdout, re.M)[0])
        assert (rollbacks > 0) == rolled_back, (style, rollbacks)


ID = r"[A-Za-z0-9][A-Za-z0-9._-]*"
CASES: dict[str, Case] = {
    "quickstart.py": Case(
        lines=(
            rf"killed worker w0 of quickstart-{ID} with SIGKILL in stage probe",
            rf"resumed from quickstart-{ID}/w0/\d+: stage probe, \d+% done, "
            r"last host host\d\d\.example\.net; "
            r"completed \['resolve'\], pending \['probe', 'report'\]",
            r"OK: the resumed run produced exactly the result of an uncrashed run",
        ),
        check=check_quickstart,
    ),
    "encrypted_s3.py": Case(
        env=s3_env,
        lines=(
            rf"checkpoint encrypted-{ID}/w0/\d+ written, encrypted, with attachment "
            r"model-weights\.bin",
            r"a wrong passphrase is refused: EncryptionKeyError: .+",
            r"no object key names the attachment and no object holds the plaintext",
            rf"after rotation encrypted-{ID}/w0/\d+ still restores \(state and attachment intact\)",
            rf"with the new passphrase alone {ID}/w0/\d+ opens, {ID}/w0/\d+ does not: .+",
            r"OK: encryption, refusal of a wrong passphrase and rotation all work",
        ),
        check=check_encrypted,
    ),
    "read_committed.py": Case(
        args=("run",),
        lines=(
            r"killed the producer with SIGKILL at record \d+ \(committed \d+\)",
            rf"\s*\[producer pid \d+\] resumed from read-committed-{ID}/producer/\d+ "
            r"at record [1-9]\d*",
            rf"\s*\[producer pid \d+\] resumed from optimistic-{ID}/producer/\d+ "
            r"at record [1-9]\d*",
            r"read-committed: the coordinator relaunched the producer [1-9]\d* time\(s\)",
            r"optimistic: the coordinator relaunched the producer [1-9]\d* time\(s\)",
            r"read-committed: rolled back 0 time\(s\), read 0 records again",
            r"OK: both consumers end with the final channel's fold",
        ),
        check=check_read_committed,
    ),
    "custom_launcher.py": Case(
        lines=(
            rf"killed w1 of launcher-{ID} with SIGKILL",
            rf"launcher called for launcher-{ID}/w1: plan \d+ resumes it from {ID}/w1/\d+",
            rf"\s*\[w1 pid \d+\] resumed from {ID}/w1/\d+ \(resume plan generation \d+: .+\)",
            r"the launcher was called for \['w1'\]",
            r"OK: the relaunched worker resumed and every result matches",
        ),
        check=check_launcher,
    ),
}


# -- running -------------------------------------------------------------------------------


def base_env(tmp_path: Path) -> dict[str, str]:
    """This environment without AWS_* and BBP_* variables, temporary files in tmp_path,
    warnings as errors (in the example's own children too)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BBP_"))}
    env.update(TMPDIR=str(tmp_path), PYTHONWARNINGS="error", PYTHONUNBUFFERED="1")
    return env


def run_example(name: str, args: tuple[str, ...], env: dict[str, str], cwd: Path) -> Run:
    """Run one example in its own process group; kill the group on timeout."""
    argv = [sys.executable, str(EXAMPLES_DIR / name), *args]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its children share its process group: killed with it
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        run = Run(proc.returncode, out, err, time.monotonic() - started, env)
        pytest.fail(f"{name} ran past {TIMEOUT_S} s\n{run.describe()}")
    run = Run(proc.returncode, out, err, time.monotonic() - started, env)
    assert not left_running(proc.pid), f"{name} left processes running\n{run.describe()}"
    return run


def left_running(pgid: int) -> bool:
    """True (after killing them) when processes of the example's group outlived it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def test_the_issues_examples_are_discovered_and_every_case_names_one() -> None:
    assert set(EXAMPLES) >= ISSUE_EXAMPLES
    assert set(CASES) <= set(EXAMPLES), "a case for an example that does not exist"


@pytest.mark.timeout(TIMEOUT_S + 60)
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_exits_0_and_prints_its_key_lines(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    case = CASES.get(name, Case())
    env = base_env(tmp_path) | (case.env(request) if case.env else {})
    run = run_example(name, case.args, env, tmp_path)
    assert run.returncode == 0, run.describe()
    assert run.stdout.strip(), f"{name} printed nothing\n{run.describe()}"
    for pattern in case.lines:
        assert re.search(rf"^{pattern}$", run.stdout, re.MULTILINE), (
            f"no line matches {pattern!r}\n{run.describe()}"
        )
    if case.check is not None:
        case.check(run, request)


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_encrypted_s3_refuses_to_run_without_a_passphrase(
    tmp_path: Path, request: pytest.FixtureRequest, s3_client: Any
) -> None:
    env = base_env(tmp_path) | s3_env(request)
    del env["BBP_ENCRYPTION_KEY"]
    run = run_example("encrypted_s3.py", (), env, tmp_path)
    assert run.returncode != 0, run.describe()
    assert "refusing to run: set BBP_ENCRYPTION_KEY" in run.stderr, run.describe()
    bucket, prefix = bucket_and_prefix(env["BBP_STORE_URL"])
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
    assert listed.get("KeyCount", 0) == 0, "it wrote to the store before refusing"
