"""Progress of a long stage (sampling, scoring): a bar with items/s and ETA in a terminal, a line
every ``every_s`` seconds in a log, nothing on processes other than 0."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
  """``update(n)`` after each chunk of work, ``close()`` at the end (or use it as a context)."""

  def __init__(self, label: str, total: int, unit: str = "items", *, every_s: float = 30.0,
               stream: TextIO | None = None, enabled: bool = True):
    self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
    self.stream = stream or sys.stderr
    self.done = 0
    self._t0 = self._last = time.monotonic()
    self._bar = None
    self._enabled = enabled and total > 0
    if self._enabled and self.stream.isatty():
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total, desc=label, unit=f" {unit}", file=self.stream,
                            dynamic_ncols=True, leave=True)

  def update(self, n: int) -> None:
    self.done += n
    if not self._enabled:
      return
    if self._bar is not None:
      self._bar.update(n)
      return
    now = time.monotonic()
    if now - self._last >= self.every_s and self.done < self.total:
      self._last = now
      print(self.line(now), file=self.stream, flush=True)

  def line(self, now: float | None = None) -> str:
    elapsed = (now or time.monotonic()) - self._t0
    rate = self.done / elapsed if elapsed > 0 else 0.0
    eta = f", ETA {_duration((self.total - self.done) / rate)}" if rate and self.done < self.total \
        else ""
    return (f"{self.label}: {self.done}/{self.total} {self.unit} ({self.done / self.total:.0%}), "
            f"{rate:.3g} {self.unit}/s, {_duration(elapsed)} elapsed{eta}")

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    elif self._enabled and time.monotonic() - self._t0 >= self.every_s:
      print(self.line(), file=self.stream, flush=True)  # a long stage ends with its rate
    self._enabled = False

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
