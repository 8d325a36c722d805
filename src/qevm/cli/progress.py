"""A progress bar on the terminal for long operations (none when redirected)."""

from __future__ import annotations

import sys
import time
from typing import Any

#: Inputs smaller than this finish too fast to need a bar.
MIN_BYTES = 256 << 20


class Progress:
    """Shows ``update(done)`` against ``total`` with rich, only on a terminal (a total
    not known yet comes with the first update)."""

    def __init__(self, label: str, total: int | None) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._label = label
        self._last = 0.0
        self._total: int | None = None
        self._active = False
        if total is not None:
            self._set_total(total)

    def _set_total(self, total: int) -> None:
        self._total = total
        self._active = bool(total >= MIN_BYTES and sys.stderr.isatty())

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None and self._total is None:
            self._set_total(total)
        if not self._active:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._label, total=self._total)
        self._bar.update(self._task, completed=done)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
