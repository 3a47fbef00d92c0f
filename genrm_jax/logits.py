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

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from genrm_jax import model as model_lib
from genrm_jax import sharding
from genrm_jax.config import ModelConfig

# Logit elements per batch row in one chunk when the chunk is not given: 64 MiB of float32,
# 64 positions of a 256K vocabulary; a vocabulary of a few thousand is never chunked.
ELEMENTS_PER_ROW = 2 ** 24
# With ``where``, a piece holds this many times fewer positions than a plain chunk (16 of
# Gemma 3's 262K vocabulary): a batch of verification records reads a few positions a row
# (docs/performance.md, "Logits only where the loss reads them").
GATHERED_PIECES = 4


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
  given = chunk
  chunk = min(t, chunk or default_chunk(cfg))
  n = -(-t // chunk)
  if n == 1:
    return plain_token_stats(cfg, embedding, hidden, targets)
  if where is not None:
    # Each piece streams the whole embedding, so a piece of the few positions most batches of
    # verification records read costs little more than a piece of many.
    piece = given or max(1, default_chunk(cfg) // GATHERED_PIECES)
    return _gathered_token_stats(cfg, embedding, hidden, targets, piece, where)
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
  nothing crosses devices), the positions read go first, in order, and ``_read_pieces`` unembeds
  pieces of ``chunk`` positions up to the last of them."""
  b, t, d = hidden.shape
  s = sharding.batch_shard_count(b)
  m = b // s * t  # positions of a device's rows
  n = -(-m // chunk)
  keep = where.reshape(s, m) != 0
  order = jnp.argsort(~keep, axis=1, stable=True)
  pieces = -(-jnp.max(jnp.sum(keep, axis=1)) // chunk)

  def gather(x):
    x = x.reshape((s, m) + x.shape[2:])
    x = jnp.take_along_axis(x, order.reshape((s, m) + (1,) * (x.ndim - 2)), axis=1)
    x = jnp.pad(x, ((0, 0), (0, n * chunk - m)) + ((0, 0),) * (x.ndim - 2))
    return sharding.constrain(x, ("batch",) + (None,) * (x.ndim - 1))

  logprob, argmax = _read_pieces(cfg, chunk, gather(hidden), gather(targets), embedding, pieces)
  inverse = jnp.argsort(order, axis=1)

  def scatter(x):
    x = jnp.take_along_axis(x[:, :m], inverse, axis=1)
    return jnp.where(keep, x, 0).reshape(b, t)

  return TokenStats(scatter(logprob), scatter(argmax))


def _piece_logits(cfg: ModelConfig, embedding, h):
  """(capped, raw) float32 logits [S, C, V] of hidden states h [S, C, D]."""
  raw = jnp.einsum("SCD,VD->SCV", h.astype(embedding.dtype), embedding,
                   preferred_element_type=jnp.float32)
  return model_lib.soft_cap(raw, cfg.final_logit_soft_cap), raw


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _read_pieces(cfg: ModelConfig, chunk: int, hs, ys, embedding, pieces):
  """(log p(ys), argmax) [S, M] of the first ``pieces`` pieces of ``chunk`` positions of hidden
  states ``hs`` [S, M, D] (0 past them): one loop of as many pieces as the batch needs, forward
  and backward (a custom gradient, so the loop's length may depend on the data); each piece's
  logits are recomputed in the backward pass instead of kept."""
  return _read_fwd_values(cfg, chunk, hs, ys, embedding, pieces)[:2]


def _read_fwd_values(cfg, chunk, hs, ys, embedding, pieces):
  s, m, _ = hs.shape

  def body(i, carry):
    lp, am, lse = carry
    h = jax.lax.dynamic_slice_in_dim(hs, i * chunk, chunk, axis=1)
    y = jax.lax.dynamic_slice_in_dim(ys, i * chunk, chunk, axis=1)
    logits, _ = _piece_logits(cfg, embedding, h)  # [S, C, V]
    z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
    put = lambda a, v: jax.lax.dynamic_update_slice_in_dim(a, v, i * chunk, axis=1)  # noqa: E731
    return (put(lp, picked - z), put(am, jnp.argmax(logits, axis=-1).astype(jnp.int32)),
            put(lse, z))

  zeros = jnp.zeros((s, m), jnp.float32)
  return jax.lax.fori_loop(0, pieces, body, (zeros, jnp.zeros((s, m), jnp.int32), zeros))


def _read_fwd(cfg, chunk, hs, ys, embedding, pieces):
  lp, am, lse = _read_fwd_values(cfg, chunk, hs.value, ys.value, embedding.value, pieces.value)
  # A frozen embedding (LoRA) needs no gradient: its dot is left out of the backward pass.
  need_de = () if embedding.perturbed else None
  return (lp, am), (hs.value, ys.value, embedding.value, pieces.value, lse, need_de)


def _read_bwd(cfg, chunk, res, g):
  hs, ys, embedding, pieces, lse, need_de = res
  g_lp = g[0]
  if isinstance(g_lp, jax.custom_derivatives.SymbolicZero):
    return None, None, None, None

  def body(i, carry):
    dh, de = carry
    h = jax.lax.dynamic_slice_in_dim(hs, i * chunk, chunk, axis=1)
    y = jax.lax.dynamic_slice_in_dim(ys, i * chunk, chunk, axis=1)
    gl = jax.lax.dynamic_slice_in_dim(g_lp, i * chunk, chunk, axis=1)
    z = jax.lax.dynamic_slice_in_dim(lse, i * chunk, chunk, axis=1)
    logits, raw = _piece_logits(cfg, embedding, h)
    # d log_softmax(logits)[y] = onehot(y) - softmax(logits), scaled by the cotangent.
    onehot = jnp.arange(logits.shape[-1]) == y[..., None]
    dlogits = gl[..., None] * (onehot.astype(jnp.float32) - jnp.exp(logits - z[..., None]))
    cap = cfg.final_logit_soft_cap
    if cap is not None:
      dlogits = dlogits * (1.0 - jnp.square(jnp.tanh(raw / cap)))
    dlogits = dlogits.astype(embedding.dtype)
    # The embedding as the dot's left operand: XLA's CPU dot of [C, V] x [V, D] (a long V) ran
    # at half the speed of this order.
    piece = jnp.einsum("VD,SCV->SDC", embedding, dlogits,
                       preferred_element_type=jnp.float32).swapaxes(1, 2)
    dh = jax.lax.dynamic_update_slice_in_dim(dh, piece.astype(dh.dtype), i * chunk, axis=1)
    if de is not None:
      de = de + jnp.einsum("SCV,SCD->VD", dlogits, h.astype(embedding.dtype),
                           preferred_element_type=jnp.float32)
    return dh, de

  de0 = None if need_de is None else jnp.zeros(embedding.shape, jnp.float32)
  dh, de = jax.lax.fori_loop(0, pieces, body, (jnp.zeros_like(hs), de0))
  return dh, None, None if de is None else de.astype(embedding.dtype), None


_read_pieces.defvjp(_read_fwd, _read_bwd, symbolic_zeros=True)
