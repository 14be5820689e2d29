"""The demo's settings and the pipeline's command line (the interface docker-compose and
Kubernetes use): no servers, no processes."""

from __future__ import annotations

import argparse
import shlex
from datetime import timedelta
from pathlib import Path

import pytest

from bbp_dist_resume import CheckpointConfig, ConfigError
from bbp_dist_resume.demo import command, demo_config, plumbing, recon
from bbp_dist_resume.demo.report import redact_url

# -- settings --------------------------------------------------------------------------------


def test_demo_config_keeps_the_callers_backends_and_encryption_and_applies_the_demo_timing(
    tmp_path: Path,
) -> None:
    mine = CheckpointConfig(
        store_url="s3://bucket/p?endpoint_url=http://127.0.0.1:9000",
        coord_url="redis://:pw@127.0.0.1:6379/2",
        enable_encryption=True,
        encryption_key="k1",
        lease_ttl=60,
        heartbeat_interval=20,
    )
    used = demo_config(mine, tmp_path)
    assert (used.store_url, used.coord_url) == (mine.store_url, mine.coord_url)
    assert used.enable_encryption and used.secret_key() == "k1"
    assert used.lease_ttl == timedelta(seconds=3)
    assert used.heartbeat_interval == timedelta(seconds=1)
    assert used.scan_interval == timedelta(seconds=0.2)
    embedded = demo_config(None, tmp_path)
    assert embedded.store_url == f"file:{tmp_path.resolve() / 'store'}"
    assert embedded.coord_url == f"sqlite:{tmp_path.resolve() / 'coord.db'}"


def test_config_env_rebuilds_the_same_config_secrets_included() -> None:
    config = CheckpointConfig(
        store_url="file:/tmp/x",
        coord_url="redis://:secret@127.0.0.1:1/0",
        enable_encryption=True,
        encryption_key="new key",
        decryption_keys=("old one", "older"),
        lease_ttl=7.5,
        heartbeat_interval=2,
        deterministic_producers=("expand",),
        strategy="time_based",
        auto_cleanup=False,
        mtbf=120,
    )
    env = plumbing.config_env(config)
    again = CheckpointConfig.load(env=env)
    assert again.model_dump() == config.model_dump()
    assert again.secret_key() == "new key"
    assert [k.get_secret_value() for k in again.decryption_keys] == ["old one", "older"]
    assert all(name.startswith("BBP_") for name in env)


def test_config_env_refuses_a_list_value_with_a_comma() -> None:
    config = CheckpointConfig(enable_encryption=True, encryption_key="k", decryption_keys=("a,b",))
    with pytest.raises(ConfigError, match="decryption_keys"):
        plumbing.config_env(config)


def test_config_json_refuses_to_carry_secrets() -> None:
    config = CheckpointConfig(enable_encryption=True, encryption_key="k")
    rc = plumbing.RunConfig(checkpoint=config, params=recon.Params(), run_dir="/tmp/r")
    with pytest.raises(ConfigError, match="encryption keys"):
        rc.to_json()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@10.0.0.1:6379/0", "redis://:***@10.0.0.1:6379/0"),
        ("rediss://user:p%40ss@host:6380", "rediss://user:***@host:6380"),
        (
            "s3://b/p?endpoint_url=http://ak:sk@127.0.0.1:9000",
            "s3://b/p?endpoint_url=http://ak:***@127.0.0.1:9000",
        ),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("sqlite:/tmp/coord.db", "sqlite:/tmp/coord.db"),
        ("file:/tmp/store", "file:/tmp/store"),
    ],
)
def test_report_urls_never_show_a_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# -- the pipeline's command line -------------------------------------------------------------


def parse(line: str) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = command.build_parser()
    return parser, parser.parse_args(shlex.split(line))


@pytest.mark.parametrize(
    ("index", "worker"),
    [(0, "expand"), (1, "probe-0"), (2, "probe-1"), (3, "probe-2"), (4, "rank")],
)
def test_worker_index_maps_to_expand_then_the_probers_then_rank(index: int, worker: str) -> None:
    parser, args = parse(f"worker --op recon --worker-index {index} --probers 3")
    assert command.worker_id(parser, args, command.run_config(args).params) == worker


@pytest.mark.parametrize(
    "line",
    [
        "worker --op recon --worker-index 4 --probers 2",  # past rank
        "worker --op recon --worker probe-2 --probers 2",  # no such prober
        "worker --op recon",  # neither --worker nor --worker-index
        "worker --op recon --worker expand --worker-index 0",  # both
        "worker --op recon --worker expand --probers 0",
        "worker --op recon --worker expand --sleep -1",
        "worker --op 'bad/op' --worker expand",
        "worker --op recon --worker expand --config a.toml --config-json {}",
        "worker --op recon --worker expand --hosts 5 --config-json {}",
        "coordinator",  # no --op
    ],
)
def test_bad_command_lines_are_usage_errors(line: str) -> None:
    with pytest.raises(SystemExit) as exited:
        parser, args = parse(line)
        command.check_args(parser, args)
        command.worker_id(parser, args, command.run_config(args).params)
    assert exited.value.code == 2


def test_flags_and_the_bbp_environment_make_the_run_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    toml = tmp_path / "bbp.toml"
    toml.write_text('store_url = "file:/from/file"\nlease_ttl = 90\n')
    monkeypatch.setenv("BBP_COORD_URL", "sqlite:/from/env.db")
    monkeypatch.setenv("BBP_LEASE_TTL", "40")
    monkeypatch.setenv("BBP_FAULT", "after_commit:0")  # the fault points', not a config field
    flags = "--probers 3 --hosts 50 --batch 5 --sleep 0 --seed 3"
    line = f"coordinator --op recon --name c2 {flags} --config {toml}"
    parser, args = parse(line)
    command.check_args(parser, args)
    rc = command.run_config(args)
    assert rc.checkpoint.store_url == "file:/from/file"
    assert rc.checkpoint.coord_url == "sqlite:/from/env.db"
    assert rc.checkpoint.lease_ttl == timedelta(seconds=40)  # the environment wins
    assert rc.params == recon.Params(seed=3, hosts=50, probers=3, batch=5, sleep_s=0.0)
    assert Path(rc.run_dir).name == "bbp-demo-recon"
    assert args.name == "c2"
    # A relaunched worker gets the same settings.
    relaunch = command.relaunch_flags(args, rc)
    _, again = parse(f"worker --op recon --worker rank {shlex.join(relaunch)}")
    assert command.run_config(again) == rc


def test_launcher_template_gives_back_every_word_and_fills_in_the_slot() -> None:
    rc = plumbing.RunConfig(
        checkpoint=CheckpointConfig(), params=recon.Params(), run_dir="/tmp/a {b}"
    )
    tail = ["--config-json", rc.to_json()]
    template = plumbing.launcher_template(
        plumbing.worker_command(plumbing.OPERATION_SLOT, plumbing.WORKER_SLOT, tail)
    )
    words = [w.format(operation_id="op1", worker_id="rank") for w in shlex.split(template)]
    assert words == plumbing.worker_command("op1", "rank", tail)
    assert plumbing.RunConfig.from_json(words[-1]) == rc
