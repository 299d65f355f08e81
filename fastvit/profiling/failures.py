"""What happens when a profiling case raises.

A case is "not run" only for a stated reason (no CUDA; Triton's interpreter not timed on
purpose; the CPU policy of :mod:`fastvit.profiling.defaults`). A case that *raises* is a failure:
by default it stops the run as a :class:`CaseError` naming the case; with ``keep_going`` the
failure is recorded (a row with ``error``) and the run goes on, and the caller still reports it.
"""
from __future__ import annotations

__all__ = ["CaseError", "describe"]


def describe(exc: BaseException) -> str:
    """``"TypeName: first line of the message"``: enough to name an error in a table cell."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class CaseError(RuntimeError):
    """A profiling case raised. ``case`` names it (e.g. ``"speed attention fwd 224px triton"``),
    ``error`` is :func:`describe` of the original exception (chained as ``__cause__``)."""

    def __init__(self, case: str, exc: BaseException):
        self.case = case
        self.error = describe(exc)
        super().__init__(f"case {case!r} raised {self.error}")
