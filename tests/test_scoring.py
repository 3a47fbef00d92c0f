"""Verifier scores against brute-force full forwards (numpy softmax, explicit sums and means)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from genrm_jax import formats, model, sampler, scoring, scoring_passes, sharding
from genrm_jax import vocab as vocab_lib
from genrm_jax.config import SamplerConfig, ScoringConfig
from tests import tiny_lm

INSTRUCTION = "Check.\n"
QUESTIONS = ["1+2?", "1+2?", "1+2?", "7-5?", "7-5?"]
SOLUTIONS = ["1+2=3. The answer is 3", "1+2=4. The answer is 4", "3", "7-5=2. The answer is 2",
             "It is 12"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
  texts = [formats.cot_prompt(q, s, INSTRUCTION) + formats.VERDICT_QUESTION
           for q, s in zip(QUESTIONS, SOLUTIONS)]
  vocab = vocab_lib.train_char_vocab(texts, str(tmp_path_factory.mktemp("v") / "v.model"))
  cfg = tiny_lm.small_cfg(vocab_size=vocab.vocab_size)
  return cfg, tiny_lm.lively_params(cfg), vocab


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _probs_after(cfg, params, seq):
  return _softmax(tiny_lm.full_logits(cfg, params, seq)[-1].astype(np.float64))


def test_direct_p_yes_equals_numpy_softmax_shared_or_not(lm):
  cfg, params, vocab = lm
  yes, no = vocab_lib.verdict_token_ids(vocab)
  codec = sampler.as_codec(vocab)
  shared = scoring.score("genrm", cfg, params, vocab, QUESTIONS, SOLUTIONS,
                         ScoringConfig(instruction=INSTRUCTION))
  plain = scoring.score("llm_judge", cfg, params, vocab, QUESTIONS, SOLUTIONS,
                        ScoringConfig(instruction=INSTRUCTION, share_prefix=False,
                                      score="normalized", max_rows=2))
  for i, (q, s) in enumerate(zip(QUESTIONS, SOLUTIONS)):
    seq = codec.prompt_ids(formats.direct_prompt(q, s, INSTRUCTION))
    assert seq[0] == vocab.bos_id
    p = _probs_after(cfg, params, seq)
    np.testing.assert_allclose([shared.p_yes[i], shared.p_no[i]], [p[yes], p[no]], rtol=1e-4)
    np.testing.assert_allclose(plain.scores[i], p[yes] / (p[yes] + p[no]), rtol=1e-4)
  np.testing.assert_array_equal(shared.scores, shared.p_yes)
  np.testing.assert_allclose(plain.p_yes, shared.p_yes, rtol=1e-4)
  assert len(set(np.round(shared.scores, 6))) == len(SOLUTIONS)


def test_cot_score_is_mean_over_rationales_and_prefix_reuse_is_exact(lm):
  cfg, params, vocab = lm
  yes, _ = vocab_lib.verdict_token_ids(vocab)
  codec = sampler.as_codec(vocab)
  rationale = SamplerConfig(max_new_tokens=12, temperature=1.0,
                            stop_strings=(formats.VERDICT_QUESTION, "."))
  opts = ScoringConfig(instruction=INSTRUCTION, num_rationales=3, rationale=rationale,
                       max_rows=16)
  shared = scoring.score("genrm_cot", cfg, params, vocab, QUESTIONS, SOLUTIONS, opts, seed=4)
  plain = scoring.score("genrm_cot", cfg, params, vocab, QUESTIONS, SOLUTIONS,
                        ScoringConfig(**{**opts.__dict__, "share_prefix": False}), seed=4)
  assert shared.rationales == plain.rationales
  np.testing.assert_allclose(shared.rationale_p_yes, plain.rationale_p_yes, rtol=1e-4)
  for i, (q, s) in enumerate(zip(QUESTIONS, SOLUTIONS)):
    assert len(shared.rationales[i]) == 3 and len(set(shared.rationales[i])) > 1
    prompt = codec.prompt_ids(formats.cot_prompt(q, s, INSTRUCTION))
    brute = []
    for r in shared.rationales[i]:
      assert r.endswith(formats.VERDICT_QUESTION)
      brute.append(_probs_after(cfg, params, prompt + codec.encode(r))[yes])
    np.testing.assert_allclose(shared.rationale_p_yes[i], brute, rtol=1e-4)
    np.testing.assert_allclose(shared.scores[i], np.mean(brute), rtol=1e-4)


def test_dpo_and_disc_scores_equal_brute_force(lm):
  cfg, params, vocab = lm
  codec = sampler.as_codec(vocab)
  opts = ScoringConfig(instruction=INSTRUCTION)
  dpo = scoring.score("dpo", cfg, params, vocab, QUESTIONS, SOLUTIONS, opts)
  head = {"w": np.asarray(jax.random.normal(jax.random.key(1), (cfg.embed_dim,))),
          "b": np.float32(0.3)}
  disc = scoring.score("disc", cfg, params, vocab, QUESTIONS, SOLUTIONS, opts, head=head)
  for i, (q, s) in enumerate(zip(QUESTIONS, SOLUTIONS)):
    x = codec.prompt_ids(formats.question_prompt(q, INSTRUCTION))
    y = codec.encode(s) + [vocab.eos_id]
    logits = tiny_lm.full_logits(cfg, params, x + y).astype(np.float64)
    lp = [np.log(_softmax(logits[len(x) - 1 + t]))[tok] for t, tok in enumerate(y)]
    np.testing.assert_allclose(dpo.scores[i], np.sum(lp), rtol=1e-4)
    seq = x + codec.encode(s)  # prompt and solution tokenized apart, as in training
    hidden = tiny_lm.full_forward(cfg, params, seq)[1]
    np.testing.assert_allclose(disc.scores[i], hidden[-1] @ head["w"] + head["b"],
                               rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="head"):
    scoring.score("disc", cfg, params, vocab, QUESTIONS, SOLUTIONS, opts)


def test_sharded_direct_scores_equal_single_device(lm):
  cfg, params, vocab = lm
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sharded = jax.device_put(params, model.param_shardings(cfg, mesh))
  opts = ScoringConfig(instruction=INSTRUCTION)
  one = scoring.score("genrm", cfg, params, vocab, QUESTIONS, SOLUTIONS, opts)
  many = scoring.score("genrm", cfg, sharded, vocab, QUESTIONS, SOLUTIONS, opts, mesh=mesh)
  np.testing.assert_allclose(many.scores, one.scores, rtol=1e-4)


def test_cot_scores_do_not_depend_on_the_batch(lm):
  """An item's rationales come from (seed, prompt, k): alone, reordered or chunked, the same."""
  cfg, params, vocab = lm
  rationale = SamplerConfig(max_new_tokens=8, temperature=1.0)
  opts = ScoringConfig(instruction=INSTRUCTION, num_rationales=2, rationale=rationale)
  full = scoring.score("genrm_cot", cfg, params, vocab, QUESTIONS, SOLUTIONS, opts, seed=3)
  order = [4, 1, 3, 0, 2]
  shuffled = scoring.score("genrm_cot", cfg, params, vocab, [QUESTIONS[i] for i in order],
                           [SOLUTIONS[i] for i in order],
                           ScoringConfig(**{**opts.__dict__, "max_rows": 2}), seed=3)
  alone = scoring.score("genrm_cot", cfg, params, vocab, QUESTIONS[2:3], SOLUTIONS[2:3], opts,
                        seed=3)
  assert [shuffled.rationales[order.index(i)] for i in range(5)] == full.rationales
  np.testing.assert_allclose(shuffled.scores[np.argsort(order)], full.scores, rtol=1e-5)
  assert alone.rationales[0] == full.rationales[2]
  other = scoring.score("genrm_cot", cfg, params, vocab, QUESTIONS, SOLUTIONS, opts, seed=4)
  assert other.rationales != full.rationales


