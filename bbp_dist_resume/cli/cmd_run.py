"""``coordinator`` and ``worker``: the long-running processes of a deployment."""

from __future__ import annotations

import importlib
import logging
import signal
import threading
import time
from collections.abc import Callable

import click

from bbp_dist_resume.api import ResumeContext, ResumeSystem, ResumeSystemManager
from bbp_dist_resume.cli.app import App, pass_app, service_logging
from bbp_dist_resume.errors import BBPError, ConfigError

log = logging.getLogger("bbp_dist_resume")
Runner = Callable[[ResumeSystem, ResumeContext | None], object]


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so loops end cleanly (leases released)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@click.command()
@click.option("--id", "coordinator_id", help="Coordinator id (default: random).")
@pass_app
def coordinator(app: App, coordinator_id: str | None) -> None:
    """Run the coordinator loop: leader-elected crash detection, plans and relaunches.

    Any number may run; one holds the leader lease and acts, the others stand by.
    SIGTERM or Ctrl-C ends it, giving up leadership.
    """
    service_logging()
    manager = ResumeSystemManager(coordinator_id)
    manager.initialize(app.config())
    try:
        manager.run(stop=stop_on_signals())
    finally:
        manager.shutdown()


def load_runner(spec: str) -> Runner:
    """``module:function`` -> the function. Raises ``ConfigError``."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError([("--run", "must be module:function")])
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError([("--run", f"cannot load {spec!r}: {exc}")]) from None
    if not callable(fn):
        raise ConfigError([("--run", f"{spec!r} is not callable")])
    runner: Runner = fn
    return runner


@click.command()
@click.option(
    "--run",
    "run_spec",
    required=True,
    metavar="MODULE:FUNCTION",
    help="Called as FUNCTION(system, context) for each claimed slot.",
)
@click.option(
    "--idle-exit",
    type=float,
    default=0.0,
    metavar="SECONDS",
    help="Exit after this long with nothing to claim (0: never).",
)
@click.option(
    "--slots",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Slots run at once, each claimed and run by its own thread.",
)
@pass_app
def worker(app: App, run_spec: str, idle_exit: float, slots: int) -> None:
    """Claim crashed slots from the reclaim queue and run them, up to --slots at once.

    Each claimed slot is resumed from the published plan, then handed to FUNCTION; a slot
    that loses its lease or is rolled back is given up (the coordinator reclaims it).
    With channels, give it at least as many slots as the workers a crash relaunches
    together: a relaunched consumer waits at the recovery barrier until its producer has
    restored, and with too few slots nobody runs the producer (RecoveryTimeout).
    """
    service_logging()
    runner = load_runner(run_spec)
    stop = stop_on_signals()
    manager = ResumeSystemManager()
    manager.initialize(app.config())
    try:
        if slots == 1:
            _claim_loop(manager, runner, stop, idle_exit)
        else:
            _claim_loops(slots, lambda: _claim_loop(manager, runner, stop, idle_exit), stop)
    finally:
        manager.shutdown()


def _claim_loops(slots: int, loop: Callable[[], None], stop: threading.Event) -> None:
    """``loop`` in ``slots`` threads; the first error stops the others and is raised once
    they have finished their slots."""
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            loop()
        except BaseException as exc:
            # Said at once: the other slots finish what they run, then the worker exits.
            log.error("%s stopped claiming: %s", threading.current_thread().name, exc)
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=guarded, name=f"bbp-slot-{i}") for i in range(slots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # short joins: the main thread keeps handling signals
            thread.join(0.2)
    if errors:
        raise errors[0]


def _claim_loop(
    manager: ResumeSystemManager, runner: Runner, stop: threading.Event, idle_exit: float
) -> None:
    idle_since = time.monotonic()
    while not stop.is_set():
        slot = manager.claim()
        if slot is None:
            if idle_exit and time.monotonic() - idle_since > idle_exit:
                return
            stop.wait(0.1)
            continue
        try:
            runner(slot.system, slot.context)
        except BBPError as exc:  # a lost lease or a rollback: the slot is someone else's
            log.warning("slot %s/%s stopped: %s", slot.operation_id, slot.worker_id, exc)
        finally:
            slot.system.shutdown()
        idle_since = time.monotonic()


COMMANDS = [coordinator, worker]
