"""``lm``: GenRM (direct or CoT) and SFT, by next-token prediction.

Loss: token cross-entropy on target tokens only, each Yes/No verdict token of a verification
target weighted ``ObjectiveConfig.verdict_weight`` (the final verdict and those a rationale gives
on the way, at the end of a line); accuracy is whether the greedy prediction at each verdict position is the labelled
verdict. Records {"inputs", "targets"}; in a ``verdict`` task the
targets end in " Yes" / " No". Rows are packed: several examples a row, each its own segment;
an example longer than a row is truncated if it has no verdict (keeping at least one target
token), else dropped.

Scores: p(" Yes") over the full vocabulary after the verdict question (``genrm``), or its mean
over K rationales sampled after ``cot_prompt`` (``genrm_cot``), each cut at the verdict question
(a stop string) or, lacking it, completed with it (``formats.ensure_verdict_question``): the
paper's majority vote. ``ScoringConfig.score = "normalized"`` gives p(Yes) / (p(Yes) + p(No))
instead. ``llm_judge`` and ``llm_judge_cot`` are the same two with an untuned model.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from genrm_jax import formats, sampler
from genrm_jax import scoring_passes as passes
from genrm_jax import vocab as vocab_lib
from genrm_jax.config import ModelConfig, ScoringConfig
from genrm_jax.objectives import base, rows


def yes_probability(logits_at_verdict: jax.Array, yes_id: int) -> jax.Array:
  """The GenRM score p(" Yes") over the full vocabulary, from logits [..., V]."""
  return jax.nn.softmax(logits_at_verdict.astype(jnp.float32), axis=-1)[..., yes_id]


# ----------------------------------------------------------------------------- scoring methods


def _direct(cfg: ModelConfig, params, vocab: Any, questions: Sequence[str],
            solutions: Sequence[str], opts: ScoringConfig, *, seed: int, mesh
            ) -> passes.ScoreResult:
  """p(" Yes") after the verdict question, one forward pass per solution."""
  del seed
  codec = sampler.as_codec(vocab)
  prompts = [formats.direct_prompt(q, s, opts.instruction) for q, s in zip(questions, solutions)]
  yes_no = vocab_lib.verdict_token_ids(vocab)
  p_yes, p_no, tokens = passes.read_verdicts(cfg, params, codec, yes_no, prompts, questions,
                                             opts, mesh)
  return passes.ScoreResult(passes.verdict_score(p_yes, p_no, opts), p_yes, p_no, tokens=tokens)


def _cot(cfg: ModelConfig, params, vocab: Any, questions: Sequence[str],
         solutions: Sequence[str], opts: ScoringConfig, *, seed: int, mesh
         ) -> passes.ScoreResult:
  """The mean over K sampled rationales of p(" Yes") after each."""
  codec = sampler.as_codec(vocab)
  prompts = [formats.cot_prompt(q, s, opts.instruction) for q, s in zip(questions, solutions)]
  yes_no = vocab_lib.verdict_token_ids(vocab)
  p_yes, p_no, texts, generated, tokens = passes.sample_verdicts(
      cfg, params, codec, yes_no, prompts, questions, opts, seed, mesh)
  per = passes.verdict_score(p_yes, p_no, opts)
  return passes.ScoreResult(per.mean(axis=1), p_yes.mean(axis=1), p_no.mean(axis=1), texts,
                            p_yes, per, generated, tokens)


def _direct_context(codec, question: str, solution: str, opts: ScoringConfig) -> int:
  return len(codec.prompt_ids(formats.direct_prompt(question, solution, opts.instruction)))


def _cot_context(codec, question: str, solution: str, opts: ScoringConfig) -> int:
  """The prompt, the longest rationale and the verdict question appended after it."""
  return (len(codec.prompt_ids(formats.cot_prompt(question, solution, opts.instruction)))
          + opts.rationale.max_new_tokens + len(codec.encode("\n" + formats.VERDICT_QUESTION)))


def _p_yes(scores: np.ndarray) -> np.ndarray:
  return scores


# ----------------------------------------------------------------------------- rows


class _Rows(rows.Converter):
  """Packed causal-LM rows; a verdict example is never truncated, only dropped."""

  def __init__(self, seq_len: int, vocab: Any, pack: bool):
    super().__init__(seq_len, vocab)
    self.verdict_ids = vocab_lib.verdict_token_ids(vocab)
    self.piece = vocab.sp.id_to_piece
    self.packer = rows.Packer(seq_len, pack)

  def add(self, ex: dict[str, np.ndarray]) -> list[rows.Row]:
    inp, tgt, lw = self.shifted(ex["inputs"], ex["targets"])
    vw = np.zeros_like(lw)
    if ex["verdict"]:
      k = len(tgt) - 2  # the verdict token, right before EOS
      if tgt[k] not in self.verdict_ids:
        raise ValueError(f"verdict example whose last target token {tgt[k]} is not ' Yes'/' No' "
                         f"{self.verdict_ids}: does the vocabulary split the verdict?")
      vw[k] = 1.0
      # Verdicts a rationale gives on the way (word_puzzles' "walk" style) end their line: a
      # " Yes"/" No" inside running text (a released GSM8K rationale's "No, ...") is not one.
      for j in np.flatnonzero((lw[:k] > 0) & np.isin(tgt[:k], list(self.verdict_ids))):
        if self.piece(tgt[j + 1]).startswith("\n"):
          vw[j] = 1.0
    if len(inp) > self.seq_len:
      if ex["verdict"] or len(ex["inputs"]) + 1 >= self.seq_len:
        self.too_long(truncated=False)
        return []
      self.too_long(truncated=True)
      inp, tgt, lw, vw = (a[:self.seq_len] for a in (inp, tgt, lw, vw))
    self.stats.examples += 1
    self.stats.tokens += len(inp)
    return [rows.lm_row(segs, self.seq_len) for segs in self.packer.add((inp, tgt, lw, vw))]

  def flush(self) -> list[rows.Row]:
    return [rows.lm_row(segs, self.seq_len) for segs in self.packer.flush()]

  def empty_row(self) -> rows.Row:
    return rows.lm_row([], self.seq_len)


# ----------------------------------------------------------------------------- the objective


class LM(base.Objective):
  """GenRM and SFT: next-token prediction (see the module docstring)."""

  name = "lm"
  text_fields = {"inputs": False, "targets": True}
  passthrough = ("verdict",)
  batch_fields = {**rows.LM_FIELDS, "verdict_weights": (2, np.float32)}
  methods = (
      base.Method("genrm", "direct", _direct, _direct_context, verdict=True, probability=_p_yes),
      base.Method("genrm_cot", "cot", _cot, _cot_context, verdict=True, votes=True,
                  probability=_p_yes),
      base.Method("llm_judge", "judge", _direct, _direct_context, verdict=True,
                  probability=_p_yes, untuned=True),
      base.Method("llm_judge_cot", "judge_cot", _cot, _cot_context, verdict=True, votes=True,
                  probability=_p_yes, untuned=True),
  )

  def check_record(self, record: dict[str, Any], verdict: bool) -> str | None:
    if verdict and formats.target_verdict(record["targets"]) is None:
      return (f"target does not end in {formats.YES!r} / {formats.NO!r}: "
              f"...{record['targets'][-60:]!r}")
    return None

  def columns(self, records: list[dict[str, Any]], verdict: bool) -> dict[str, np.ndarray]:
    return {"verdict": np.full(len(records), int(verdict), np.int32)}

  def converter(self, seq_len: int, vocab: Any, pack: bool) -> rows.Converter:
    return _Rows(seq_len, vocab, pack)

  def synthetic_batch(self, rng: np.random.Generator, batch_size: int, seq_len: int,
                      vocab_size: int) -> dict[str, np.ndarray]:
    """The copy's tokens; the last one is marked as the "verdict" for the accuracy metric."""
    out = rows.copy_rows(rng, batch_size, seq_len, (rows.FIRST_CONTENT_ID, vocab_size), copy=True)
    out["verdict_weights"] = np.zeros((batch_size, seq_len), np.float32)
    out["verdict_weights"][:, -1] = 1.0
    return out

  def loss_terms(self, oc: base.ObjectiveConfig, cfg: ModelConfig) -> base.LossFn:
    def terms(params, batch, ref_params) -> base.Terms:
      del ref_params
      stats = base.token_stats(cfg, oc.logits_chunk, params["model"], batch)
      verdict = batch["verdict_weights"].astype(jnp.float32)
      weights = (batch["loss_weights"].astype(jnp.float32)
                 * (1.0 + (oc.verdict_weight - 1.0) * verdict))
      hit = (stats.argmax == batch["targets"]).astype(jnp.float32)
      return base.Terms(-jnp.sum(stats.logprob * weights), jnp.sum(weights),
                        jnp.sum(hit * verdict), jnp.sum(verdict))
    return terms
