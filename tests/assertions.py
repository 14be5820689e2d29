"""Assertions shared by the test modules (tests/ is on sys.path under pytest)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from bbp_dist_resume.errors import BBPError

E = TypeVar("E", bound=BBPError)


def raises_exactly(kind: type[E], fn: Callable[[], object]) -> E:
    """Call ``fn``; it must raise exactly ``kind`` (not a subclass, not a parent).

    Anything else fails the test with the unexpected exception chained, so the report shows
    where in the library it came from.
    """
    try:
        fn()
    except Exception as exc:
        if type(exc) is not kind or not isinstance(exc, kind):
            raise AssertionError(
                f"expected {kind.__name__}, got {type(exc).__module__}.{type(exc).__name__}: {exc}"
            ) from exc
        return exc
    raise AssertionError(f"expected {kind.__name__}, but nothing was raised")
