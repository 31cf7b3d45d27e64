"""Progress for runs whose stderr is not a terminal (a log file, a CI job, a pipe): a bar drawn
with carriage returns would be noise there, and silence for minutes looks like a hang. A
background thread writes one line every `every` seconds until the work is done."""
from __future__ import annotations

import threading
import time

PROGRESS_EVERY = 30.0


class ProgressLines:
    """The part of tqdm's interface the fitting paths use: update, set_postfix, close."""

    def __init__(self, total: int, desc: str, stream, every: float = PROGRESS_EVERY):
        self.total, self.desc, self.stream, self.every = total, desc, stream, every
        self.done, self.postfix = 0, ""
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nimm-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            seconds = time.monotonic() - self._t0
            extra = f", {self.postfix}" if self.postfix else ""
            try:
                print(f"nimm: {self.desc}: {self.done} of {self.total} done, {seconds:.0f} s{extra}",
                      file=self.stream, flush=True)
            except (OSError, ValueError):  # the stream went away: stop reporting, not the work
                return

    def update(self, n: int = 1) -> None:
        self.done += n

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        self._stop.set()
