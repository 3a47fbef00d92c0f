"""Verifier scores of candidate solutions, by method name: GenRM (direct and CoT),
LLM-as-a-Judge, the discriminative RM, DPO.

Each objective (``genrm_jax.objectives``) offers the methods a model trained with it scores by
(``Objective.methods``; their definitions are in ``objectives.lm``, ``objectives.discriminative``
and ``objectives.dpo``), built from the shared passes of ``genrm_jax.scoring_passes``:

* ``genrm``: p(" Yes") over the full vocabulary right after ``direct_prompt`` (one forward, no
  decoding); ``ScoringConfig.score="normalized"`` gives p(Yes) / (p(Yes) + p(No)) instead.
* ``genrm_cot``: the mean of p(Yes) after each of K rationales sampled after ``cot_prompt``.
* ``llm_judge`` / ``llm_judge_cot``: the same two with an untuned model.
* ``disc``: the classifier head on the final hidden state at the last token of the solution block.
* ``dpo``: log pi(y | x), the solution's tokens (and EOS) given the question prompt.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from genrm_jax import checkpoint, objectives, sampler
from genrm_jax.config import ModelConfig, ScoringConfig
from genrm_jax.scoring_passes import ScoreResult


def methods() -> dict[str, tuple[objectives.Objective, objectives.Method]]:
  """Every scoring method by name, with the objective that offers it, in registry order."""
  return {m.name: (o, m) for o in objectives.REGISTRY.values() for m in o.methods}


def method(name: str) -> objectives.Method:
  """The scoring method ``name``; an error listing the known ones otherwise."""
  known = methods()
  if name not in known:
    raise ValueError(f"unknown method {name!r}; expected one of {tuple(known)}")
  return known[name][1]


def context_needed(method_name: str, vocab: Any, question: str, solution: str,
                   opts: ScoringConfig = ScoringConfig()) -> int:
  """Positions scoring one item takes: what must fit in the model's ``max_seq_len``.

  CoT counts the longest rationale (``opts.rationale.max_new_tokens``) and the verdict question
  appended after it.
  """
  try:
    m = method(method_name)
  except ValueError as e:
    raise ValueError(f"context_needed: {e}") from None
  return m.context(sampler.as_codec(vocab), question, solution, opts)


def score(method_name: str, cfg: ModelConfig, params, vocab: Any, questions: Sequence[str],
          solutions: Sequence[str], opts: ScoringConfig = ScoringConfig(), *, seed: int = 0,
          mesh=None, **scoring_params) -> ScoreResult:
  """One entry point for every verifier; ``scoring_params`` are what the method's objective
  reads from a model directory (``Objective.scoring_params``: the disc head)."""
  if len(questions) != len(solutions):
    raise ValueError(f"score: {len(questions)} questions but {len(solutions)} solutions")
  try:
    m = method(method_name)
  except ValueError as e:
    raise ValueError(f"score: {e}") from None
  return m.score(cfg, params, vocab, questions, solutions, opts, seed=seed, mesh=mesh,
                 **scoring_params)


# ----------------------------------------------------------------------------- loaded verifiers


@dataclasses.dataclass(frozen=True)
class Verifier:
  """A model directory loaded for scoring (on ``mesh``, or the default device)."""
  model_dir: str
  cfg: ModelConfig
  params: Any
  vocab: Any
  # What the directory carries for its objective's methods (``Objective.scoring_params``).
  scoring_params: dict[str, Any] = dataclasses.field(default_factory=dict)
  mesh: Any = None

  def score(self, method_name: str, questions: Sequence[str], solutions: Sequence[str],
            opts: ScoringConfig = ScoringConfig(), seed: int = 0) -> ScoreResult:
    return score(method_name, self.cfg, self.params, self.vocab, questions, solutions, opts,
                 seed=seed, mesh=self.mesh, **self.scoring_params)


def load_verifier(model_dir: str, method_name: str, mesh=None, what: str = "verifier"
                  ) -> Verifier:
  """Loads ``model_dir`` for ``method_name``; an error naming ``what`` if it cannot serve it."""
  known = methods()
  if method_name not in known:
    raise ValueError(f"{what}: unknown method {method_name!r}; expected one of {tuple(known)}")
  objective, m = known[method_name]
  cfg, params, meta, vocab = checkpoint.load_model_and_vocab(
      model_dir, mesh, need_verdict=m.verdict, what=what)
  return Verifier(model_dir, cfg, params, vocab,
                  objective.scoring_params(meta, model_dir, what), mesh)
