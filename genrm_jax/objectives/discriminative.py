"""``disc``: the discriminative reward model, a scalar head on the final hidden state.

The head reads the last token of ``records.discriminative``'s question prompt + solution; the
loss is binary cross-entropy on correct (1) / incorrect (0), plus an optional z-loss
``z_loss * log(1 + e^s)^2`` (the squared log partition function of the logits (0, s); the
paper's appendix reports 1e-4) that keeps the score from drifting, plus, with
``ObjectiveConfig.disc_sft_weight`` > 0, next-token cross-entropy on the solution tokens of the
correct examples (SFT on correct solutions, as GenRM mixes in), plus, with
``ObjectiveConfig.disc_token_weight`` > 0, the mean BCE of the head at each solution token (the
label predicted from every prefix, as Cobbe et al. 2021's verifier). The loss is normalised by
the number of examples. Records {"inputs", "targets", "label"} -> rows packed like the LM
objective's (each example [BOS] inputs targets, its own segment, its positions from 0):
"score_weights" is 1 at each example's last token, "labels" its label (1.0 = correct solution)
at each of its positions, "token_weights" 1 / (solution length) at each solution token;
"targets" / "loss_weights" are the next token and the SFT weight. One example
a row left rows of the last-letters verifier data under half full. Score (``disc``): the head's
logit s. The model directory's metadata carries the head (``disc_head``).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genrm_jax import logits as logits_lib
from genrm_jax import model as model_lib
from genrm_jax import records, sampler
from genrm_jax import scoring_passes as passes
from genrm_jax.config import ModelConfig, ScoringConfig
from genrm_jax.objectives import base, rows

_META_KEY = "disc_head"


def init_head(cfg: ModelConfig) -> dict[str, jax.Array]:
  """The head: zeros, so every solution starts at score 0 (p = 0.5)."""
  return {"w": jnp.zeros((cfg.embed_dim,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def disc_score(hidden: jax.Array, head: dict[str, jax.Array]) -> jax.Array:
  """The head's logit at every position: final hidden states [..., D] -> [...]."""
  return jnp.einsum("...D,D->...", hidden.astype(jnp.float32), head["w"]) + head["b"]


def head_to_json(head: dict[str, Any]) -> dict[str, Any]:
  """The head as JSON for the model directory's metadata (float32 round-trips exactly)."""
  return {"w": [float(x) for x in np.asarray(head["w"], np.float32)],
          "b": float(np.asarray(head["b"], np.float32))}


def head_from_json(d: dict[str, Any]) -> dict[str, jax.Array]:
  return {"w": jnp.asarray(d["w"], jnp.float32), "b": jnp.asarray(d["b"], jnp.float32)}


# ----------------------------------------------------------------------------- scoring


def _ids(codec: sampler.Codec, question: str, solution: str, instruction: str) -> list[int]:
  """The example as training tokenizes it: prompt and solution each on their own."""
  (rec,) = records.discriminative([{"question": question, "solution": solution,
                                    "correct": False}], instruction)
  return codec.prompt_ids(rec["inputs"]) + codec.encode(rec["targets"])


def _score(cfg: ModelConfig, params, vocab: Any, questions: Sequence[str],
           solutions: Sequence[str], opts: ScoringConfig, *, seed: int, mesh,
           head: dict | None = None) -> passes.ScoreResult:
  """The head's logit at the solution's last token."""
  del seed
  if head is None:
    raise ValueError("score: method 'disc' needs the classifier head (head=...)")
  codec = sampler.as_codec(vocab)
  seqs = [_ids(codec, q, s, opts.instruction) for q, s in zip(questions, solutions)]
  scores = np.zeros(len(seqs))
  for chunk in passes.chunks(questions, 1, opts.max_rows):
    sub = [seqs[i] for i in chunk]
    _, out, _ = passes.prefill(cfg, params, sub, [questions[i] for i in chunk],
                               [len(s) - 1 for s in sub], share=opts.share_prefix,
                               read_ids=(0,), mesh=mesh)
    scores[chunk] = np.asarray(disc_score(out["last_hidden"], head))  # [M, D] -> [M]
  return passes.ScoreResult(scores, tokens=sum(map(len, seqs)))


def _context(codec, question: str, solution: str, opts: ScoringConfig) -> int:
  return len(_ids(codec, question, solution, opts.instruction))


def _sigmoid(scores: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-scores))


# ----------------------------------------------------------------------------- rows


_SEGMENT = {"inputs": np.int32, "score_weights": np.float32, "labels": np.float32,
            "targets": np.int32, "loss_weights": np.float32, "token_weights": np.float32}


def _row(segments, seq_len: int) -> rows.Row:
  """One row of (tokens, label, solution start) segments, zero-padded; each scored at its last
  token (and, for ``disc_token_weight``, at each of its solution tokens), a correct one's
  solution tokens also the targets of its SFT term."""
  def arrays(seq, label, start):
    at_end = np.zeros(len(seq), np.float32)
    at_end[-1] = 1.0
    targets = np.append(seq[1:], 0).astype(np.int32)
    sft = np.zeros(len(seq), np.float32)
    sft[start - 1:-1] = label  # positions whose next token is a solution token
    per_token = np.zeros(len(seq), np.float32)
    per_token[start:] = 1.0 / max(1, len(seq) - start)  # positions that have read a solution token
    return seq, at_end, np.full(len(seq), label, np.float32), targets, sft, per_token
  return rows.packed_row([arrays(*seg) for seg in segments], seq_len, _SEGMENT)