def test_context_needed_counts_each_methods_tokens(lm):
  _, _, vocab = lm
  codec = sampler.as_codec(vocab)
  opts = ScoringConfig(instruction=INSTRUCTION,
                       rationale=SamplerConfig(max_new_tokens=9))
  q, s = QUESTIONS[0], SOLUTIONS[0]
  direct = len(codec.prompt_ids(formats.direct_prompt(q, s, INSTRUCTION)))
  assert scoring.context_needed("genrm", vocab, q, s, opts) == direct
  # CoT: its prompt, then up to 9 rationale tokens, "\n" and the verdict question.
  cot = len(codec.prompt_ids(formats.cot_prompt(q, s, INSTRUCTION)))
  assert scoring.context_needed("genrm_cot", vocab, q, s, opts) == (
      cot + 9 + len(formats.VERDICT_QUESTION) + 1)  # a character vocabulary: one token a char
  # dpo: BOS + question prompt + solution + EOS.
  assert scoring.context_needed("dpo", vocab, q, s, opts) == (
      1 + len(formats.question_prompt(q, INSTRUCTION)) + len(s) + 1)
  with pytest.raises(ValueError, match="unknown method 'x'"):
    scoring.context_needed("x", vocab, q, s, opts)


def test_scoring_reports_progress_per_chunk():
  """``reporting_to`` hears of every item once, a chunk at a time, and nothing outside it."""
  got = []
  with scoring_passes.reporting_to(got.append):
    chunks = list(scoring_passes.chunks(["a", "b", "a", "c", "b"], 2, 4))
  assert chunks == [[0, 2], [1, 4], [3]] and got == [2, 2, 1]
  list(scoring_passes.chunks(["a"], 1, 4))
  assert got == [2, 2, 1]


def test_verdict_reads_grouped_by_length_equal_full_forwards(lm):
  """Rows are extended in groups of similar length (five rows: three groups, three shapes);
  each row's read is still that of its own sequence."""
  cfg, params, _ = lm
  prompts = [[2, 5, 6, 7], [2, 8, 9]]
  prefix, _ = sampler.extend(cfg, params, None, [0, 0], prompts)
  parent = [0, 1, 0, 1, 1]
  blocks = [[10] * 3, [11] * 20, [12] * 40, [13] * 2, [14] * 33]
  read = scoring_passes._read_by_length(cfg, params, prefix, parent, blocks, (3, 8), None)
  for i, b in enumerate(blocks):
    want = np.log(_probs_after(cfg, params, prompts[parent[i]] + b)[[3, 8]])
    np.testing.assert_allclose(read[i], want, rtol=1e-4, atol=1e-5)
