"""Objective losses and scores against brute-force numpy on a tiny model's outputs, and a
fourth objective defined in this file alone, trained and scored through the registry."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrm_jax import checkpoint, config, data, model, objectives, optim, records, scoring
from genrm_jax import sharding, synthetic, train, word_puzzles
from genrm_jax import eval as eval_lib
from genrm_jax import vocab as vocab_lib

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


@pytest.mark.parametrize("z_loss,sft,token", [(0.0, 0.0, 0.0), (1e-4, 0.0, 0.0),
                                              (1e-4, 0.25, 0.0), (1e-4, 0.25, 0.7)])
def test_disc_loss_and_score(z_loss, sft, token):
  head = {"w": jnp.asarray(np.random.default_rng(2).normal(size=16), jnp.float32),
          "b": jnp.asarray(0.3, jnp.float32)}
  params = {"model": _params(2), "head": head}
  batch = synthetic.make_batch(1, batch_size=B, seq_len=T, objective="disc", vocab_size=24)
  obj = objectives.ObjectiveConfig("disc", disc_z_loss=z_loss, disc_sft_weight=sft,
                                   disc_token_weight=token)
  terms = jax.jit(objectives.loss_terms_fn(obj, CFG))(params, batch, None)
  # Each packed example alone, from its own BOS-less start: its last token's hidden state, for a
  # correct one the log-probs of its second half (the synthetic "solution") as SFT, and the mean
  # of the BCE at each token of that half.
  want, hits, n, sft_tokens = 0.0, 0, 0, 0
  for i in range(B):
    sids = batch["segment_ids"][i]
    for sid in np.unique(sids[sids > 0]):
      where = np.flatnonzero(sids == sid)
      seq = batch["inputs"][i][where][None]
      logits, _, hidden = _forward(params["model"], seq, np.arange(len(where))[None],
                                   np.ones_like(seq))
      every = np.asarray(hidden, np.float64)[0] @ np.asarray(head["w"], np.float64) + 0.3
      y = batch["labels"][i][where[-1]]
      assert batch["score_weights"][i][where[-1]] == 1.0

      def bce(s):
        logz = np.log1p(np.exp(s))
        return -(y * (s - logz) + (1 - y) * (-logz)) + z_loss * logz ** 2

      s = every[-1]
      start = (len(where) + 1) // 2
      per_token = bce(every[start:])  # empty for a one-token example
      want += bce(s) + token * (per_token.mean() if per_token.size else 0.0)
      if y:
        lp = _log_softmax(np.asarray(logits, np.float64)[0])
        want -= sft * sum(lp[p, seq[0, p + 1]] for p in range(start - 1, len(where) - 1))
        sft_tokens += len(where) - start
      hits += (s > 0) == (y > 0.5)
      n += 1
  assert n > B and batch["score_weights"].sum() == n  # rows hold two examples
  assert batch["loss_weights"].sum() == sft_tokens > 0
  np.testing.assert_allclose(terms.loss / terms.weight, want / n, rtol=1e-5)
  assert float(terms.correct) == hits and float(terms.count) == n


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


@pytest.mark.parametrize("kind", ["lm", "dpo", "disc"])
def test_chunked_loss_equals_plain_in_value_and_gradient(kind):
  """Every objective that unembeds (disc: its SFT term): 5 positions a piece (then 2 padded) vs
  all 12 at once."""
  params, ref = {"model": _params(6)}, _params(7)
  if kind == "disc":
    params["head"] = {"w": jnp.asarray(np.random.default_rng(8).normal(size=16), jnp.float32),
                      "b": jnp.asarray(0.0, jnp.float32)}
  batch = synthetic.make_batch(3, batch_size=B, seq_len=T, objective=kind, vocab_size=24)

  def grad(chunk):
    terms_fn = objectives.loss_terms_fn(objectives.ObjectiveConfig(
        kind, verdict_weight=3.0, disc_sft_weight=0.5, logits_chunk=chunk), CFG)
    loss = lambda p: terms_fn(p, batch, ref).loss  # noqa: E731
    return jax.jit(jax.value_and_grad(loss))(params)

  # Chunk 0 is one piece at this vocabulary (``logits.default_chunk``), i.e. the plain loss.
  (want, want_g), (got, got_g) = grad(0), grad(5)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want_g))
  assert scale > 1e-3
  # fp32 sums in another order: errors relative to the gradient's scale, not to each element.
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * scale),
               got_g, want_g)


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
    objectives.get("lm").check_batch(batch)
  with pytest.raises(ValueError, match="kind='nope'"):
    objectives.ObjectiveConfig("nope")
  for field in ("verdict_weight", "disc_sft_weight", "disc_token_weight", "logits_chunk"):
    with pytest.raises(ValueError, match=f"ObjectiveConfig.{field}=-1"):
      objectives.ObjectiveConfig("disc", **{field: -1})


# ----------------------------------------------------------------------------- a fourth objective


class _WeightedRows:
  """The lm rows, one example a row, each carrying its record's weight on its tokens."""

  def __init__(self, inner):
    self.inner, self.stats = inner, inner.stats

  def add(self, ex):
    return [dict(r, example_weights=np.float32(ex["weight"]) * (r["segment_ids"] > 0))
            for r in self.inner.add(ex)]

  def flush(self):
    return self.inner.flush()

  def empty_row(self):
    row = self.inner.empty_row()
    return dict(row, example_weights=np.zeros(len(row["inputs"]), np.float32))


