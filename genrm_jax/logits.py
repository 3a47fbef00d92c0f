"""Logits only where needed: per-token log-probabilities without [B, T, V] float32 logits.

Training needs, per position, log p(target) and (for verdict accuracy) the argmax; scoring
needs one position's distribution. Over Gemma's 256K vocabulary the full logits of one
2048-token row take 2 GiB in float32, with as much again for their gradient. ``token_stats``
unembeds ``chunk`` positions at a time inside a ``lax.map`` whose body is rematerialised, so
only one chunk of logits exists at a time, forward or backward; the values are those of the
plain computation (``plain_token_stats``), chunk by chunk.

A loss reads log-probs only where it has a target: given those positions (``where``), a
sequence that takes several chunks unembeds only them, gathered to the front of each device's
rows, and the chunks past the last of them are skipped. A direct verification example has two
targets (the verdict and EOS) among a few hundred positions; only SFT tokens need the whole
vocabulary at every position.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from genrm_jax import model as model_lib
from genrm_jax import sharding
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
                chunk: int = 0, where: jax.Array | None = None) -> TokenStats:
  """Log p(targets) and argmax at every position of final hidden states [B, T, D].

  ``embedding`` is the tied [V, D] input embedding. ``chunk`` positions per piece (0: as many
  as ``ELEMENTS_PER_ROW`` allows); a sequence that fits in one piece is computed plainly.
  ``where`` [B, T]: the positions the caller reads (nonzero; a loss's weights); elsewhere the
  log-prob and argmax may be 0.
  """
  b, t, d = hidden.shape
  chunk = min(t, chunk or default_chunk(cfg))
  n = -(-t // chunk)
  if n == 1:
    return plain_token_stats(cfg, embedding, hidden, targets)
  if where is not None:
    return _gathered_token_stats(cfg, embedding, hidden, targets, chunk, where)
  pad = n * chunk - t
  # [n, B, chunk, ...]: chunk i holds positions i*chunk ... of every row.
  hs = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)
  ys = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)
  piece = jax.checkpoint(lambda hy: plain_token_stats(cfg, embedding, *hy))
  out = jax.lax.map(piece, (hs, ys))
  return TokenStats(*(x.swapaxes(0, 1).reshape(b, n * chunk)[:, :t] for x in out))



def _gathered_token_stats(cfg: ModelConfig, embedding, hidden, targets, chunk: int, where
                          ) -> TokenStats:
  """``token_stats`` of the ``where`` positions only: within each device's block of rows (so
  nothing crosses devices), the positions read go first, in order; pieces of ``chunk``
  positions a row (the plain path's logits per piece) past the last of them are skipped."""
  b, t, d = hidden.shape
  s = sharding.batch_shard_count(b)
  m, size = b // s * t, b // s * chunk  # positions of a device's rows, and of one piece
  n = -(-m // size)
  keep = where.reshape(s, m) != 0
  order = jnp.argsort(~keep, axis=1, stable=True)
  count = jnp.max(jnp.sum(keep, axis=1))

  def gather(x):
    x = x.reshape((s, m) + x.shape[2:])
    x = jnp.take_along_axis(x, order.reshape((s, m) + (1,) * (x.ndim - 2)), axis=1)
    x = jnp.pad(x, ((0, 0), (0, n * size - m)) + ((0, 0),) * (x.ndim - 2))
    x = sharding.constrain(x, ("batch",) + (None,) * (x.ndim - 1))
    return x.reshape((s, n, size) + x.shape[2:]).swapaxes(0, 1)  # [n, s, size, ...]

  def piece(args):
    i, h, y = args
    return jax.lax.cond(
        i * size < count, lambda: plain_token_stats(cfg, embedding, h, y),
        lambda: TokenStats(jnp.zeros(y.shape, jnp.float32), jnp.zeros(y.shape, jnp.int32)))

  out = jax.lax.map(jax.checkpoint(piece), (jnp.arange(n), gather(hidden), gather(targets)))
  inverse = jnp.argsort(order, axis=1)

  def scatter(x):
    x = x.swapaxes(0, 1).reshape(s, n * size)[:, :m]
    x = jnp.take_along_axis(x, inverse, axis=1)
    return jnp.where(keep, x, 0).reshape(b, t)

  return TokenStats(scatter(out.logprob), scatter(out.argmax))
