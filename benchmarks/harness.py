"""What every benchmark here shares: the machine's load around a run, and alternating timing.

Timings on a shared machine say little on their own; each script prints the load average
before and after its measurements (with a warning when it exceeds the cores this process may
use), alternates the sides it compares so that changing load hits them alike, and reports the
median of repeats.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, NamedTuple, Sequence

import numpy as np


def cores() -> int:
  return len(os.sched_getaffinity(0))


def load_line(when: str) -> str:
  one, five, fifteen = os.getloadavg()
  line = (f"load average {when}: {one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min) on "
          f"{cores()} cores")
  if max(one, five) > cores():
    line += " -- WARNING: above the core count, other work shares the machine"
  return line


@contextlib.contextmanager
def reported_load():
  """Prints the load average before and after the block."""
  print(load_line("before"), flush=True)
  try:
    yield
  finally:
    print(load_line("after"), flush=True)


class Timing(NamedTuple):
  wall: float  # median seconds per call
  cpu: float  # median process CPU seconds per call (all threads)
  walls: tuple[float, ...]  # every repeat, in order


def time_interleaved(fns: Sequence[Callable[[], object]], reps: int, warmup: int = 1
                     ) -> list[Timing]:
  """Median wall and CPU seconds per call of each fn, calling the fns in turn ``reps`` times.

  Each fn first runs ``warmup`` times untimed (compilation, caches).
  """
  for fn in fns:
    for _ in range(warmup):
      fn()
  samples: list[list[tuple[float, float]]] = [[] for _ in fns]
  for _ in range(reps):
    for fn, ts in zip(fns, samples):
      w, c = time.perf_counter(), time.process_time()
      fn()
      ts.append((time.perf_counter() - w, time.process_time() - c))
  out = []
  for ts in samples:
    a = np.asarray(ts)
    out.append(Timing(float(np.median(a[:, 0])), float(np.median(a[:, 1])),
                      tuple(float(x) for x in a[:, 0])))
  return out
