"""Training objectives, one class per verifier kind, and the registry of their names.

- ``lm`` (``objectives.lm``): GenRM (direct or CoT) and SFT by next-token prediction; scores
  p(" Yes") (``genrm``, ``genrm_cot``, and ``llm_judge*`` with an untuned model).
- ``disc`` (``objectives.discriminative``): a scalar head on the last hidden state, binary
  cross-entropy; scores the head's logit.
- ``dpo`` (``objectives.dpo``): DPO against a frozen reference; scores log pi(y | x).

``ObjectiveConfig.kind`` names one; ``get(name)`` gives its ``Objective`` (``objectives.base``),
which the data pipeline, the synthetic source, the train step, the model directory and scoring
ask for everything that differs between kinds. A new kind is one ``Objective`` subclass passed
to ``register``.
"""

from genrm_jax.objectives.base import (REGISTRY, Method, Objective, ObjectiveConfig, Terms, get,
                                       register)
from genrm_jax.objectives.discriminative import (Discriminative, disc_score, head_from_json,
                                                 head_to_json)
from genrm_jax.objectives.dpo import DPO, sequence_logprob
from genrm_jax.objectives.lm import LM, yes_probability

register(LM())
register(Discriminative())
register(DPO())


def loss_terms_fn(oc: ObjectiveConfig, cfg):
  """``f(params, batch, ref_params) -> Terms`` of the objective ``oc`` configures."""
  return get(oc.kind).loss_terms(oc, cfg)


def flops_per_example(oc: ObjectiveConfig, cfg, seq_len: int) -> float:
  """Training matmul FLOPs per batch row of the objective ``oc`` configures, for MFU."""
  return get(oc.kind).flops_per_example(oc, cfg, seq_len)
