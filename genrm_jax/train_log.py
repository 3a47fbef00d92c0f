"""Progress and metrics for the trainer: a tqdm bar in a terminal, plain lines otherwise, and
TensorBoard event files (written with ``tf.summary.write`` and the "scalars" plugin tag, which
needs no tensorboard package; TensorFlow is imported only when used).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any


def _fmt_eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Reporter:
  """Turns per-step metrics into throughput, MFU, progress and TensorBoard scalars.

  Throughput is timed between consecutive steps, so the first step after (re)start, which
  compiles, is not counted.
  """

  def __init__(self, tb_dir: str | None, start: int, total: int, log_every: int, *,
               tokens_per_step: int, flops_per_step: float, peak_flops: float | None,
               main: bool = True):
    self._total, self._log_every, self._main = total, max(1, log_every), main
    self._tokens, self._flops, self._peak = tokens_per_step, flops_per_step, peak_flops
    self._last_t: float | None = None
    self._window: list[float] = []
    self._tb = None
    self._tb_dir = os.path.join(tb_dir, "tensorboard") if tb_dir and main else None
    self._bar = None
    if main and sys.stderr.isatty():
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

  def _derived(self, m: dict[str, float]) -> dict[str, float]:
    now = time.perf_counter()
    if self._last_t is not None:
      self._window.append(now - self._last_t)
      self._window = self._window[-self._log_every:]
    self._last_t = now
    out = dict(m)
    if self._window:
      dt = sum(self._window) / len(self._window)
      out["step_time_s"] = dt
      out["tokens_per_s"] = self._tokens / dt
      if self._peak:
        out["mfu"] = self._flops / dt / self._peak
    return out

  def step(self, step: int, metrics: dict[str, float]) -> None:
    if not self._main:
      return
    m = self._derived(metrics)
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
      self._bar.update(step - self._bar.n)
    if step % self._log_every and step != self._total:
      return
    if self._bar is None:
      self.line(self._format(step, m))
    self._write_tb(step, m)

  def _format(self, step: int, m: dict[str, float]) -> str:
    parts = [f"step {step}/{self._total}", f"loss {m['loss']:.4f}"]
    if not math.isnan(m["accuracy"]):
      parts.append(f"acc {m['accuracy']:.3f}")
    parts += [f"grad_norm {m['grad_norm']:.3g}", f"lr {m['lr']:.3g}"]
    if "tokens_per_s" in m:
      parts.append(f"tok/s {m['tokens_per_s']:.0f}")
      parts.append(f"eta {_fmt_eta((self._total - step) * m['step_time_s'])}")
    if "mfu" in m:
      parts.append(f"mfu {m['mfu']:.1%}")
    return "  ".join(parts)

  def _write_tb(self, step: int, m: dict[str, Any]) -> None:
    if self._tb_dir is None:
      return
    from genrm_jax import startup  # pylint: disable=g-import-not-at-top
    tf = startup.import_tensorflow()
    from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
    if self._tb is None:
      self._tb = tf.summary.create_file_writer(self._tb_dir)
    meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    with self._tb.as_default():
      for k, v in m.items():
        if not math.isnan(v):
          tf.summary.write(k, tf.constant(v, tf.float32), step=step, metadata=meta)

  def line(self, text: str) -> None:
    if not self._main:
      return
    if self._bar is not None:
      self._bar.write(text)
    else:
      print(text, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.flush()
