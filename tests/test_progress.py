"""genrm_jax.progress: periodic lines in a log, a bar with rate and ETA in a terminal."""

from __future__ import annotations

import io
import re

from genrm_jax import progress


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_log_lines_count_rate_and_eta():
  out = io.StringIO()
  with progress.Progress("scoring", 10, "items", every_s=0, stream=out) as p:
    for _ in range(4):
      p.update(2)
  lines = out.getvalue().splitlines()
  # One line per update while unfinished (every_s=0), then the closing line with the final rate.
  assert len(lines) == 5, lines
  assert re.match(r"scoring: 2/10 items \(20%\), [\d.e+]+ items/s, \d+s elapsed, ETA \d+", lines[0])
  assert lines[-1].startswith("scoring: 8/10 items (80%)")


def test_quiet_when_disabled_or_fast():
  out = io.StringIO()
  with progress.Progress("sampling", 3, every_s=60, stream=out) as p:
    p.update(3)
  with progress.Progress("sampling", 3, every_s=0, stream=out, enabled=False) as p:
    p.update(3)
  assert out.getvalue() == ""


def test_terminal_gets_a_bar():
  out = _Terminal()
  with progress.Progress("sampling", 4, "problems", stream=out) as p:
    p.update(4)
  text = out.getvalue()
  assert "sampling" in text and "4/4" in text and "problems/s" in text
