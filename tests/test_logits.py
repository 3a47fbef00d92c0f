"""genrm_jax.logits: chunked per-token statistics equal the plain ones, values and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrm_jax import config, logits, objectives, optim, sharding, step


def _inputs(cfg, b, t, seed):
  rng = np.random.default_rng(seed)
  emb = jnp.asarray(rng.normal(0, 1.0, (cfg.vocab_size, cfg.embed_dim)), jnp.float32)
  hidden = jnp.asarray(rng.normal(0, 1.0, (b, t, cfg.embed_dim)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, t)), jnp.int32)
  weights = jnp.asarray(rng.random((b, t)), jnp.float32)
  return emb, hidden, targets, weights


@pytest.mark.parametrize("cap", [None, 5.0])
def test_plain_stats_match_numpy(cap):
  cfg = config.tiny(vocab_size=37, embed_dim=8, final_logit_soft_cap=cap)
  emb, hidden, targets, _ = _inputs(cfg, 2, 5, 0)
  x = np.asarray(hidden, np.float64) @ np.asarray(emb, np.float64).T
  if cap:
    x = np.tanh(x / cap) * cap
  logp = x - x.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  got = logits.plain_token_stats(cfg, emb, hidden, targets)
  np.testing.assert_allclose(got.logprob, np.take_along_axis(logp, np.asarray(targets)[..., None],
                                                             -1)[..., 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got.argmax, x.argmax(-1))


@pytest.mark.parametrize("chunk", [1, 3, 7, 8])
def test_chunked_equals_plain_in_value_and_gradient(chunk):
  # T = 7 is not a multiple of 3 or 8: the padded tail must not change anything.
  cfg = config.tiny(vocab_size=53, embed_dim=8, final_logit_soft_cap=30.0)
  emb, hidden, targets, weights = _inputs(cfg, 3, 7, 1)

  def loss(fn):
    def f(e, h):
      s = fn(e, h)
      return jnp.sum(s.logprob * weights), s.argmax
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

  (want, want_argmax), want_grads = loss(
      lambda e, h: logits.plain_token_stats(cfg, e, h, targets))(emb, hidden)
  (got, got_argmax), got_grads = loss(
      lambda e, h: logits.token_stats(cfg, e, h, targets, chunk))(emb, hidden)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_array_equal(got_argmax, want_argmax)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_default_chunk_bounds_the_logits_of_a_row():
  big = config.tiny(vocab_size=262_144)
  assert logits.default_chunk(big) == 64
  assert logits.default_chunk(config.tiny(vocab_size=2 ** 25)) == 1
  assert logits.default_chunk(config.bench_10m()) >= 8192  # a small vocabulary: one piece


def test_train_step_peak_memory_falls_by_the_logits_share():
  """XLA's compiled memory of a train step at Gemma 3's 262K vocabulary (compile only)."""
  cfg = config.tiny(vocab_size=262_144, num_layers=1, embed_dim=16, hidden_dim=32, num_heads=2,
                    head_dim=8)
  b, t = 1, 256  # 4 default chunks of 64 positions
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  peak = {chunk: step.compiled_memory(step.make_setup(
      cfg, objectives.ObjectiveConfig("lm", logits_chunk=chunk), optim.OptimConfig(), mesh), b, t)[1]
          for chunk in (t, 0)}
  full = b * t * cfg.vocab_size * 4  # the [B, T, V] float32 logits
  # The whole-sequence step holds the logits and their gradient; the chunked one a quarter.
  assert peak[t] - peak[0] >= full


@pytest.mark.parametrize("cap", [None, 30.0])
@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_only_the_positions_read_are_unembedded_alike(cap, chunk):
  """With ``where``, log-probs and argmaxes at those positions, and the gradients of a loss over
  them (hidden states and embedding), equal the plain computation's; a row without any is fine."""
  cfg = config.tiny(vocab_size=53, embed_dim=8, final_logit_soft_cap=cap)
  emb, hidden, targets, weights = _inputs(cfg, 3, 11, 2)
  rng = np.random.default_rng(3)
  weights = jnp.asarray((rng.random((3, 11)) < 0.3) * np.asarray(weights)).at[1].set(0.0)
  assert 0 < int(jnp.sum(weights > 0)) < 33 // 2

  def loss(fn):
    def f(e, h):
      s = fn(e, h)
      return jnp.sum(s.logprob * weights), jnp.where(weights > 0, s.argmax, -1)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

  (want, want_argmax), want_grads = loss(
      lambda e, h: logits.plain_token_stats(cfg, e, h, targets))(emb, hidden)
  (got, got_argmax), got_grads = loss(
      lambda e, h: logits.token_stats(cfg, e, h, targets, chunk, where=weights))(emb, hidden)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_array_equal(got_argmax, want_argmax)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_positions_read_on_a_mesh_stay_with_their_rows():
  """Sharded over 4 batch blocks, each device gathers its own rows' positions: same values."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices")
  cfg = config.tiny(vocab_size=53, embed_dim=8)
  emb, hidden, targets, weights = _inputs(cfg, 8, 9, 4)
  weights = jnp.asarray(np.asarray(weights) < 0.25, jnp.float32)
  mesh = sharding.make_mesh(2, 2, 2, devices=jax.devices()[:8])

  def f(e, h):
    with sharding.use_mesh(mesh):
      assert sharding.batch_shard_count(h.shape[0]) == 4
      return logits.token_stats(cfg, e, h, targets, 2, where=weights).logprob

  got = jax.jit(f)(emb, hidden)
  want = logits.plain_token_stats(cfg, emb, hidden, targets).logprob
  np.testing.assert_allclose(got, jnp.where(weights > 0, want, 0), rtol=1e-6, atol=1e-7)
