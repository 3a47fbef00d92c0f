"""Training objectives and the verifier scores they define.

- ``lm``: GenRM (direct or CoT) and SFT: token cross-entropy on target tokens only; accuracy is
  whether the greedy prediction at each Yes/No verdict position is the labelled verdict.
  Score: p(" Yes") at the verdict position.
- ``disc``: the discriminative reward model: a scalar head on the final hidden state of the last
  real token, binary cross-entropy on correct (1) / incorrect (0), plus an optional z-loss
  ``z_loss * log(1 + e^s)^2`` (the squared log partition function of the logits (0, s); the
  paper's appendix reports 1e-4) that keeps the score from drifting. Score: the head's logit s.
- ``dpo``: DPO on (correct, incorrect) pairs against a frozen reference, beta 0.1. Score:
  log pi(y | x) of the solution, without the reference term (the paper found it better).

Each loss returns sums (loss, normaliser, accuracy hits, accuracy count) rather than means, so
gradient accumulation over micro-batches reproduces the full-batch gradient exactly. No loss
holds the [B, T, V] float32 logits at once: ``lm`` and ``dpo`` unembed in chunks of positions
(``genrm_jax.logits``), ``disc`` never unembeds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genrm_jax import logits as logits_lib
from genrm_jax import model as model_lib
from genrm_jax.config import ModelConfig

KINDS = ("lm", "disc", "dpo")

# Batch fields (name -> ndim) of each objective; the data contract in genrm_jax/data.py.
_LM_FIELDS = {"inputs": 2, "targets": 2, "loss_weights": 2, "positions": 2, "segment_ids": 2}
BATCH_FIELDS = {
    "lm": {**_LM_FIELDS, "verdict_weights": 2},
    "disc": {"inputs": 2, "positions": 2, "segment_ids": 2, "score_index": 1, "labels": 1},
    "dpo": {f"{side}_{k}": v for side in ("chosen", "rejected") for k, v in _LM_FIELDS.items()},
}
_FLOAT_FIELDS = ("loss_weights", "verdict_weights", "labels")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  kind: str = "lm"
  dpo_beta: float = 0.1
  disc_z_loss: float = 1e-4
  # lm: the loss weight of each Yes/No verdict token, relative to 1 for every other target token.
  # A direct verification record has one verdict among its target tokens, and the SFT records
  # mixed in (lambda) are all solution tokens: at 1, verdicts were 6% of the loss in the tiny run.
  verdict_weight: float = 1.0
  # Positions unembedded at a time by the lm and dpo losses; 0: ``logits.default_chunk``.
  logits_chunk: int = 0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"ObjectiveConfig.kind={self.kind!r}; expected one of {KINDS}")
    if self.verdict_weight <= 0:
      raise ValueError(f"ObjectiveConfig.verdict_weight={self.verdict_weight}; must be > 0")
    if self.logits_chunk < 0:
      raise ValueError(f"ObjectiveConfig.logits_chunk={self.logits_chunk}; must be >= 0")


class Terms(NamedTuple):
  """Sums over one (micro-)batch; the step divides after accumulating."""
  loss: jax.Array
  weight: jax.Array
  correct: jax.Array
  count: jax.Array


def batch_dtype(name: str):
  return np.float32 if name.endswith(_FLOAT_FIELDS) else np.int32


def abstract_batch(kind: str, batch_size: int, seq_len: int, shardings: dict | None = None
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """ShapeDtypeStructs of one global batch of ``kind``, e.g. for ahead-of-time compilation."""
  out = {}
  for name, ndim in BATCH_FIELDS[kind].items():
    shape = (batch_size, seq_len)[:ndim]
    sharding = None if shardings is None else shardings[name]
    out[name] = jax.ShapeDtypeStruct(shape, batch_dtype(name), sharding=sharding)
  return out


def check_batch(kind: str, batch: dict[str, Any]) -> None:
  """Names the missing or misshapen field instead of failing inside the compiled step."""
  fields = BATCH_FIELDS[kind]
  missing = sorted(set(fields) - set(batch))
  if missing:
    raise ValueError(f"{kind} batch lacks fields {missing}; it has {sorted(batch)}")
  for name, ndim in fields.items():
    if np.ndim(batch[name]) != ndim:
      raise ValueError(f"{kind} batch field {name!r} has shape {np.shape(batch[name])}; "
                       f"expected {ndim} dims")


def init_head(cfg: ModelConfig) -> dict[str, jax.Array]:
  """The discriminative head: zeros, so every solution starts at score 0 (p = 0.5)."""
  return {"w": jnp.zeros((cfg.embed_dim,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


# ----------------------------------------------------------------------------- scores


def sequence_logprob(token_logprob: jax.Array, weights: jax.Array) -> jax.Array:
  """log pi(y | x) [B]: the DPO verifier's score, token log-probs [B, T] summed over targets."""
  return jnp.einsum("BT,BT->B", token_logprob, weights.astype(jnp.float32))


def yes_probability(logits_at_verdict: jax.Array, yes_id: int) -> jax.Array:
  """The GenRM score p(" Yes") over the full vocabulary, from logits [..., V]."""
  return jax.nn.softmax(logits_at_verdict.astype(jnp.float32), axis=-1)[..., yes_id]


