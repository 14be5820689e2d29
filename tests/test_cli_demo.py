"""``bbp-resume demo`` as a person runs it: the installed script on the embedded default
(nothing configured), its report as JSON on stdout and its steps on stderr, checked
against the store with the CLI's own listings. ``run_demo`` itself: tests/test_demo.py."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import Cli, run_script

# isort: split
# Fixtures reach a test module by being imported into it.
from cli_helpers import cli_fixture  # noqa: F401

HOSTS = "300"  # enough work for the crash to land mid-run (tests/test_demo.py)


def test_demo_on_the_embedded_default_recovers_and_its_report_matches_the_store(
    tmp_path: Path, cli: Cli
) -> None:
    work = tmp_path / "demo"
    ran = run_script(
        *["demo", "--dir", str(work), "--probers", "1", "--hosts", HOSTS, "--seed", "7"],
        "--json",
        timeout=240,
    )
    assert ran.code == 0, ran.err
    report = ran.json()
    assert report["output_matches"] is True
    assert report["crashes_injected"] == 1 and report["killed_worker"] in report["workers"]
    assert report["resumed_from"].startswith(f"{report['operation_id']}/")
    store, coord = f"file:{work / 'store'}", f"sqlite:{work / 'coord.db'}"
    assert (report["store_url"], report["coord_url"]) == (store, coord)
    steps = ran.err.splitlines()
    kinds = [line.split("]", 1)[1].split()[0] for line in steps if line.startswith("[")]
    for kind in ("kill", "detect", "check"):
        assert kind in kinds, ran.err
    assert "Traceback" not in ran.err
    # The CLI's listings of the same store agree with the report.
    (view,) = cli(
        "--store", store, "--coord", coord, "ops", report["operation_id"], "--json"
    ).json()
    assert view["status"] == "completed"
    assert {w["worker_id"]: w["checkpoints"] for w in view["workers"]} == report[
        "checkpoints_per_worker"
    ]
    out = cli("--store", store, "--coord", coord, "inspect", report["output_checkpoint"], "--json")
    assert out.json()["metadata"]["checkpoint_id"] == report["output_checkpoint"]


def test_demo_usage_errors_exit_2(cli: Cli, tmp_path: Path) -> None:
    for args in (["--probers", "9"], ["--hosts", "0"], ["--seed", "x"]):
        ran = cli("demo", "--dir", str(tmp_path / "d"), *args)
        assert ran.code == 2 and "Error: Invalid value" in ran.err, (args, ran.err)
    assert not (tmp_path / "d").exists()
