"""The multi-worker demo (``bbp-resume demo``): a recon-style pipeline of several worker
processes and a coordinator, one worker killed mid-run, the run resumed and its output
checked against a run that never crashed.

Modules, in reading order: ``pipeline`` (the workers' roles and the pattern they follow),
``worker`` (their calls to the library), ``recon`` (what they compute), ``coordinator``;
then the plumbing: ``command`` (the command line), ``plumbing`` (settings, event logs),
and the demo runner: ``runner`` (:func:`run_demo`), ``tracker``, ``report``, ``processes``.

The package imports neither ``pipeline`` nor what only it uses, so that
``python -m bbp_dist_resume.demo.pipeline`` runs it as ``__main__`` once.
"""

from bbp_dist_resume.demo.report import DemoEvent, DemoEventKind, DemoReport
from bbp_dist_resume.demo.runner import DEMO_SETTINGS, demo_config, run_demo

__all__ = ["DEMO_SETTINGS", "DemoEvent", "DemoEventKind", "DemoReport", "demo_config", "run_demo"]
