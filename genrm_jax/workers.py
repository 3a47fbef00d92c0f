"""Runs independent jobs at once, each in its own (spawned) process, with their output echoed.

The pipeline trains its verifiers this way on a CPU host: XLA's CPU runtime leaves cores idle
between the many small ops of a tiny model's step, which another process's step fills (see
``PipelineConfig.verifier_processes``). A job is a picklable function and its arguments; its
stdout and stderr (the C++ libraries' lines too) go to its own log file, whose lines are echoed
here as they come, each after the job's name. SIGTERM or Ctrl-C here is passed on to the jobs
(a trainer then saves a checkpoint and stops), and what they wrote is kept.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

# Seconds between looks at the jobs' logs and exit status.
_POLL = 0.5


@dataclasses.dataclass(frozen=True)
class Job:
  name: str
  fn: Callable[..., int | None]  # module-level (a spawned process imports it); its status
  args: tuple[Any, ...]
  log: str  # the file its output goes to (appended: a rerun keeps the earlier attempt's lines)


@dataclasses.dataclass(frozen=True)
class Finished:
  status: int  # the process's exit status (negative: killed by that signal)
  seconds: float


def _child(fn: Callable[..., int | None], args: tuple[Any, ...], log: str) -> None:
  # Ctrl-C reaches the whole process group: the parent turns it into SIGTERM, which a trainer
  # answers with a checkpoint; SIGINT here would drop the steps since the last one.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  os.close(fd)
  sys.stdout.reconfigure(line_buffering=True)
  sys.exit(fn(*args) or 0)


class _Echo:
  """New complete lines of each log, printed after the job's name."""

  def __init__(self, jobs: list[Job]):
    self.width = max(len(j.name) for j in jobs)
    self.offset = {j.log: os.path.getsize(j.log) if os.path.exists(j.log) else 0 for j in jobs}
    self.partial = {j.log: b"" for j in jobs}

  def __call__(self, job: Job, final: bool = False) -> None:
    if not os.path.exists(job.log):
      return
    with open(job.log, "rb") as f:
      f.seek(self.offset[job.log])
      data = self.partial[job.log] + f.read()
      self.offset[job.log] = f.tell()
    lines = data.split(b"\n")
    self.partial[job.log] = b"" if final else lines.pop()
    for line in lines:
      if line or final:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text:
          print(f"[{job.name:<{self.width}}] {text}", flush=True)


def run(jobs: list[Job], at_once: int) -> dict[str, Finished]:
  """Runs ``jobs`` with at most ``at_once`` alive, starting them in order; returns each one's
  exit status and wall time once all have ended (a failed job does not stop the others)."""
  if at_once < 1:
    raise ValueError(f"workers.run: at_once={at_once}; must be >= 1")
  ctx = multiprocessing.get_context("spawn")
  waiting = list(jobs)
  running: dict[str, tuple[Job, Any, float]] = {}
  done: dict[str, Finished] = {}
  echo = _Echo(jobs)
  stopping = {"signal": None}

  def forward(sig, _frame):
    stopping["signal"] = sig
    for _, proc, _ in running.values():
      if proc.pid is not None and proc.exitcode is None:
        os.kill(proc.pid, signal.SIGTERM)

  in_main = threading.current_thread() is threading.main_thread()
  previous = {}
  if in_main:
    for sig in (signal.SIGTERM, signal.SIGINT):
      previous[sig] = signal.signal(sig, forward)
  try:
    while waiting or running:
      while waiting and len(running) < at_once and stopping["signal"] is None:
        job = waiting.pop(0)
        os.makedirs(os.path.dirname(os.path.abspath(job.log)), exist_ok=True)
        proc = ctx.Process(target=_child, args=(job.fn, job.args, job.log), name=job.name)
        proc.start()
        running[job.name] = (job, proc, time.time())
      if stopping["signal"] is not None and not running:
        break
      time.sleep(_POLL)
      for name, (job, proc, t0) in list(running.items()):
        echo(job)
        if proc.exitcode is not None:
          proc.join()
          echo(job, final=True)
          done[name] = Finished(proc.exitcode, time.time() - t0)
          del running[name]
  finally:
    for _, proc, _ in running.values():  # an error here: leave no job running unseen
      proc.terminate()
      proc.join()
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if stopping["signal"] is not None:
    for job in waiting:
      print(f"[{job.name}] not started: stopped by signal {stopping['signal']}", flush=True)
  return done
