"""The metrics exporter's configuration: validation, once per process, a port in use,
prometheus-client missing, and nothing loaded, served or recorded with metrics off (those
in fresh interpreters, since the exporter is once per process)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from metrics_helpers import exporter_port, free_port, run_python

from bbp_dist_resume import CheckpointConfig, ConfigError
from bbp_dist_resume.api.metrics import recorder, start_metrics_exporter

# -- configuration and the exporter ------------------------------------------------------


def test_metrics_port_and_address_are_validated_and_read_from_the_environment() -> None:
    assert CheckpointConfig().metrics_port is None
    assert CheckpointConfig().metrics_address == "127.0.0.1"
    assert CheckpointConfig.load(env={"BBP_METRICS_PORT": "9464"}).metrics_port == 9464
    for bad in (0, 65536, -1, "http"):
        with pytest.raises(ConfigError, match="metrics_port"):
            CheckpointConfig(metrics_port=bad)
    for bad in ("", "a b", "-x", "host;rm"):
        with pytest.raises(ConfigError, match="metrics_address"):
            CheckpointConfig(metrics_address=bad)
    assert CheckpointConfig(metrics_address="::1").metrics_address == "::1"


def test_the_exporter_is_once_per_process() -> None:
    port = exporter_port()
    start_metrics_exporter(port)  # the same port again: nothing to do
    assert recorder().enabled
    other = free_port()
    with pytest.raises(ConfigError, match=f"already serves metrics on 127.0.0.1:{port}"):
        start_metrics_exporter(other)
    for bad in (0, 70000):
        with pytest.raises(ConfigError, match="metrics_port"):
            start_metrics_exporter(bad)


def test_a_port_in_use_is_a_config_error_and_opens_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_python(
            f"""
            from bbp_dist_resume import ConfigError, ResumeSystem, CheckpointConfig
            config = CheckpointConfig(store_url="file:{tmp_path}/store",
                                      coord_url="sqlite:{tmp_path}/coord.db", metrics_port={port})
            try:
                ResumeSystem(config).initialize()
            except ConfigError as exc:
                print(exc)
            """
        )
    assert done.returncode == 0, done.stderr
    assert f"metrics_port: cannot serve metrics on 127.0.0.1:{port}" in done.stdout
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "coord.db").exists()


def test_metrics_port_without_prometheus_client_says_what_to_install(tmp_path: Path) -> None:
    done = run_python(
        f"""
        import sys
        sys.modules["prometheus_client"] = None  # as if it were not installed
        from bbp_dist_resume import ConfigError, ResumeSystemManager, CheckpointConfig
        config = CheckpointConfig(store_url="file:{tmp_path}/store",
                                  coord_url="sqlite:{tmp_path}/coord.db", metrics_port=9)
        try:
            ResumeSystemManager("c1").initialize(config)
        except ConfigError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'bbp-dist-resume[metrics]'" in done.stdout


def test_with_metrics_off_nothing_is_imported_served_or_recorded(tmp_path: Path) -> None:
    done = run_python(
        f"""
        import sys, threading
        from bbp_dist_resume import CheckpointConfig, ResumeSystem
        from bbp_dist_resume.api.metrics import NoRecorder, recorder
        config = CheckpointConfig(store_url="file:{tmp_path}/store",
                                  coord_url="sqlite:{tmp_path}/coord.db")
        with ResumeSystem(config) as rs:
            rs.start_monitoring("op-1")
            rs.create_checkpoint("scan", {{"n": 1}})
            assert rs.resume_automatically("op-1") is not None
            rs.complete()
        assert type(recorder()) is NoRecorder, recorder()
        assert "prometheus_client" not in sys.modules
        assert not any(m.startswith("prometheus_client") for m in sys.modules)
        assert "bbp_dist_resume.api.metrics_prometheus" not in sys.modules
        print(sorted(t.name for t in threading.enumerate()))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['MainThread']"
