"""Fixed-length batch rows: what every objective's converter and synthetic batch share.

A converter (one class per objective) turns tokenized examples into rows of ``seq_len``
positions. It is decoder-only and causal everywhere (Gemma runs causally, so the prefix is NOT
bidirectional as in seqio's PrefixLMFeatureConverter): a causal-LM segment is ``[BOS] prompt
target [EOS]`` shifted by one, with loss only where the next token is a target token, and its
positions restart at 0. Nothing is truncated silently: what does not fit is counted in ``Stats``
and logged once.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import logging
from typing import Any

import numpy as np

Row = dict[str, np.ndarray]
# The fields of a causal-LM row (``lm_row``) and their (batch ndim, dtype).
LM_FIELDS = {"inputs": (2, np.int32), "targets": (2, np.int32), "loss_weights": (2, np.float32),
             "positions": (2, np.int32), "segment_ids": (2, np.int32)}
# With repeat=True a task whose examples are all too long would otherwise loop forever.
_MAX_DROPPED_BEFORE_ANY = 10_000
# Token ids 0 (padding) and 1 (bos) are never drawn as synthetic content.
FIRST_CONTENT_ID = 2


@dataclasses.dataclass
class Stats:
  """What the pipeline did to the examples so far (this host only)."""
  examples: int = 0      # examples placed in rows
  tokens: int = 0        # real tokens placed in rows
  rows: int = 0
  truncated: int = 0     # examples cut to the row length (never ones with a verdict)
  dropped: int = 0       # examples longer than a row that could not be truncated
  batches: int = 0
  seq_len: int = 0

  def summary(self) -> str:
    # Tokens are counted when placed, rows when closed: mid-stream the open rows are not in it.
    fill = (f"{self.tokens / (self.rows * self.seq_len):.1%} full" if self.rows
            else "no row closed yet")
    return (f"{self.examples} examples in {self.rows} rows ({fill}), "
            f"{self.truncated} truncated, {self.dropped} dropped as too long")


class Packer:
  """First-fit packing into a small pool of open rows; completed rows come out in FIFO order."""

  def __init__(self, seq_len: int, pack: bool, max_open: int = 8):
    self.seq_len, self.pack, self.max_open = seq_len, pack, max_open if pack else 1
    self.open: collections.deque[list[tuple[np.ndarray, ...]]] = collections.deque()
    self.used: collections.deque[int] = collections.deque()

  def add(self, seg: tuple[np.ndarray, ...]) -> list[list[tuple[np.ndarray, ...]]]:
    n = len(seg[0])
    if self.pack:
      for i, used in enumerate(self.used):
        if used + n <= self.seq_len:
          self.open[i].append(seg)
          self.used[i] += n
          return []
    self.open.append([seg])
    self.used.append(n)
    out = []
    while len(self.open) > self.max_open or (not self.pack and self.open):
      out.append(self.open.popleft())
      self.used.popleft()
    return out

  def flush(self) -> list[list[tuple[np.ndarray, ...]]]:
    out = list(self.open)
    self.open.clear()
    self.used.clear()
    return out


def packed_row(segments, seq_len: int, fields: dict[str, type]) -> Row:
  """One zero-padded row of segments, each a tuple of equal-length arrays in ``fields``' order;
  ``positions`` restart at 0 and ``segment_ids`` count from 1 in each segment."""
  row = {k: np.zeros(seq_len, dtype) for k, dtype in fields.items()}
  row.update({k: np.zeros(seq_len, np.int32) for k in ("positions", "segment_ids")})
  start = 0
  for sid, arrays in enumerate(segments, start=1):
    sl = slice(start, start + len(arrays[0]))
    for k, a in zip(fields, arrays):
      row[k][sl] = a
    row["positions"][sl] = np.arange(len(arrays[0]))
    row["segment_ids"][sl] = sid
    start = sl.stop
  return row


_LM_SEGMENT = {"inputs": np.int32, "targets": np.int32, "loss_weights": np.float32,
               "verdict_weights": np.float32}


def lm_row(segments, seq_len: int) -> Row:
  """One row of (inputs, targets, loss_weights, verdict_weights) segments, zero-padded."""
  return packed_row(segments, seq_len, _LM_SEGMENT)


class Converter(abc.ABC):
  """Turns tokenized examples into fixed-length rows, counting what does not fit."""

  def __init__(self, seq_len: int, vocab: Any):
    self.seq_len, self.bos = seq_len, vocab.bos_id
    self.stats = Stats(seq_len=seq_len)
    self._warned = False

  @abc.abstractmethod
  def add(self, ex: dict[str, np.ndarray]) -> list[Row]:
    """Rows completed by adding ``ex`` (possibly none)."""

  def flush(self) -> list[Row]:
    """The rows still open at the end of the examples."""
    return []

  @abc.abstractmethod
  def empty_row(self) -> Row:
    """A padding row (segment_ids all 0, no loss) that fills the last batch of a finite pass."""

  def too_long(self, truncated: bool) -> None:
    if truncated:
      self.stats.truncated += 1
    else:
      self.stats.dropped += 1
      if self.stats.dropped >= _MAX_DROPPED_BEFORE_ANY and not self.stats.examples:
        raise ValueError(f"the first {self.stats.dropped} examples are all longer than "
                         f"seq_len={self.seq_len}: raise seq_len")
    if not self._warned:
      self._warned = True
      logging.warning("input pipeline: an example is longer than seq_len=%d (%s); so far: %s",
                      self.seq_len, "truncated" if truncated else "dropped", self.stats.summary())

  def shifted(self, prompt: np.ndarray, target: np.ndarray):
    """(inputs, targets, loss_weights) of [BOS] prompt target."""
    seq = np.concatenate([[self.bos], prompt, target]).astype(np.int32)
    inp, tgt = seq[:-1], seq[1:]
    lw = (np.arange(len(tgt)) >= len(prompt)).astype(np.float32)
    return inp, tgt, lw


def copy_rows(rng: np.random.Generator, b: int, t: int, ids: tuple[int, int], copy: bool) -> Row:
  """Synthetic causal-LM rows [b, t]: a random first half, then its copy (``copy``) or another
  random half, with the loss on the second half."""
  half = t // 2
  first = rng.integers(*ids, size=(b, half))
  second = first if copy else rng.integers(*ids, size=(b, t - half))
  seq = np.concatenate([first, second[:, :t - half]], axis=1).astype(np.int32)
  inputs = np.concatenate([np.ones((b, 1), np.int32), seq[:, :-1]], axis=1)
  weights = np.zeros((b, t), np.float32)
  weights[:, half:] = 1.0
  return {"inputs": inputs, "targets": seq, "loss_weights": weights,
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
          "segment_ids": np.ones((b, t), np.int32)}
