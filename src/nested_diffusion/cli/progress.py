"""Progress output that stays readable where it goes: a live tqdm bar (with the per-update lines above it) on a
terminal; on a file or pipe no bar at all — only the lines, each flushed, so a log reads top to bottom."""
from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, quiet: bool = False, unit: str = "NFE", stream=None):
        self.quiet, self.stream = quiet, stream or sys.stderr
        self.bar = None
        if not quiet and self.stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit=unit, leave=False, dynamic_ncols=True, file=self.stream)

    def line(self, text: str) -> None:
        """A line for the reader (stdout); above the bar when there is one."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def update(self, done: int, text: str | None = None) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        if text is not None:
            self.line(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
