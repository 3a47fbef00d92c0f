"""What an objective is, and the one registry that maps ``ObjectiveConfig.kind`` to it.

An ``Objective`` owns everything in the stack that depends on the kind of verifier trained: its
records' fields and their conversion to batch rows (``genrm_jax.data``), its synthetic batches
(``genrm_jax.synthetic``), its batch fields, loss and extra parameters (``genrm_jax.step``), what
its model directory carries, and the scoring methods a model trained with it offers
(``genrm_jax.scoring``, ``genrm_jax.eval``, ``genrm_jax.serve``). Code elsewhere asks the objective
and never tests the kind's name.

Each loss returns sums (loss, normaliser, accuracy hits, accuracy count) rather than means, so
gradient accumulation over micro-batches reproduces the full-batch gradient exactly. No loss
holds the [B, T, V] float32 logits at once: losses that need token log-probs unembed in chunks
of positions (``genrm_jax.logits``).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from genrm_jax import logits as logits_lib
from genrm_jax import model as model_lib
from genrm_jax.config import ModelConfig, ScoringConfig
from genrm_jax.objectives import rows

if TYPE_CHECKING:
  from genrm_jax.scoring_passes import ScoreResult

REGISTRY: dict[str, Objective] = {}


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  kind: str = "lm"  # a name in REGISTRY
  dpo_beta: float = 0.1
  disc_z_loss: float = 1e-4
  # disc: the weight of next-token cross-entropy on each token of a correct example's solution,
  # relative to 1 for an example's BCE: SFT on correct solutions, GenRM's lambda term, given to
  # the classifier. 0 is the paper's discriminative RM (BCE alone).
  disc_sft_weight: float = 0.0
  # disc: the weight of BCE at every token of the solution (an example's tokens averaged, so it
  # weighs this much against 1 for the BCE at its last token), the verifier of Cobbe et al. 2021
  # that predicts the label at each token; scoring still reads the last token. 0: the paper's.
  disc_token_weight: float = 0.0
  # lm: the loss weight of each Yes/No verdict token, relative to 1 for every other target token.
  # A direct verification record has one verdict among its target tokens, and the SFT records
  # mixed in (lambda) are all solution tokens: at 1, verdicts are a small share of the loss.
  verdict_weight: float = 1.0
  # Positions unembedded at a time by the losses that read token log-probs; 0:
  # ``logits.default_chunk``.
  logits_chunk: int = 0

  def __post_init__(self):
    if self.kind not in REGISTRY:
      raise ValueError(f"ObjectiveConfig.kind={self.kind!r}; expected one of {tuple(REGISTRY)}")
    if self.verdict_weight <= 0:
      raise ValueError(f"ObjectiveConfig.verdict_weight={self.verdict_weight}; must be > 0")
    for name in ("disc_sft_weight", "disc_token_weight"):
      if getattr(self, name) < 0:
        raise ValueError(f"ObjectiveConfig.{name}={getattr(self, name)}; must be >= 0")
    if self.logits_chunk < 0:
      raise ValueError(f"ObjectiveConfig.logits_chunk={self.logits_chunk}; must be >= 0")


class Terms(NamedTuple):
  """Sums over one (micro-)batch; the step divides after accumulating."""
  loss: jax.Array
  weight: jax.Array
  correct: jax.Array
  count: jax.Array


# f(params, batch, ref_params) -> Terms; params = {"model": Gemma tree, **Objective.init_params}.
LossFn = Callable[[Any, dict, Any], Terms]


@dataclasses.dataclass(frozen=True)
class Method:
  """One way to score (question, solution) pairs with a model of an objective."""
  name: str  # genrm_jax.scoring's name (also scores.jsonl's and the server's --method)
  alias: str  # genrm_jax.eval's command-line name
  # (cfg, params, vocab, questions, solutions, opts, *, seed, mesh, **Objective.scoring_params)
  score: Callable[..., ScoreResult]
  # (codec, question, solution, opts) -> positions scoring the item takes
  context: Callable[[Any, str, str, ScoringConfig], int]
  verdict: bool = False  # reads p(" Yes"): the vocabulary needs single verdict tokens
  votes: bool = False  # the mean over K sampled rationales (ScoringConfig.num_rationales)
  # Scores -> P(correct), for calibration; None when the scores are not probabilities of it.
  probability: Callable[[np.ndarray], np.ndarray] | None = None
  untuned: bool = False  # meant for a model not trained as a verifier (LLM-as-a-Judge)


class Objective(abc.ABC):
  """One kind of verifier training; subclass it and ``register`` an instance."""

  name: str  # ObjectiveConfig.kind; checkpoints and model directories record it
  # Record fields that seqio tokenizes -> whether EOS is appended to them.
  text_fields: dict[str, bool]
  # Text fields a record may leave empty (a prompt; the classifier's solution, which a policy
  # sample can be).
  may_be_empty: tuple[str, ...] = ("inputs",)
  # Record fields passed through untokenized (the names of ``columns``).
  passthrough: tuple[str, ...] = ()
  # Batch field -> (ndim of the global batch, dtype): the trainer's data contract.
  batch_fields: dict[str, tuple[int, type]]
  methods: tuple[Method, ...] = ()
  # Whether the train state keeps a frozen copy of the starting model (``TrainState.ref_params``).
  frozen_reference: bool = False
  # Sequences of seq_len tokens a batch row holds, for throughput figures.
  sequences_per_row: int = 1

  # --------------------------------------------------------------------------- records and rows

  def check_record(self, record: dict[str, Any], verdict: bool) -> str | None:
    """What is wrong with a record whose text fields are present, or None."""
    del record, verdict
    return None

  def columns(self, records: list[dict[str, Any]], verdict: bool) -> dict[str, np.ndarray]:
    """The ``passthrough`` columns of a task's records (``verdict``: the task's flag)."""
    del records, verdict
    return {}

  @abc.abstractmethod
  def converter(self, seq_len: int, vocab: Any, pack: bool) -> rows.Converter:
    """Tokenized examples -> batch rows (``pack``: several examples a row where it applies)."""

  @abc.abstractmethod
  def synthetic_batch(self, rng: np.random.Generator, batch_size: int, seq_len: int,
                      vocab_size: int) -> dict[str, np.ndarray]:
    """A learnable batch drawn from ``rng`` (``genrm_jax.synthetic``)."""

  # --------------------------------------------------------------------------- batches

  def abstract_batch(self, batch_size: int, seq_len: int, shardings: dict | None = None
                     ) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of one global batch, e.g. for ahead-of-time compilation."""
    return {name: jax.ShapeDtypeStruct((batch_size, seq_len)[:ndim], dtype,
                                       sharding=None if shardings is None else shardings[name])
            for name, (ndim, dtype) in self.batch_fields.items()}

  def check_batch(self, batch: dict[str, Any]) -> None:
    """Names the missing or misshapen field instead of failing inside the compiled step."""
    missing = sorted(set(self.batch_fields) - set(batch))
    if missing:
      raise ValueError(f"{self.name} batch lacks fields {missing}; it has {sorted(batch)}")
    for name, (ndim, _) in self.batch_fields.items():
      if np.ndim(batch[name]) != ndim:
        raise ValueError(f"{self.name} batch field {name!r} has shape {np.shape(batch[name])}; "
                         f"expected {ndim} dims")

  # --------------------------------------------------------------------------- training

  def init_params(self, cfg: ModelConfig) -> dict[str, Any]:
    """Trained parameters beside the model's, by name in ``TrainState.params``."""
    del cfg
    return {}

  def param_shardings(self, cfg: ModelConfig, mesh) -> dict[str, Any]:
    """Shardings of ``init_params``: replicated, as a small head is."""
    return jax.tree.map(lambda _: NamedSharding(mesh, P()),
                        jax.eval_shape(lambda: self.init_params(cfg)))

  @abc.abstractmethod
  def loss_terms(self, oc: ObjectiveConfig, cfg: ModelConfig) -> LossFn:
    """The loss of one (micro-)batch as ``Terms``."""

  def flops_per_example(self, oc: ObjectiveConfig, cfg: ModelConfig, seq_len: int) -> float:
    """Training matmul FLOPs per batch row, for MFU."""
    del oc
    return model_lib.flops_per_token(cfg, seq_len, training=True) * seq_len

  # --------------------------------------------------------------------------- model directories

  def model_dir_meta(self, params: dict[str, Any]) -> dict[str, Any]:
    """What the model directory's metadata carries beside the model, from the trained
    ``params`` (on devices: fetch only what is needed)."""
    del params
    return {}

  def scoring_params(self, meta: dict[str, Any], model_dir: str, what: str) -> dict[str, Any]:
    """The keyword arguments its scoring methods take, from a model directory's metadata."""
    del meta, model_dir, what
    return {}


