"""Objective losses and scores against brute-force numpy on a tiny model's outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrm_jax import config, model, objectives, sharding, synthetic

CFG = config.tiny(vocab_size=24, num_layers=1, embed_dim=16, hidden_dim=32, num_heads=2,
                  head_dim=8)
B, T = 4, 12


def _params(seed: int):
  rng = np.random.default_rng(seed)
  shapes = sharding.unbox(model.abstract_params(CFG))
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), jnp.float32), shapes)


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@jax.jit
def _forward(params, inputs, positions, segment_ids):
  return model.Transformer(CFG).apply({"params": params}, inputs, positions, segment_ids,
                                      return_hidden=True)


def test_sequence_logprob_and_yes_probability():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(B, T, 7)).astype(np.float32)
  token_lp = rng.normal(size=(B, T)).astype(np.float32)
  weights = (rng.random((B, T)) > 0.5).astype(np.float32)
  np.testing.assert_allclose(objectives.sequence_logprob(token_lp, weights),
                             (token_lp * weights).sum(-1), rtol=1e-5)
  p = np.exp(_log_softmax(logits[:, -1]))[:, 3]
  np.testing.assert_allclose(objectives.yes_probability(logits[:, -1], 3), p, rtol=1e-5)


# logits_chunk 5 unembeds 5 of the 12 positions at a time (then 2 padded): the chunked loss.
@pytest.mark.parametrize("verdict_weight,chunk", [(1.0, 0), (8.0, 0), (8.0, 5)])
def test_lm_loss_and_verdict_accuracy(verdict_weight, chunk):
  params = {"model": _params(1)}
  batch = synthetic.make_batch(0, batch_size=B, seq_len=T, objective="lm", vocab_size=24)
  batch["loss_weights"][1, :] = 0.0  # a row without targets must not count
  assert batch["verdict_weights"].sum() > 0
  obj = objectives.ObjectiveConfig("lm", verdict_weight=verdict_weight, logits_chunk=chunk)
  terms = jax.jit(objectives.loss_terms_fn(obj, CFG))(params, batch, None)
  logits, _, _ = _forward(params["model"], batch["inputs"], batch["positions"],
                          batch["segment_ids"])
  lp = np.take_along_axis(_log_softmax(logits), batch["targets"][..., None], -1)[..., 0]
  # Each verdict token counts verdict_weight times, in the loss and in its normaliser.
  w = batch["loss_weights"] * np.where(batch["verdict_weights"] > 0, verdict_weight, 1.0)
  np.testing.assert_allclose(terms.loss / terms.weight, -(lp * w).sum() / w.sum(), rtol=1e-5)
  v = batch["verdict_weights"]
  hits = (np.asarray(logits).argmax(-1) == batch["targets"]) * v
  assert float(terms.correct) == hits.sum() and float(terms.count) == v.sum()


@pytest.mark.parametrize("z_loss", [0.0, 1e-4])
def test_disc_loss_and_score(z_loss):
  head = {"w": jnp.asarray(np.random.default_rng(2).normal(size=16), jnp.float32),
          "b": jnp.asarray(0.3, jnp.float32)}
  params = {"model": _params(2), "head": head}
  batch = synthetic.make_batch(1, batch_size=B, seq_len=T, objective="disc", vocab_size=24)
  obj = objectives.ObjectiveConfig("disc", disc_z_loss=z_loss)
  terms = jax.jit(objectives.loss_terms_fn(obj, CFG))(params, batch, None)
  _, _, hidden = _forward(params["model"], batch["inputs"], batch["positions"],
                          batch["segment_ids"])
  last = np.asarray(hidden, np.float64)[np.arange(B), batch["score_index"]]
  s = last @ np.asarray(head["w"], np.float64) + 0.3
  np.testing.assert_allclose(objectives.disc_score(hidden, head, batch["score_index"]), s,
                             rtol=1e-5)
  y = batch["labels"]
  logz = np.log1p(np.exp(s))
  want = np.mean(-(y * (s - logz) + (1 - y) * (-logz)) + z_loss * logz ** 2)
  np.testing.assert_allclose(terms.loss / terms.weight, want, rtol=1e-5)
  assert float(terms.correct) == ((s > 0) == (y > 0.5)).sum()


@pytest.mark.parametrize("chunk", [0, 5])
def test_dpo_loss_against_reference(chunk):
  params, ref = {"model": _params(3)}, _params(4)
  batch = synthetic.make_batch(2, batch_size=B, seq_len=T, objective="dpo", vocab_size=24)
  obj = objectives.ObjectiveConfig("dpo", logits_chunk=chunk)
  terms = jax.jit(objectives.loss_terms_fn(obj, CFG))(params, batch, ref)

  def logp(p, side):
    logits, _, _ = _forward(p, batch[f"{side}_inputs"], batch[f"{side}_positions"],
                            batch[f"{side}_segment_ids"])
    lp = np.take_along_axis(_log_softmax(logits), batch[f"{side}_targets"][..., None], -1)
    return (lp[..., 0] * batch[f"{side}_loss_weights"]).sum(-1)

  margin = 0.1 * ((logp(params["model"], "chosen") - logp(ref, "chosen"))
                  - (logp(params["model"], "rejected") - logp(ref, "rejected")))
  want = np.mean(np.log1p(np.exp(-margin)))
  np.testing.assert_allclose(terms.loss / terms.weight, want, rtol=1e-4)
  assert float(terms.correct) == (margin > 0).sum()


@pytest.mark.parametrize("kind", ["lm", "dpo"])
def test_chunked_loss_equals_plain_in_value_and_gradient(kind):
  """Every objective that unembeds: 5 positions a piece (then 2 padded) vs all 12 at once."""
  params, ref = {"model": _params(6)}, _params(7)
  batch = synthetic.make_batch(3, batch_size=B, seq_len=T, objective=kind, vocab_size=24)

  def grad(chunk):
    terms_fn = objectives.loss_terms_fn(
        objectives.ObjectiveConfig(kind, verdict_weight=3.0, logits_chunk=chunk), CFG)
    loss = lambda p: terms_fn(p, batch, ref).loss  # noqa: E731
    return jax.jit(jax.value_and_grad(loss))(params)

  # Chunk 0 is one piece at this vocabulary (``logits.default_chunk``), i.e. the plain loss.
  (want, want_g), (got, got_g) = grad(0), grad(5)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), got_g, want_g)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want_g)) > 1e-3


def test_head_json_roundtrip_is_exact():
  head = {"w": jnp.asarray(np.random.default_rng(5).normal(size=16), jnp.float32),
          "b": jnp.asarray(-1.25e-3, jnp.float32)}
  back = objectives.head_from_json(objectives.head_to_json(head))
  np.testing.assert_array_equal(back["w"], head["w"])
  assert float(back["b"]) == float(head["b"])


def test_check_batch_names_the_field():
  batch = synthetic.make_batch(0, batch_size=2, seq_len=8, objective="lm", vocab_size=24)
  del batch["verdict_weights"]
  with pytest.raises(ValueError, match="verdict_weights"):
    objectives.check_batch("lm", batch)
  with pytest.raises(ValueError, match="kind='nope'"):
    objectives.ObjectiveConfig("nope")
