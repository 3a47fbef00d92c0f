"""A learnable synthetic data source with the trainer's batch contract, needing no files.

For smoke runs, tests and benchmarks: ``DataConfig.name = "synthetic"``. Each row copies a random
first half into its second half (loss on the copy), which every objective turns into a signal of
its own (``Objective.synthetic_batch``). Batch ``i`` is a pure function of (seed, i) and the
global batch is drawn whole before the rows of ``shard_id`` are cut out, so any process count
sees the same global batches.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from genrm_jax import objectives
from genrm_jax.objectives import rows


def make_batch(index: int, *, batch_size: int, seq_len: int, objective: str, vocab_size: int,
               seed: int = 0) -> dict[str, np.ndarray]:
  """Global batch number ``index`` of the objective named ``objective``."""
  if vocab_size <= rows.FIRST_CONTENT_ID + 1 or seq_len < 4:
    raise ValueError(f"synthetic data needs vocab_size > 3 and seq_len >= 4, got "
                     f"{vocab_size}, {seq_len}")
  return objectives.get(objective).synthetic_batch(np.random.default_rng([seed, index]),
                                                   batch_size, seq_len, vocab_size)


def get_batches(name: str, split: str = "train", *, batch_size: int, seq_len: int,
                objective: str, seed: int = 0, shard_id: int = 0, num_shards: int = 1,
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
