"""``bbp-resume``: the coordinator, slot-claiming workers and recovery plans from the shell.

    bbp-resume coordinator                 run the coordinator loop (leader-elected)
    bbp-resume worker --run mod:function   claim crashed slots and run them
    bbp-resume plan OP [--json]            the recovery line, with reasons and quarantine

Settings come from ``--config FILE`` (TOML), ``BBP_*`` variables and ``--store`` /
``--coord``. Errors are one line on stderr and exit code 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bbp_dist_resume import __version__
from bbp_dist_resume.api import ResumeContext, ResumeSystem, ResumeSystemManager
from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.errors import BBPError, ConfigError

log = logging.getLogger("bbp_dist_resume")
Runner = Callable[[ResumeSystem, ResumeContext | None], object]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bbp-resume", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"bbp-resume {__version__}")
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--store", help="store URL (file:... or s3://...)")
    p.add_argument("--coord", help="coordination URL (sqlite:..., redis://...)")
    p.add_argument("--debug", action="store_true", help="tracebacks and debug logs")
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("coordinator", help="run the coordinator loop")
    c.add_argument("--id", help="coordinator id (default: random)")
    w = sub.add_parser("worker", help="claim crashed slots and run them")
    w.add_argument("--run", required=True, help="module:function called as fn(system, context)")
    w.add_argument("--idle-exit", type=float, default=0.0, help="exit after N idle seconds")
    pl = sub.add_parser("plan", help="show the recovery plan of an operation")
    pl.add_argument("operation")
    pl.add_argument("--json", action="store_true")
    return p


def _config(args: argparse.Namespace) -> CheckpointConfig:
    overrides = {k: v for k, v in (("store_url", args.store), ("coord_url", args.coord)) if v}
    return CheckpointConfig.load(args.config, **overrides)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _coordinator(args: argparse.Namespace, config: CheckpointConfig) -> int:
    manager = ResumeSystemManager(args.id)
    manager.initialize(config)
    try:
        manager.run(stop=_stop_on_signals())
    finally:
        manager.shutdown()
    return 0


def _load_runner(spec: str) -> Runner:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError([("--run", "must be module:function")])
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError([("--run", f"cannot load {spec!r}: {exc}")]) from None
    if not callable(fn):
        raise ConfigError([("--run", f"{spec!r} is not callable")])
    return fn  # type: ignore[no-any-return]


def _worker(args: argparse.Namespace, config: CheckpointConfig) -> int:
    run = _load_runner(args.run)
    stop = _stop_on_signals()
    manager = ResumeSystemManager()
    manager.initialize(config)
    idle_since = time.monotonic()
    try:
        while not stop.is_set():
            slot = manager.claim()
            if slot is None:
                if args.idle_exit and time.monotonic() - idle_since > args.idle_exit:
                    return 0
                stop.wait(0.1)
                continue
            try:
                run(slot.system, slot.context)
            except BBPError as exc:  # a lost lease or a rollback: the slot is someone else's
                log.warning("slot %s/%s stopped: %s", slot.operation_id, slot.worker_id, exc)
            finally:
                slot.system.shutdown()
            idle_since = time.monotonic()
    finally:
        manager.shutdown()
    return 0


def _plan(args: argparse.Namespace, config: CheckpointConfig) -> int:
    manager = ResumeSystemManager()
    manager.initialize(config)
    try:
        plan = manager.plan_recovery(args.operation)
        current = manager.current_plan(args.operation)
    finally:
        manager.shutdown()
    body: dict[str, Any] = plan.to_body() | {
        "published_generation": current.generation if current else 0
    }
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"operation {args.operation}  (published generation {body['published_generation']})")
    for worker, entry in body["entries"].items():
        print(f"  {worker:20} {entry['checkpoint_id'] or 'initial state':60} {entry['reason']}")
    for cid, why in body["quarantined"].items():
        print(f"  quarantined {cid}: {why}")
    return 0


COMMANDS = {"coordinator": _coordinator, "worker": _worker, "plan": _plan}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO)
    if args.command is None:
        parser.print_help(sys.stdout)
        return 0
    try:
        return COMMANDS[args.command](args, _config(args))
    except BBPError as exc:
        if args.debug:
            raise
        print(f"bbp-resume: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
