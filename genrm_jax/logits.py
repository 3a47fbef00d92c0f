"""Logits only where needed: per-token log-probabilities without [B, T, V] float32 logits.

Training needs, per position, log p(target) and (for verdict accuracy) the argmax; scoring
needs one position's distribution. Over Gemma's 256K vocabulary the full logits of one
2048-token row take 2 GiB in float32, with as much again for their gradient. ``token_stats``
unembeds ``chunk`` positions at a time inside a ``lax.map`` whose body is rematerialised, so
only one chunk of logits exists at a time, forward or backward; the values are those of the
plain computation (``plain_token_stats``), chunk by chunk.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from genrm_jax import model as model_lib
from genrm_jax.config import ModelConfig

# Logit elements per batch row in one chunk when the chunk is not given: 64 MiB of float32,
# 64 positions of a 256K vocabulary; a vocabulary of a few thousand is never chunked.
ELEMENTS_PER_ROW = 2 ** 24


class TokenStats(NamedTuple):
  logprob: jax.Array  # [B, T] float32: log p(targets[b, t]) under the model
  argmax: jax.Array  # [B, T] int32: the greedy prediction at each position


def default_chunk(cfg: ModelConfig) -> int:
  return max(1, ELEMENTS_PER_ROW // cfg.vocab_size)


def plain_token_stats(cfg: ModelConfig, embedding, hidden, targets) -> TokenStats:
  """``token_stats`` in one piece: the [B, T, V] logits exist at once."""
  logits = model_lib.unembed(cfg, embedding, hidden)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return TokenStats(picked - lse, jnp.argmax(logits, axis=-1).astype(jnp.int32))


def token_stats(cfg: ModelConfig, embedding: jax.Array, hidden: jax.Array, targets: jax.Array,
                chunk: int = 0) -> TokenStats:
  """Log p(targets) and argmax at every position of final hidden states [B, T, D].

  ``embedding`` is the tied [V, D] input embedding. ``chunk`` positions per piece (0: as many
  as ``ELEMENTS_PER_ROW`` allows); a sequence that fits in one piece is computed plainly.
  """
  b, t, d = hidden.shape
  chunk = min(t, chunk or default_chunk(cfg))
  n = -(-t // chunk)
  if n == 1:
    return plain_token_stats(cfg, embedding, hidden, targets)
  pad = n * chunk - t
  # [n, B, chunk, ...]: chunk i holds positions i*chunk ... of every row.
  hs = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)
  ys = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)
  piece = jax.checkpoint(lambda hy: plain_token_stats(cfg, embedding, *hy))
  out = jax.lax.map(piece, (hs, ys))
  return TokenStats(*(x.swapaxes(0, 1).reshape(b, n * chunk)[:, :t] for x in out))

