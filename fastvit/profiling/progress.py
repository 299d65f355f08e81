"""A progress bar on stderr for the long profiling commands."""
from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """A one-line progress bar on ``stream`` (stderr); one line per step when not a terminal."""

    def __init__(self, total: int, stream=None, enabled: bool = True, width: int = 24):
        self.total, self.done, self.width = max(1, total), 0, width
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_len = 0

    def __call__(self, label: str) -> None:
        """Announce the step about to run."""
        if not self.enabled:
            return
        self.done = min(self.done + 1, self.total)
        filled = int(self.width * (self.done - 1) / self.total)
        elapsed = time.perf_counter() - self.t0
        text = (f"[{'#' * filled}{'-' * (self.width - filled)}] {self.done}/{self.total} "
                f"{int(elapsed // 60)}m{int(elapsed % 60):02d}s  {label}")
        if self.tty:
            pad = max(0, self._last_len - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._last_len = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        text = f"[{'#' * self.width}] {self.total}/{self.total} done in {elapsed:.0f}s"
        self.stream.write(("\r" + text + " " * max(0, self._last_len - len(text)) if self.tty else text) + "\n")
        self.stream.flush()
