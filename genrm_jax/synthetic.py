"""A learnable synthetic data source with the trainer's batch contract, needing no files.

For smoke runs, tests and benchmarks: ``DataConfig.name = "synthetic"``. Each row copies a random
first half into its second half (loss on the copy), so every objective has a signal:
- lm: the copy's tokens; the last one is marked as the "verdict" for the accuracy metric;
- disc: label 1 when the last real token lies in the lower half of the vocabulary;
- dpo: chosen = the exact copy of a first half drawn from the lower half of the vocabulary,
  rejected = a random second half from the upper half (a preference a small model learns fast).
Batch ``i`` is a pure function of (seed, i) and the global batch is drawn whole before the rows
of ``shard_id`` are cut out, so any process count sees the same global batches.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

# Token ids 0 (padding) and 1 (bos) are never drawn as content.
_FIRST_CONTENT_ID = 2


def _copy_rows(rng: np.random.Generator, b: int, t: int, ids: tuple[int, int], copy: bool):
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


def make_batch(index: int, *, batch_size: int, seq_len: int, objective: str, vocab_size: int,
               seed: int = 0) -> dict[str, np.ndarray]:
  """Global batch number ``index``."""
  if vocab_size <= _FIRST_CONTENT_ID + 1 or seq_len < 4:
    raise ValueError(f"synthetic data needs vocab_size > 3 and seq_len >= 4, got "
                     f"{vocab_size}, {seq_len}")
  rng = np.random.default_rng([seed, index])
  b, t = batch_size, seq_len
  mid = (_FIRST_CONTENT_ID + vocab_size) // 2
  ids = (_FIRST_CONTENT_ID, vocab_size)
  if objective == "lm":
    out = _copy_rows(rng, b, t, ids, copy=True)
    out["verdict_weights"] = np.zeros((b, t), np.float32)
    out["verdict_weights"][:, -1] = 1.0
    return out
  if objective == "disc":
    rows = _copy_rows(rng, b, t, ids, copy=True)
    lengths = rng.integers(t // 2 + 1, t + 1, size=b)
    real = np.arange(t)[None, :] < lengths[:, None]
    return {"inputs": np.where(real, rows["inputs"], 0).astype(np.int32),
            "positions": rows["positions"], "segment_ids": real.astype(np.int32),
            "score_index": (lengths - 1).astype(np.int32),
            "labels": (rows["inputs"][np.arange(b), lengths - 1] < mid).astype(np.float32)}
  if objective == "dpo":
    chosen = _copy_rows(rng, b, t, (_FIRST_CONTENT_ID, mid), copy=True)
    rejected = _copy_rows(rng, b, t, (mid, vocab_size), copy=False)
    rejected["inputs"][:, :t // 2 + 1] = chosen["inputs"][:, :t // 2 + 1]
    rejected["targets"][:, :t // 2] = chosen["targets"][:, :t // 2]
    out = {f"chosen_{k}": v for k, v in chosen.items()}
    out.update({f"rejected_{k}": v for k, v in rejected.items()})
    return out
  raise ValueError(f"synthetic data: unknown objective {objective!r}")


def get_batches(name: str, split: str = "train", *, batch_size: int, seq_len: int,
                objective: str = "lm", seed: int = 0, shard_id: int = 0, num_shards: int = 1,
                start_batch: int = 0, repeat: bool = True, vocab_size: int
                ) -> Iterator[dict[str, np.ndarray]]:
  """Same contract as ``genrm_jax.data.get_batches`` (plus the vocabulary size).

  ``batch_size`` is the GLOBAL batch; this shard yields ``batch_size // num_shards`` rows. The
  split only changes the seed.
  """
  del name
  if batch_size % num_shards:
    raise ValueError(f"batch_size {batch_size} is not divisible by num_shards {num_shards}")
  local = batch_size // num_shards
  seed = seed * 2 + (split != "train")
  index = start_batch
  while repeat or index == start_batch:
    full = make_batch(index, batch_size=batch_size, seq_len=seq_len, objective=objective,
                      vocab_size=vocab_size, seed=seed)
    yield {k: v[shard_id * local:(shard_id + 1) * local] for k, v in full.items()}
    index += 1
