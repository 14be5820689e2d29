"""The demo pipeline's command line (``python -m bbp_dist_resume.demo.pipeline``): the
parser, and the run settings and worker id it gives.

Two ways to give the settings: ``--config-json`` (the tests': the checkpoint config, the
pipeline's parameters and the run folder in one JSON), or the flags with the config from
``--config FILE`` and the ``BBP_*`` environment (docker-compose, Kubernetes, the demo
runner). A coordinator relaunches crashed workers with the same settings it was given.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

from bbp_dist_resume.config import CheckpointConfig
from bbp_dist_resume.demo.plumbing import MODULE, RunConfig, pipeline_flags
from bbp_dist_resume.demo.recon import Params, worker_for_index, worker_ids
from bbp_dist_resume.errors import InvalidIdentifier
from bbp_dist_resume.ids import check_id

_PARAMS = {"probers": "probers", "hosts": "hosts", "batch": "batch", "sleep": "sleep_s"}
_PIPELINE_FLAGS = (*_PARAMS, "seed", "run_dir")
_MAX_SLEEP_S = 60.0


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= _MAX_SLEEP_S:
        raise argparse.ArgumentTypeError(f"must be between 0 and {_MAX_SLEEP_S:.0f}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    d = Params()
    p.add_argument("--op", required=True, help="operation id")
    p.add_argument("--probers", type=_count(1), metavar="K", help=f"probers ({d.probers})")
    p.add_argument("--hosts", type=_count(0), metavar="N", help=f"input hosts ({d.hosts})")
    p.add_argument("--batch", type=_count(1), metavar="N", help=f"hosts a batch ({d.batch})")
    p.add_argument("--sleep", type=_seconds, metavar="S", help=f"pause a batch ({d.sleep_s})")
    p.add_argument("--seed", type=int, metavar="N", help=f"seed of the input ({d.seed})")
    p.add_argument("--run-dir", metavar="DIR", help="event logs (a folder in the temp dir)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="TOML config (BBP_* variables win)")
    source.add_argument("--config-json", metavar="JSON", help="all settings in one (tests)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bbp_dist_resume.demo.pipeline {worker,coordinator} ...``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description="The demo's multi-worker pipeline."
    )
    sub = parser.add_subparsers(dest="role", required=True)
    worker = sub.add_parser("worker", help="run one worker of the pipeline")
    _add_common(worker)
    who = worker.add_mutually_exclusive_group(required=True)
    who.add_argument("--worker", metavar="ID", help="expand, probe-J or rank")
    who.add_argument(
        "--worker-index", type=_count(0), metavar="N", help="0 expand, 1..K probe-(N-1), K+1 rank"
    )
    coordinator = sub.add_parser("coordinator", help="run the pipeline's coordinator")
    _add_common(coordinator)
    coordinator.add_argument("--name", default="c0", help="this coordinator's name (c0)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error (code 2) for a bad operation id, or for pipeline flags
    given along with ``--config-json`` (which carries them)."""
    try:
        check_id(args.op, "operation id")
    except InvalidIdentifier as exc:
        parser.error(str(exc))
    given = [f for f in _PIPELINE_FLAGS if getattr(args, f) is not None]
    if args.config_json is not None and given:
        flag = "--" + given[0].replace("_", "-")
        parser.error(f"--config-json carries the pipeline's parameters: drop {flag}")


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run's settings from the parsed arguments.

    Raises:
        ConfigError: a bad config file, ``BBP_*`` variable or JSON.
    """
    if args.config_json is not None:
        return RunConfig.from_json(args.config_json)
    given = {field: getattr(args, flag) for flag, field in _PARAMS.items()} | {"seed": args.seed}
    params = Params(**{k: v for k, v in given.items() if v is not None})
    run_dir = args.run_dir or str(Path(tempfile.gettempdir()) / f"bbp-demo-{args.op}")
    return RunConfig(checkpoint=CheckpointConfig.load(args.config), params=params, run_dir=run_dir)


def worker_id(parser: argparse.ArgumentParser, args: argparse.Namespace, params: Params) -> str:
    """The worker ``--worker`` or ``--worker-index`` names (a usage error if none)."""
    if args.worker_index is not None:
        try:
            return worker_for_index(params, args.worker_index)
        except IndexError as exc:
            parser.error(str(exc))
    if args.worker not in worker_ids(params):
        parser.error(f"--worker must be one of {', '.join(worker_ids(params))}")
    return str(args.worker)


def relaunch_flags(args: argparse.Namespace, rc: RunConfig) -> list[str]:
    """The flags that give a relaunched worker this process's settings."""
    if args.config_json is not None:
        return ["--config-json", args.config_json]
    config = ["--config", args.config] if args.config else []
    return pipeline_flags(rc.params, rc.run_dir) + config
