"""CheckpointConfig: every field, the three sources, presets, errors, and secrecy."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from bbp_dist_resume import (
    CheckpointConfig,
    CheckpointGranularity,
    CheckpointStrategy,
    ConfigError,
    create_default_config,
    create_high_frequency_config,
    create_low_overhead_config,
)

BB_PIPELINE_FIELDS = {
    "store_url",
    "strategy",
    "granularity",
    "time_interval",
    "progress_threshold",
    "max_checkpoints",
    "enable_compression",
    "enable_encryption",
    "encryption_key",
    "enable_verification",
    "max_memory_threshold_mb",
    "auto_cleanup",
    "cleanup_age",
}
DISTRIBUTED_FIELDS = {
    "coord_url",
    "lease_ttl",
    "heartbeat_interval",
    "upload_concurrency",
    "compression_level",
    "chunk_min_size",
    "chunk_avg_size",
    "chunk_max_size",
}


def test_config_has_every_bb_pipeline_and_distributed_field() -> None:
    assert set(CheckpointConfig.model_fields) >= BB_PIPELINE_FIELDS | DISTRIBUTED_FIELDS


def test_enums_have_the_bb_pipeline_members() -> None:
    assert {m.name for m in CheckpointStrategy} == {
        "TIME_BASED",
        "PROGRESS_BASED",
        "HYBRID",
        "MANUAL",
        "ADAPTIVE",
    }
    assert {m.name for m in CheckpointGranularity} == {"COARSE", "MEDIUM", "FINE"}


def test_keyword_arguments_are_validated_and_typed() -> None:
    cfg = CheckpointConfig(strategy="manual", time_interval=90, cleanup_age="PT2H")
    assert cfg.strategy is CheckpointStrategy.MANUAL
    assert cfg.time_interval == timedelta(seconds=90)
    assert cfg.cleanup_age == timedelta(hours=2)
    assert CheckpointConfig(coord_timeout="0.5").coord_timeout == timedelta(seconds=0.5)


def test_every_bad_field_is_named_in_one_error() -> None:
    with pytest.raises(ConfigError) as err:
        CheckpointConfig(
            progress_threshold=150,
            max_checkpoints=0,
            strategy="sometimes",
            upload_concurrency=0,
            bogus=1,
        )
    fields = {f for f, _ in err.value.problems}
    assert {
        "progress_threshold",
        "max_checkpoints",
        "strategy",
        "upload_concurrency",
        "bogus",
    } <= fields
    for name in fields:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"chunk_min_size": 512 << 10, "chunk_avg_size": 256 << 10}, "chunk_avg_size"),
        ({"heartbeat_interval": 20, "lease_ttl": 30}, "heartbeat_interval"),
        ({"enable_encryption": True}, "encryption_key"),
        ({"encryption_key": ""}, "encryption_key"),
        ({"store_url": "ftp://x"}, "store_url"),
        ({"coord_url": "mysql://x"}, "coord_url"),
        ({"compression_level": 23}, "compression_level"),
        ({"time_interval": 0}, "time_interval"),
        ({"coord_timeout": 0.05}, "coord_timeout"),
        ({"coord_timeout": 301}, "coord_timeout"),
        ({"coord_timeout": "soon"}, "coord_timeout"),
    ],
)
def test_inconsistent_fields_are_refused(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        CheckpointConfig(**changes)
    assert field in {f for f, _ in err.value.problems}


def test_the_encryption_key_never_shows_in_repr_or_errors() -> None:
    secret = "hunter2-very-secret"
    cfg = CheckpointConfig(
        enable_encryption=True, encryption_key=secret, decryption_keys=("old-secret-xyz",)
    )
    assert secret not in repr(cfg) and secret not in str(cfg)
    assert "old-secret-xyz" not in repr(cfg)
    assert cfg.secret_key() == secret
    with pytest.raises(ConfigError) as err:
        CheckpointConfig(encryption_key=secret, max_checkpoints=-1, decryption_keys=5)
    assert secret not in str(err.value) and secret not in repr(err.value)


def test_toml_then_env_then_keywords_win_in_that_order(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[checkpoint]\nmax_checkpoints = 3\ntime_interval = 60\nstrategy = "manual"\n'
        'store_url = "file:from-file"\n'
    )
    env = {"BBP_MAX_CHECKPOINTS": "4", "BBP_TIME_INTERVAL": "120", "PATH": "/bin"}
    cfg = CheckpointConfig.load(path, env=env, max_checkpoints=5)
    assert cfg.max_checkpoints == 5
    assert cfg.time_interval == timedelta(seconds=120)
    assert cfg.strategy is CheckpointStrategy.MANUAL
    assert cfg.store_url == "file:from-file"


def test_env_lists_booleans_and_secrets_parse() -> None:
    env = {
        "BBP_ENABLE_ENCRYPTION": "true",
        "BBP_ENCRYPTION_KEY": "k1",
        "BBP_DECRYPTION_KEYS": "k0,kminus1",
        "BBP_AUTO_CLEANUP": "false",
    }
    cfg = CheckpointConfig.load(env=env)
    assert cfg.enable_encryption and not cfg.auto_cleanup
    assert [k.get_secret_value() for k in cfg.decryption_keys] == ["k0", "kminus1"]


def test_an_unknown_bbp_variable_is_an_error_not_ignored() -> None:
    with pytest.raises(ConfigError) as err:
        CheckpointConfig.load(env={"BBP_LEASE_TT": "5"})
    assert "BBP_LEASE_TT" in str(err.value)
    CheckpointConfig.load(env={"BBP_CONFIG": "x.toml", "BBP_TEST_SERVICES_DIR": "/tmp"})


def test_a_broken_toml_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("max_checkpoints = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        CheckpointConfig.load(path, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        CheckpointConfig.load(tmp_path / "missing.toml", env={})


def test_presets_are_valid_and_differ_in_the_documented_way() -> None:
    default = create_default_config()
    high = create_high_frequency_config()
    low = create_low_overhead_config(max_checkpoints=2)
    assert high.time_interval < default.time_interval < low.time_interval
    assert high.granularity is CheckpointGranularity.FINE
    assert low.granularity is CheckpointGranularity.COARSE
    assert low.max_checkpoints == 2


def test_config_is_frozen_and_with_changes_revalidates() -> None:
    cfg = create_default_config()
    with pytest.raises(Exception):  # pydantic refuses assignment to a frozen model
        cfg.max_checkpoints = 3  # type: ignore[misc]
    assert cfg.with_changes(max_checkpoints=3).max_checkpoints == 3
    with pytest.raises(ConfigError):
        cfg.with_changes(max_checkpoints=0)
