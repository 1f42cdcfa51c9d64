"""Progress lines with an ETA, printed to stderr (one line per update, so logs stay readable)."""

from __future__ import annotations

import sys
import time


class ProgressPrinter:
    """Prints ``[stage] what done/total (pct) elapsed, ETA`` at most every ``every`` seconds and at the end."""

    def __init__(self, stage: str, what: str, every: float = 5.0, quiet: bool = False) -> None:
        self.stage = stage
        self.what = what
        self.every = every
        self.quiet = quiet
        self.start = time.monotonic()
        self.last = 0.0
        self.first_done: int | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.first_done is None:
            self.first_done = done  # items already cached do not count towards the rate
            self.start = now
        if self.quiet or (now - self.last < self.every and done < total):
            return
        self.last = now
        elapsed = now - self.start
        fresh = done - self.first_done
        eta = f"ETA {elapsed / fresh * (total - done):.0f}s" if fresh > 0 and done < total else ""
        cached = f", {self.first_done} cached" if self.first_done else ""
        pct = 100 * done / total if total else 100
        print(f"[{self.stage}] {self.what} {done}/{total} ({pct:.0f}%{cached}) {elapsed:.0f}s {eta}".rstrip(),
              file=sys.stderr, flush=True)