def disc_score(hidden: jax.Array, head: dict[str, jax.Array], score_index: jax.Array
               ) -> jax.Array:
  """The discriminative RM's logit [B] from final hidden states [B, T, D] at ``score_index``."""
  last = jnp.take_along_axis(hidden, score_index[:, None, None], axis=1)[:, 0]  # [B, D]
  return jnp.einsum("BD,D->B", last.astype(jnp.float32), head["w"]) + head["b"]


# ----------------------------------------------------------------------------- losses


def _hidden(cfg: ModelConfig, model_params, inputs, positions, segment_ids) -> jax.Array:
  hidden, _ = model_lib.Transformer(cfg).apply(
      {"params": model_params}, inputs, positions, segment_ids,
      method=model_lib.Transformer.hidden_states)
  return hidden


def _token_stats(cfg: ModelConfig, chunk: int, model_params, batch) -> logits_lib.TokenStats:
  hidden = _hidden(cfg, model_params, batch["inputs"], batch["positions"], batch["segment_ids"])
  return logits_lib.token_stats(cfg, model_params["embedder"]["input_embedding"], hidden,
                                batch["targets"], chunk)


def _lm_terms(cfg: ModelConfig, verdict_weight: float, chunk: int, params, batch,
              ref_params) -> Terms:
  del ref_params
  stats = _token_stats(cfg, chunk, params["model"], batch)
  verdict = batch["verdict_weights"].astype(jnp.float32)
  weights = batch["loss_weights"].astype(jnp.float32) * (1.0 + (verdict_weight - 1.0) * verdict)
  hit = (stats.argmax == batch["targets"]).astype(jnp.float32)
  return Terms(-jnp.sum(stats.logprob * weights), jnp.sum(weights), jnp.sum(hit * verdict),
               jnp.sum(verdict))


def _disc_terms(cfg: ModelConfig, z_loss: float, params, batch, ref_params) -> Terms:
  del ref_params
  hidden = _hidden(cfg, params["model"], batch["inputs"], batch["positions"],
                   batch["segment_ids"])
  score = disc_score(hidden, params["head"], batch["score_index"])
  labels = batch["labels"].astype(jnp.float32)
  loss = optax.sigmoid_binary_cross_entropy(score, labels)
  loss += z_loss * jnp.square(jax.nn.softplus(score))
  hit = ((score > 0) == (labels > 0.5)).astype(jnp.float32)
  n = jnp.asarray(labels.shape[0], jnp.float32)
  return Terms(jnp.sum(loss), n, jnp.sum(hit), n)


def _pair_logprobs(cfg: ModelConfig, chunk: int, model_params, batch
                   ) -> tuple[jax.Array, jax.Array]:
  """log pi of the chosen and rejected solutions [B] each, in one forward over 2B rows."""
  cat = {k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])
         for k in _LM_FIELDS}
  stats = _token_stats(cfg, chunk, model_params, cat)
  return jnp.split(sequence_logprob(stats.logprob, cat["loss_weights"]), 2)


def _dpo_terms(cfg: ModelConfig, beta: float, chunk: int, params, batch, ref_params) -> Terms:
  chosen, rejected = _pair_logprobs(cfg, chunk, params["model"], batch)
  ref_chosen, ref_rejected = jax.lax.stop_gradient(
      _pair_logprobs(cfg, chunk, ref_params, batch))
  margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
  n = jnp.asarray(margin.shape[0], jnp.float32)
  return Terms(-jnp.sum(jax.nn.log_sigmoid(margin)), n,
               jnp.sum((margin > 0).astype(jnp.float32)), n)


def loss_terms_fn(obj: ObjectiveConfig, cfg: ModelConfig
                  ) -> Callable[[Any, dict, Any], Terms]:
  """``f(params, batch, ref_params) -> Terms`` for the objective; params = {"model", "head"?}."""
  if obj.kind == "lm":
    return lambda p, b, r: _lm_terms(cfg, obj.verdict_weight, obj.logits_chunk, p, b, r)
  if obj.kind == "disc":
    return lambda p, b, r: _disc_terms(cfg, obj.disc_z_loss, p, b, r)
  return lambda p, b, r: _dpo_terms(cfg, obj.dpo_beta, obj.logits_chunk, p, b, r)


def flops_per_example(obj: ObjectiveConfig, cfg: ModelConfig, seq_len: int) -> float:
  """Training matmul FLOPs per batch row, for MFU: DPO runs 2 sequences plus 2 reference fwds."""
  train = model_lib.flops_per_token(cfg, seq_len, training=True) * seq_len
  if obj.kind == "dpo":
    return 2 * train + 2 * model_lib.flops_per_token(cfg, seq_len, training=False) * seq_len
  return train


def head_to_json(head: dict[str, Any]) -> dict[str, Any]:
  """The disc head as JSON for the model directory's metadata (float32 round-trips exactly)."""
  return {"w": [float(x) for x in np.asarray(head["w"], np.float32)],
          "b": float(np.asarray(head["b"], np.float32))}


def head_from_json(d: dict[str, Any]) -> dict[str, jax.Array]:
  return {"w": jnp.asarray(d["w"], jnp.float32), "b": jnp.asarray(d["b"], jnp.float32)}
