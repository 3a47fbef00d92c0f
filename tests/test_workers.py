"""Jobs in processes of their own: output echoed by name, failures kept apart, signals passed on."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from genrm_jax import workers


def _talk(words: list[str], status: int) -> int:
  for w in words:
    print(w)
  print("to stderr", file=sys.stderr)
  os.write(2, b"from C\n")  # what the C++ libraries write goes to the log too
  return status


def _wait_for_term(ready: str, stopped: str) -> int:
  signal.signal(signal.SIGTERM, lambda *_: open(stopped, "w").close())
  open(ready, "w").close()
  deadline = time.time() + 60
  while not os.path.exists(stopped) and time.time() < deadline:
    time.sleep(0.05)
  return 0 if os.path.exists(stopped) else 3


def test_jobs_run_and_each_keeps_its_log_and_status(tmp_path, capsys):
  jobs = [workers.Job("one", _talk, (["a", "b"], 0), str(tmp_path / "one" / "log")),
          workers.Job("second", _talk, (["c"], 4), str(tmp_path / "second.log")),
          workers.Job("three", _talk, (["d"], 0), str(tmp_path / "three.log"))]
  ended = workers.run(jobs, at_once=2)
  assert {n: f.status for n, f in ended.items()} == {"one": 0, "second": 4, "three": 0}
  assert all(f.seconds > 0 for f in ended.values())
  out = capsys.readouterr().out.splitlines()
  # Each line after its job's name, padded to the longest name; a failed job stops no other.
  assert "[one   ] a" in out and "[one   ] b" in out and "[second] c" in out
  assert "[three ] d" in out and "[three ] from C" in out and "[one   ] to stderr" in out
  assert (tmp_path / "one" / "log").read_text().splitlines()[:2] == ["a", "b"]
  # A rerun appends to the log and echoes only its own lines.
  workers.run(jobs[:1], at_once=1)
  assert (tmp_path / "one" / "log").read_text().count("a\n") == 2
  assert capsys.readouterr().out.count("[one] a") == 1
  with pytest.raises(ValueError, match="at_once=0"):
    workers.run(jobs, at_once=0)


def test_sigterm_is_passed_to_running_jobs_and_later_ones_do_not_start(tmp_path, capsys):
  ready, stopped = str(tmp_path / "ready"), str(tmp_path / "stopped")

  def signal_when_ready():
    deadline = time.time() + 60
    while not os.path.exists(ready) and time.time() < deadline:
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=signal_when_ready, daemon=True).start()
  jobs = [workers.Job("waits", _wait_for_term, (ready, stopped), str(tmp_path / "a.log")),
          workers.Job("later", _talk, (["never"], 0), str(tmp_path / "b.log"))]
  ended = workers.run(jobs, at_once=1)
  assert os.path.exists(stopped)
  assert ended == {"waits": ended["waits"]} and ended["waits"].status == 0
  assert "[later] not started: stopped by signal 15" in capsys.readouterr().out
  assert not os.path.exists(tmp_path / "b.log")
  # The handler in place before the run is back.
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