def register(objective: Objective) -> Objective:
  """Adds ``objective`` under its name; its name and its methods' must be new."""
  taken = {n for o in REGISTRY.values() for m in o.methods for n in (m.name, m.alias)}
  clash = sorted(taken & {n for m in objective.methods for n in (m.name, m.alias)})
  if objective.name in REGISTRY or clash:
    raise ValueError(f"objective {objective.name!r}: the name or the methods {clash} are taken")
  REGISTRY[objective.name] = objective
  return objective


def get(name: str) -> Objective:
  if name not in REGISTRY:
    raise ValueError(f"unknown objective {name!r}; expected one of {tuple(REGISTRY)}")
  return REGISTRY[name]


# ----------------------------------------------------------------------------- shared by losses


def hidden_states(cfg: ModelConfig, model_params, inputs, positions, segment_ids) -> jax.Array:
  """Final hidden states [B, T, D]; ``model_params`` is a tree or a LoRA ``model.Adapted``."""
  module, variables, rngs = model_lib.bind(cfg, model_params)
  hidden, _ = module.apply(variables, inputs, positions, segment_ids, rngs=rngs,
                           method=model_lib.Transformer.hidden_states)
  return hidden


def token_stats(cfg: ModelConfig, chunk: int, model_params, batch) -> logits_lib.TokenStats:
  """Log-prob and argmax of each target token of a causal-LM batch (``rows.LM_FIELDS``); only
  positions with a loss weight are unembedded."""
  hidden = hidden_states(cfg, model_params, batch["inputs"], batch["positions"],
                         batch["segment_ids"])
  return logits_lib.token_stats(cfg, model_lib.embedding(model_params), hidden,
                                batch["targets"], chunk, where=batch["loss_weights"])