class _Rows(rows.Converter):
  """Packed rows of [BOS] inputs targets segments, each scored at its last token."""

  def __init__(self, seq_len: int, vocab: Any, pack: bool):
    super().__init__(seq_len, vocab)
    self.packer = rows.Packer(seq_len, pack)

  def add(self, ex: dict[str, np.ndarray]) -> list[rows.Row]:
    seq = np.concatenate([[self.bos], ex["inputs"], ex["targets"]]).astype(np.int32)
    if len(seq) > self.seq_len:
      self.too_long(truncated=False)
      return []
    self.stats.examples += 1
    self.stats.tokens += len(seq)
    segment = (seq, float(ex["label"]), 1 + len(ex["inputs"]))
    return [_row(segs, self.seq_len) for segs in self.packer.add(segment)]

  def flush(self) -> list[rows.Row]:
    return [_row(segs, self.seq_len) for segs in self.packer.flush()]

  def empty_row(self) -> rows.Row:
    return _row([], self.seq_len)


# ----------------------------------------------------------------------------- the objective


class Discriminative(base.Objective):
  """The discriminative reward model (see the module docstring)."""

  name = "disc"
  text_fields = {"inputs": False, "targets": False}
  may_be_empty = ("inputs", "targets")
  passthrough = ("label",)
  batch_fields = {"inputs": (2, np.int32), "positions": (2, np.int32),
                  "segment_ids": (2, np.int32), "score_weights": (2, np.float32),
                  "labels": (2, np.float32), "targets": (2, np.int32),
                  "loss_weights": (2, np.float32), "token_weights": (2, np.float32)}
  methods = (base.Method("disc", "discriminative", _score, _context, probability=_sigmoid),)

  def check_record(self, record: dict[str, Any], verdict: bool) -> str | None:
    if record.get("label") not in (0, 1, 0.0, 1.0, True, False):
      return f"label must be 0/1, got {record.get('label')!r}"
    return None

  def columns(self, records: list[dict[str, Any]], verdict: bool) -> dict[str, np.ndarray]:
    return {"label": np.array([float(r["label"]) for r in records], np.float32)}

  def converter(self, seq_len: int, vocab: Any, pack: bool) -> rows.Converter:
    return _Rows(seq_len, vocab, pack)

  def synthetic_batch(self, rng: np.random.Generator, batch_size: int, seq_len: int,
                      vocab_size: int) -> dict[str, np.ndarray]:
    """Two packed examples a row (the second may be cut short by padding); label 1 when an
    example's last token lies in the lower half of the vocabulary."""
    mid = (rows.FIRST_CONTENT_ID + vocab_size) // 2
    out = []
    for _ in range(batch_size):
      first = int(rng.integers(1, seq_len // 2 + 1))
      second = int(rng.integers(1, seq_len - first + 1))
      segs = [rng.integers(rows.FIRST_CONTENT_ID, vocab_size, size=n) for n in (first, second)]
      out.append(_row([(s, float(s[-1] < mid), (len(s) + 1) // 2) for s in segs], seq_len))
    return {k: np.stack([r[k] for r in out]) for k in out[0]}

  def init_params(self, cfg: ModelConfig) -> dict[str, Any]:
    return {"head": init_head(cfg)}

  def loss_terms(self, oc: base.ObjectiveConfig, cfg: ModelConfig) -> base.LossFn:
    def terms(params, batch, ref_params) -> base.Terms:
      del ref_params
      hidden = base.hidden_states(cfg, params["model"], batch["inputs"], batch["positions"],
                                  batch["segment_ids"])
      score = disc_score(hidden, params["head"])  # [B, T]: cheap next to the trunk
      w, labels = batch["score_weights"], batch["labels"]
      loss = optax.sigmoid_binary_cross_entropy(score, labels)
      loss += oc.disc_z_loss * jnp.square(jax.nn.softplus(score))
      bce_w = w  # the last tokens; with disc_token_weight (static) every solution token as well
      if oc.disc_token_weight:
        bce_w = w + oc.disc_token_weight * batch["token_weights"]
      total = jnp.sum(bce_w * loss)
      if oc.disc_sft_weight:  # static: the paper's baseline never unembeds
        stats = logits_lib.token_stats(cfg, model_lib.embedding(params["model"]), hidden,
                                       batch["targets"], oc.logits_chunk,
                                       where=batch["loss_weights"])
        total -= oc.disc_sft_weight * jnp.sum(stats.logprob * batch["loss_weights"])
      hit = ((score > 0) == (labels > 0.5)).astype(jnp.float32)
      n = jnp.sum(w)
      return base.Terms(total, n, jnp.sum(w * hit), n)
    return terms

  def model_dir_meta(self, params: dict[str, Any]) -> dict[str, Any]:
    return {_META_KEY: head_to_json(jax.device_get(params["head"]))}

  def scoring_params(self, meta: dict[str, Any], model_dir: str, what: str) -> dict[str, Any]:
    if _META_KEY not in meta:
      raise ValueError(f"{what}: {model_dir} has no {_META_KEY}: method "
                       f"{self.methods[0].name} needs a model trained with the {self.name} "
                       "objective")
    return {"head": head_from_json(meta[_META_KEY])}
