"""``bbp-resume``: a stub group for now; commands arrive with the CLI issue."""

from __future__ import annotations

import argparse
import sys

from bbp_dist_resume import __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = argparse.ArgumentParser(prog="bbp-resume", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bbp-resume {__version__}")
    parser.parse_args(argv)
    parser.print_help(sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
