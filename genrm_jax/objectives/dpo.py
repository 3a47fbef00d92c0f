"""``dpo``: DPO on (correct, incorrect) pairs against a frozen reference, beta 0.1.

The reference is the starting model, copied into the train state before any update
(``Objective.frozen_reference``). Records {"inputs", "chosen", "rejected"}; one pair a row, never
packed, its two sides as two causal-LM rows (``chosen_*``, ``rejected_*``). Score (``dpo``):
log pi(y | x) of the solution, without the reference term (the paper found it better).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from genrm_jax import formats
from genrm_jax import model as model_lib
from genrm_jax import sampler
from genrm_jax import scoring_passes as passes
from genrm_jax.config import ModelConfig, ScoringConfig
from genrm_jax.objectives import base, rows

_SIDES = ("chosen", "rejected")


def sequence_logprob(token_logprob: jax.Array, weights: jax.Array) -> jax.Array:
  """log pi(y | x) [B]: token log-probs [B, T] summed over targets."""
  return jnp.einsum("BT,BT->B", token_logprob, weights.astype(jnp.float32))


def _pair_logprobs(cfg: ModelConfig, chunk: int, model_params, batch
                   ) -> tuple[jax.Array, jax.Array]:
  """log pi of the chosen and rejected solutions [B] each, in one forward over 2B rows."""
  cat = {k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])
         for k in rows.LM_FIELDS}
  stats = base.token_stats(cfg, chunk, model_params, cat)
  return jnp.split(sequence_logprob(stats.logprob, cat["loss_weights"]), 2)


# ----------------------------------------------------------------------------- scoring


def _ids(codec, question: str, solution: str, instruction: str):
  """(x, y): the question prompt and the solution as DPO trains it (stripped, then EOS)."""
  x = codec.prompt_ids(formats.question_prompt(question, instruction))
  return x, codec.encode(solution.rstrip("\n")) + [codec.eos_id]


def _score(cfg: ModelConfig, params, vocab: Any, questions: Sequence[str],
           solutions: Sequence[str], opts: ScoringConfig, *, seed: int, mesh
           ) -> passes.ScoreResult:
  """log pi(y | x): the solution as DPO trains it (``records.dpo_pairs``: stripped, then EOS)."""
  del seed
  codec = sampler.as_codec(vocab)
  seqs, cut = [], []
  for q, s in zip(questions, solutions):
    x, y = _ids(codec, q, s, opts.instruction)
    seqs.append(x + y)
    cut.append(len(x))
  scores = np.zeros(len(seqs))
  for chunk in passes.chunks(questions, 1, opts.max_rows):
    sub = [seqs[i] for i in chunk]
    # The logits after the prompt's last token predict y's first: keep that token unshared.
    _, out, start = passes.prefill(cfg, params, sub, [questions[i] for i in chunk],
                                   [cut[i] - 1 for i in chunk], share=opts.share_prefix,
                                   read_ids=(0,), token_logprobs=True, mesh=mesh)
    for j, i in enumerate(chunk):
      scores[i] = float(np.sum(out["token_logprobs"][j][cut[i] - 1 - start[j]:]))
  return passes.ScoreResult(scores, tokens=sum(map(len, seqs)))


def _context(codec, question: str, solution: str, opts: ScoringConfig) -> int:
  return sum(map(len, _ids(codec, question, solution, opts.instruction)))


# ----------------------------------------------------------------------------- rows


class _Rows(rows.Converter):
  """One pair a row; a pair whose longer side does not fit is dropped."""

  def add(self, ex: dict[str, np.ndarray]) -> list[rows.Row]:
    pair = [self.shifted(ex["inputs"], ex[side]) for side in _SIDES]
    if max(len(p[0]) for p in pair) > self.seq_len:
      self.too_long(truncated=False)
      return []
    self.stats.examples += 1
    row = {}
    for side, (inp, tgt, lw) in zip(_SIDES, pair):
      self.stats.tokens += len(inp)
      r = rows.lm_row([(inp, tgt, lw, np.zeros_like(lw))], self.seq_len)
      row.update({f"{side}_{k}": r[k] for k in rows.LM_FIELDS})
    return [row]

  def empty_row(self) -> rows.Row:
    r = rows.lm_row([], self.seq_len)
    return {f"{side}_{k}": r[k] for side in _SIDES for k in rows.LM_FIELDS}


# ----------------------------------------------------------------------------- the objective


class DPO(base.Objective):
  """DPO against the frozen starting model (see the module docstring)."""

  name = "dpo"
  text_fields = {"inputs": False, "chosen": True, "rejected": True}
  batch_fields = {f"{side}_{k}": v for side in _SIDES for k, v in rows.LM_FIELDS.items()}
  methods = (base.Method("dpo", "dpo", _score, _context),)
  frozen_reference = True
  sequences_per_row = 2

  def converter(self, seq_len: int, vocab: Any, pack: bool) -> rows.Converter:
    del pack
    return _Rows(seq_len, vocab)

  def synthetic_batch(self, rng: np.random.Generator, batch_size: int, seq_len: int,
                      vocab_size: int) -> dict[str, np.ndarray]:
    """chosen = the exact copy of a first half drawn from the lower half of the vocabulary,
    rejected = a random second half from the upper half (a preference a small model learns
    fast)."""
    b, t = batch_size, seq_len
    mid = (rows.FIRST_CONTENT_ID + vocab_size) // 2
    chosen = rows.copy_rows(rng, b, t, (rows.FIRST_CONTENT_ID, mid), copy=True)
    rejected = rows.copy_rows(rng, b, t, (mid, vocab_size), copy=False)
    rejected["inputs"][:, :t // 2 + 1] = chosen["inputs"][:, :t // 2 + 1]
    rejected["targets"][:, :t // 2] = chosen["targets"][:, :t // 2]
    out = {f"chosen_{k}": v for k, v in chosen.items()}
    out.update({f"rejected_{k}": v for k, v in rejected.items()})
    return out

  def loss_terms(self, oc: base.ObjectiveConfig, cfg: ModelConfig) -> base.LossFn:
    def terms(params, batch, ref_params) -> base.Terms:
      chosen, rejected = _pair_logprobs(cfg, oc.logits_chunk, params["model"], batch)
      ref_chosen, ref_rejected = jax.lax.stop_gradient(
          _pair_logprobs(cfg, oc.logits_chunk, ref_params, batch))
      margin = oc.dpo_beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
      n = jnp.asarray(margin.shape[0], jnp.float32)
      return base.Terms(-jnp.sum(jax.nn.log_sigmoid(margin)), n,
                        jnp.sum((margin > 0).astype(jnp.float32)), n)
    return terms

  def flops_per_example(self, oc: base.ObjectiveConfig, cfg: ModelConfig, seq_len: int
                        ) -> float:
    """Two sequences trained plus two reference forwards."""
    return (2 * super().flops_per_example(oc, cfg, seq_len)
            + 2 * model_lib.flops_per_token(cfg, seq_len, training=False) * seq_len)
