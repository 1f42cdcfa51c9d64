"""Progress with an ETA on stderr, drawn by tqdm: a live bar on a terminal, one line per update in a log.

Items the call cache already held count towards done but not towards the rate, so the ETA is the time the
remaining model calls will take.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
"""A bar-less line for logs: ``[stage] what: 12/40 (30%) [00:09<00:21, 1.33it/s, 4 cached]`` (``<`` then the ETA)."""


class _Lines:
    """A file for tqdm that turns each carriage-return redraw into a line of its own (logs stay readable)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.out.write(line + "\n")

    def flush(self) -> None:
        self.out.flush()


class ProgressPrinter:
    """A ``progress(done, total)`` callback (see :data:`charter.store.Progress`) showing ``[stage] what``.

    Args:
        stage: The stage, shown in brackets.
        what: What is being counted (``"answers"``, ``"compare harmless by JUDGE"``).
        every: Seconds between lines in a log (a terminal redraws its bar every half second); the last one always
            shows.
        quiet: Show nothing.
    """

    def __init__(self, stage: str, what: str, every: float = 5.0, quiet: bool = False) -> None:
        self.stage = stage
        self.what = what
        self.every = every
        self.quiet = quiet
        self.first_done: int | None = None
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self._bar is None or self._bar.total != total:
            self._open(done, total)
        bar = self._bar
        bar.update(max(0, done - bar.n))
        if done >= total:
            bar.close()
            self._bar = None

    def _open(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is not None:
            self._bar.close()
        self.first_done = done  # already cached: counted as done, not in the rate
        err = sys.stderr
        live = hasattr(err, "isatty") and err.isatty()
        self._bar = tqdm(
            total=total, initial=done, desc=f"[{self.stage}] {self.what}", unit="it", dynamic_ncols=live,
            file=err if live else _Lines(err), mininterval=0.5 if live else self.every,
            bar_format=None if live else LOG_FORMAT, postfix=f"{done} cached" if done else None, leave=True,
            smoothing=0.1,
        )