class WeightedLM(objectives.LM):
  """An objective defined here alone: lm whose records carry a weight scaling their loss."""

  name = "weighted_lm"
  passthrough = (*objectives.LM.passthrough, "weight")
  batch_fields = {**objectives.LM.batch_fields, "example_weights": (2, np.float32)}
  methods = (dataclasses.replace(objectives.LM.methods[0], name="weighted_genrm",
                                 alias="weighted_direct"),)

  def check_record(self, record, verdict):
    if not isinstance(record.get("weight"), float) or record["weight"] < 0:
      return f"weight must be a float >= 0, got {record.get('weight')!r}"
    return super().check_record(record, verdict)

  def columns(self, records, verdict):
    return {**super().columns(records, verdict),
            "weight": np.array([r["weight"] for r in records], np.float32)}

  def converter(self, seq_len, vocab, pack):
    del pack  # a row's weight is one example's
    return _WeightedRows(super().converter(seq_len, vocab, pack=False))

  def synthetic_batch(self, rng, batch_size, seq_len, vocab_size):
    out = super().synthetic_batch(rng, batch_size, seq_len, vocab_size)
    weights = rng.uniform(0.0, 2.0, size=(batch_size, 1)).astype(np.float32)
    out["example_weights"] = np.broadcast_to(weights, (batch_size, seq_len)).copy()
    return out

  def loss_terms(self, oc, cfg):
    lm_terms = super().loss_terms(oc, cfg)

    def terms(params, batch, ref_params):
      scaled = dict(batch, loss_weights=batch["loss_weights"] * batch["example_weights"])
      return lm_terms(params, scaled, ref_params)
    return terms


@pytest.fixture
def weighted_lm():
  objective = objectives.register(WeightedLM())
  yield objective
  del objectives.REGISTRY[objective.name]


def test_a_registered_objective_has_its_own_batches_and_loss(weighted_lm):
  params = {"model": _params(8)}
  batch = synthetic.make_batch(4, batch_size=B, seq_len=T, objective=weighted_lm.name,
                               vocab_size=24)
  weighted_lm.check_batch(batch)
  assert len(set(batch["example_weights"][:, 0])) == B
  terms = jax.jit(objectives.loss_terms_fn(objectives.ObjectiveConfig(weighted_lm.name), CFG))(
      params, batch, None)
  logits, _, _ = _forward(params["model"], batch["inputs"], batch["positions"],
                          batch["segment_ids"])
  lp = np.take_along_axis(_log_softmax(logits), batch["targets"][..., None], -1)[..., 0]
  w = batch["loss_weights"] * batch["example_weights"]
  np.testing.assert_allclose(terms.loss / terms.weight, -(lp * w).sum() / w.sum(), rtol=1e-5)
  with pytest.raises(ValueError, match="taken"):
    objectives.register(WeightedLM())


def test_a_registered_objective_trains_on_a_task_and_scores(weighted_lm, tmp_path):
  """Its records, rows, train step, model directory and scoring method, with no edit elsewhere."""
  cands = word_puzzles.candidates("last_letters", "train", problems_per_length=3,
                                  samples_per_problem=2, seed=0)
  # A weight a function of the text: a repeated record weighs the same.
  recs = [dict(r, weight=0.5 + len(r["inputs"]) % 3) for r in records.verify(cands, "")]
  assert len({r["weight"] for r in recs}) > 1
  vocab = vocab_lib.train_char_vocab([r["inputs"] + r["targets"] for r in recs],
                                     str(tmp_path / "v.model"))
  data.register_task("weighted_verify", weighted_lm.name, lambda split: recs, ["train"],
                     verdict=True)
  rows = next(data.get_batches("weighted_verify", "train", batch_size=len(recs), seq_len=384,
                               objective=weighted_lm.name, repeat=False, vocab=vocab))
  weight_of = {r["inputs"]: r["weight"] for r in recs}
  assert rows["segment_ids"].any(axis=1).all()  # one example a row, none dropped
  for i in range(len(recs)):
    real = rows["segment_ids"][i] > 0
    prompt = vocab.sp.decode(rows["inputs"][i][1:int(np.argmax(rows["loss_weights"][i])) + 1]
                             .tolist())
    np.testing.assert_array_equal(rows["example_weights"][i], weight_of[prompt] * real)

  exp = train.Experiment(
      model=config.tiny(vocab_size=vocab.vocab_size, num_layers=1, embed_dim=16, hidden_dim=32,
                        num_heads=2, head_dim=8),
      train=train.TrainConfig(batch_size=4, num_steps=3, log_every=1, checkpoint_every=3,
                              tensorboard=False),
      data=train.DataConfig(name="weighted_verify", seq_len=384, vocab_path=vocab.path),
      optim=optim.OptimConfig(peak_lr=1e-3, warmup_steps=1, decay_steps=3),
      objective=objectives.ObjectiveConfig(kind=weighted_lm.name))
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  result = train.run(exp, str(tmp_path / "run"), mesh=mesh)
  assert len(result.history) == 3 and all(np.isfinite(h["loss"]) for h in result.history)
  assert checkpoint.read_meta(result.model_dir)["objective"] == weighted_lm.name

  spec = eval_lib.parse_verifier(f"w={result.model_dir}:weighted_direct")
  method = eval_lib.method_names()[spec.method]
  assert method == "weighted_genrm"
  verifier = scoring.load_verifier(result.model_dir, method)
  questions, solutions = [c["question"] for c in cands], [c["solution"] for c in cands]
  got = verifier.score(method, questions, solutions, config.ScoringConfig(instruction=""))
  want = scoring.score("genrm", verifier.cfg, verifier.params, verifier.vocab, questions,
                       solutions, config.ScoringConfig(instruction=""))
  np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
  assert np.all((got.scores > 0) & (got.scores < 1))
