"""Verifier scores of candidate solutions: GenRM (direct and CoT), LLM-as-a-Judge, disc, DPO.

* ``genrm``: p(" Yes") over the full vocabulary right after ``direct_prompt`` (one forward, no
  decoding); ``ScoringConfig.score="normalized"`` gives p(Yes) / (p(Yes) + p(No)) instead.
* ``genrm_cot``: K rationales sampled after ``cot_prompt``; each is cut at the verdict question (a
  stop string) or, lacking it, completed with it (``formats.ensure_verdict_question``); p(Yes) is
  read after each and the score is their mean (the paper's majority vote).
* ``llm_judge`` / ``llm_judge_cot``: the same two with an untuned model.
* ``disc``: the classifier head on the final hidden state at the last token of the solution block.
* ``dpo``: log pi(y | x), the solution's tokens (and EOS) given the question prompt.

Sequences are tokenized as the training pipeline builds them (``[BOS] + encode(inputs) +
encode(target)``). Work is shared through the KV cache (``sampler.extend``): within a chunk, the
longest common token prefix of one question's sequences (instruction + question) is prefilled once
and extended per solution; the K rationales of a solution are sampled from that solution's cache,
and each is scored by extending its own decode cache with the verdict question.
``share_prefix=False`` computes every prompt from scratch (same numbers).

An item's score depends only on the model, the item and (CoT) the seed, never on the other items
scored with it: rationale k of a prompt draws from a key derived from (seed, prompt, k), not from
its place in a batch. So a batch may hold any mix of items (the server merges concurrent requests'
items into one ``score`` call) and eval, the server and any chunking agree.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
from typing import Any, Callable, Hashable, Iterator, Sequence

import numpy as np

from genrm_jax import checkpoint, formats, objectives, records, sampler
from genrm_jax import vocab as vocab_lib
from genrm_jax.config import ModelConfig

METHODS = ("genrm", "genrm_cot", "llm_judge", "llm_judge_cot", "disc", "dpo")
VERDICT_METHODS = ("genrm", "genrm_cot", "llm_judge", "llm_judge_cot")
COT_METHODS = ("genrm_cot", "llm_judge_cot")
SCORE_KINDS = ("p_yes", "normalized")


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
  instruction: str = formats.GSM8K_INSTRUCTION
  score: str = "p_yes"  # or "normalized": p(Yes) / (p(Yes) + p(No))
  num_rationales: int = 32  # K, for the CoT methods
  rationale: sampler.SamplerConfig = sampler.SamplerConfig(
      max_new_tokens=512, temperature=0.7, stop_strings=(formats.VERDICT_PREFIX,))
  share_prefix: bool = True
  max_rows: int = 64  # rows per forward / decode batch (CoT: solutions x K)

  def __post_init__(self):
    if self.score not in SCORE_KINDS:
      raise ValueError(f"ScoringConfig.score={self.score!r}; expected one of {SCORE_KINDS}")
    if self.num_rationales < 1 or self.max_rows < 1:
      raise ValueError("ScoringConfig: num_rationales and max_rows must be >= 1")


@dataclasses.dataclass
class ScoreResult:
  scores: np.ndarray  # [n]; higher = more likely correct
  p_yes: np.ndarray | None = None  # [n] (CoT: the mean over rationales)
  p_no: np.ndarray | None = None
  rationales: list[list[str]] | None = None  # CoT: K rationales per solution, as scored
  rationale_p_yes: np.ndarray | None = None  # CoT: [n, K]
  rationale_scores: np.ndarray | None = None  # CoT: [n, K]; scores is their mean
  rationale_tokens: np.ndarray | None = None  # CoT: [n, K] tokens generated per rationale
  # Tokens of the sequences scored: each item's (CoT: its prompt and its K rationales as scored),
  # a shared prefix counted once per item. A throughput measure, not the work done.
  tokens: int = 0


# ----------------------------------------------------------------------------- shared forwards


def _lcp(seqs: Sequence[Sequence[int]]) -> int:
  n = min(len(s) for s in seqs)
  first = seqs[0]
  for i in range(n):
    if any(s[i] != first[i] for s in seqs):
      return i
  return n


_PROGRESS: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "scoring_progress", default=None)


@contextlib.contextmanager
def reporting_to(update: Callable[[int], None]) -> Iterator[None]:
  """Within it, scoring calls ``update(n)`` after each chunk of n items (e.g. a progress bar)."""
  token = _PROGRESS.set(update)
  try:
    yield
  finally:
    _PROGRESS.reset(token)


def _chunks(keys: Sequence[Hashable], rows_per_item: int, max_rows: int) -> Iterator[list[int]]:
  """Item indices grouped by key (first-seen order), cut into chunks of at most max_rows rows;
  each chunk is reported done (``reporting_to``) when the next is asked for."""
  order: dict[Hashable, list[int]] = {}
  for i, k in enumerate(keys):
    order.setdefault(k, []).append(i)
  per = max(1, max_rows // rows_per_item)
  flat = [i for members in order.values() for i in members]
  update = _PROGRESS.get()
  for j in range(0, len(flat), per):
    yield flat[j:j + per]
    if update is not None:
      update(len(flat[j:j + per]))


def _prefill(cfg, params, seqs, keys, need, *, share: bool, read_ids, token_logprobs=False,
             mesh=None):
  """Runs ``seqs`` (one chunk), sharing each key's common token prefix when ``share``.

  ``need[i]`` is the first index of ``seqs[i]`` whose output (the logits after it) is needed; the
  shared part stops before it. Returns (Prefix over the rows of ``seqs``, outputs, start) where
  ``start[i]`` is where row i's own block begins (its ``token_logprobs`` start after it).
  """
  fresh = lambda: sampler.extend(cfg, params, None, [0] * len(seqs), seqs,  # noqa: E731
                                 read_ids=read_ids, token_logprobs=token_logprobs, mesh=mesh)
  if not share:
    prefix, out = fresh()
    return prefix, out, [0] * len(seqs)
  groups: dict[Hashable, list[int]] = {}
  for i, k in enumerate(keys):
    groups.setdefault(k, []).append(i)
  heads, parent, start = [], [0] * len(seqs), [0] * len(seqs)
  for g, members in enumerate(groups.values()):
    n = min(_lcp([seqs[i] for i in members]), *(need[i] for i in members))
    if n == 0:  # nothing in common (e.g. no BOS): every row from scratch
      prefix, out = fresh()
      return prefix, out, [0] * len(seqs)
    heads.append(seqs[members[0]][:n])
    for i in members:
      parent[i], start[i] = g, n
  shared, _ = sampler.extend(cfg, params, None, [0] * len(heads), heads, mesh=mesh)
  prefix, out = sampler.extend(cfg, params, shared, parent,
                               [s[b:] for s, b in zip(seqs, start)], read_ids=read_ids,
                               token_logprobs=token_logprobs, mesh=mesh)
  return prefix, out, start


def _verdict(cfg, params, codec, yes_no, prompts, keys, opts: ScoringConfig, mesh):
  """(p_yes, p_no) after each prompt."""
  seqs = [codec.prompt_ids(p) for p in prompts]
  p = np.zeros((len(seqs), 2))
  for chunk in _chunks(keys, 1, opts.max_rows):
    sub = [seqs[i] for i in chunk]
    _, out, _ = _prefill(cfg, params, sub, [keys[i] for i in chunk], [len(s) - 1 for s in sub],
                         share=opts.share_prefix, read_ids=yes_no, mesh=mesh)
    p[chunk] = np.exp(out["read_logprobs"])
  return p[:, 0], p[:, 1], sum(map(len, seqs))


def _row_seed(prompt: str, k: int) -> int:
  """The 32-bit stream of rationale k of ``prompt`` (the same in any batch, process or run)."""
  digest = hashlib.blake2b(f"{k}\0{prompt}".encode(), digest_size=4).digest()
  return int.from_bytes(digest, "little")


def _cot(cfg, params, codec, yes_no, prompts, keys, opts: ScoringConfig, seed: int, mesh):
  """(p_yes [n, K], p_no [n, K], rationales, generated tokens [n, K]) with K rationales sampled
  after each prompt."""
  k = opts.num_rationales
  seqs = [codec.prompt_ids(p) for p in prompts]
  p = np.zeros((len(seqs), k, 2))
  generated = np.zeros((len(seqs), k), np.int64)
  texts: list[list[str]] = [[] for _ in seqs]
  tokens = sum(map(len, seqs))
  for chunk in _chunks(keys, k, opts.max_rows):
    sub = [seqs[i] for i in chunk]
    if opts.share_prefix:  # K samples decode from (and are scored on) one cache per solution
      prefix, _, _ = _prefill(cfg, params, sub, [keys[i] for i in chunk],
                              [len(s) - 1 for s in sub], share=True, read_ids=yes_no, mesh=mesh)
      parent = np.repeat(np.arange(len(sub)), k).tolist()
    else:  # every sample prefills its own copy of the prompt
      sub = [s for s in sub for _ in range(k)]
      prefix, _, _ = _prefill(cfg, params, sub, None, None, share=False, read_ids=yes_no,
                              mesh=mesh)
      parent = list(range(len(sub)))
    comps, sampled = sampler.decode(
        cfg, params, prefix, parent, codec, opts.rationale, seed=seed, mesh=mesh,
        row_seeds=[_row_seed(prompts[i], j) for i in chunk for j in range(k)],
        return_prefix=True)
    rationale = [formats.ensure_verdict_question(x.text) for x in comps]
    blocks = [codec.encode(r) for r in rationale]
    tokens += sum(map(len, blocks))
    # p(Yes) is read after the rationale's own tokenization. The decode cache already holds
    # the sampled tokens; the longest prefix that agrees with it is kept (at least the last
    # token is fed again, for its logits) and only the rest (the verdict question, and
    # whatever the text cut or re-tokenization changed) is extended. A local-layer ring cache
    # that cannot forget the rest exactly falls back to extending the prompts' cache.
    keep = [min(_lcp([x.token_ids[:-1], b]), len(b) - 1) for x, b in zip(comps, blocks)]
    drop = [len(x.token_ids) - 1 - n for x, n in zip(comps, keep)]
    if sampler.can_rewind(sampled, drop):
      _, out = sampler.extend(cfg, params, sampler.rewind(sampled, drop),
                              list(range(len(comps))), [b[n:] for b, n in zip(blocks, keep)],
                              read_ids=yes_no, mesh=mesh)
    else:
      _, out = sampler.extend(cfg, params, prefix, parent, blocks, read_ids=yes_no, mesh=mesh)
    p[chunk] = np.exp(out["read_logprobs"]).reshape(len(chunk), k, 2)
    generated[chunk] = np.array([len(x.token_ids) for x in comps]).reshape(len(chunk), k)
    for j, i in enumerate(chunk):
      texts[i] = rationale[j * k:(j + 1) * k]
  return p[..., 0], p[..., 1], texts, generated, tokens


def _score(p_yes, p_no, opts: ScoringConfig):
  return p_yes if opts.score == "p_yes" else p_yes / (p_yes + p_no)


def _disc_text(question: str, solution: str, instruction: str) -> str:
  (rec,) = records.discriminative([{"question": question, "solution": solution,
                                    "correct": False}], instruction)
  return rec["inputs"]


def _dpo_ids(codec, question: str, solution: str, instruction: str):
  """(x, y): the question prompt and the solution as DPO trains it (stripped, then EOS)."""
  x = codec.prompt_ids(formats.question_prompt(question, instruction))
  return x, codec.encode(solution.rstrip("\n")) + [codec.eos_id]


def context_needed(method: str, vocab: Any, question: str, solution: str,
                   opts: ScoringConfig = ScoringConfig()) -> int:
  """Positions scoring one item takes: what must fit in the model's ``max_seq_len``.

  CoT counts the longest rationale (``opts.rationale.max_new_tokens``) and the verdict question
  appended after it.
  """
  codec = sampler.as_codec(vocab)
  if method in ("genrm", "llm_judge"):
    return len(codec.prompt_ids(formats.direct_prompt(question, solution, opts.instruction)))
  if method in COT_METHODS:
    return (len(codec.prompt_ids(formats.cot_prompt(question, solution, opts.instruction)))
            + opts.rationale.max_new_tokens + len(codec.encode("\n" + formats.VERDICT_QUESTION)))
  if method == "disc":
    return len(codec.prompt_ids(_disc_text(question, solution, opts.instruction)))
  if method == "dpo":
    return sum(map(len, _dpo_ids(codec, question, solution, opts.instruction)))
  raise ValueError(f"context_needed: unknown method {method!r}; expected one of {METHODS}")


# ----------------------------------------------------------------------------- methods


def genrm(cfg: ModelConfig, params, vocab: Any, questions: Sequence[str],
          solutions: Sequence[str], opts: ScoringConfig = ScoringConfig(), mesh=None,
          ) -> ScoreResult:
  """Direct GenRM: p(" Yes") after the verdict question, one forward pass per solution."""
  codec = sampler.as_codec(vocab)
  prompts = [formats.direct_prompt(q, s, opts.instruction) for q, s in zip(questions, solutions)]
  yes_no = vocab_lib.verdict_token_ids(vocab)
  p_yes, p_no, tokens = _verdict(cfg, params, codec, yes_no, prompts, questions, opts, mesh)
  return ScoreResult(_score(p_yes, p_no, opts), p_yes, p_no, tokens=tokens)


def genrm_cot(cfg: ModelConfig, params, vocab: Any, questions: Sequence[str],
              solutions: Sequence[str], opts: ScoringConfig = ScoringConfig(), seed: int = 0,
              mesh=None) -> ScoreResult:
  """GenRM-CoT: the mean over K sampled rationales of p(" Yes") after each."""
  codec = sampler.as_codec(vocab)
  prompts = [formats.cot_prompt(q, s, opts.instruction) for q, s in zip(questions, solutions)]
  yes_no = vocab_lib.verdict_token_ids(vocab)
  p_yes, p_no, texts, generated, tokens = _cot(cfg, params, codec, yes_no, prompts, questions,
                                               opts, seed, mesh)
  per = _score(p_yes, p_no, opts)
  return ScoreResult(per.mean(axis=1), p_yes.mean(axis=1), p_no.mean(axis=1), texts, p_yes, per,
                     generated, tokens)


def disc(cfg: ModelConfig, params, head: dict, vocab: Any, questions: Sequence[str],
         solutions: Sequence[str], opts: ScoringConfig = ScoringConfig(), mesh=None,
         ) -> ScoreResult:
  """The discriminative RM's logit (``objectives.disc_score``) at the solution's last token."""
  codec = sampler.as_codec(vocab)
  seqs = [codec.prompt_ids(_disc_text(q, s, opts.instruction))
          for q, s in zip(questions, solutions)]
  scores = np.zeros(len(seqs))
  for chunk in _chunks(questions, 1, opts.max_rows):
    sub = [seqs[i] for i in chunk]
    _, out, _ = _prefill(cfg, params, sub, [questions[i] for i in chunk],
                         [len(s) - 1 for s in sub], share=opts.share_prefix, read_ids=(0,),
                         mesh=mesh)
    hidden = out["last_hidden"][:, None, :]  # [M, 1, D]: the last token is the only one
    scores[chunk] = np.asarray(objectives.disc_score(hidden, head, np.zeros(len(sub), np.int32)))
  return ScoreResult(scores, tokens=sum(map(len, seqs)))


def dpo(cfg: ModelConfig, params, vocab: Any, questions: Sequence[str],
        solutions: Sequence[str], opts: ScoringConfig = ScoringConfig(), mesh=None,
        ) -> ScoreResult:
  """log pi(y | x): the solution as DPO trains it (``records.dpo_pairs``: stripped, then EOS)."""
  codec = sampler.as_codec(vocab)
  seqs, cut = [], []
  for q, s in zip(questions, solutions):
    x, y = _dpo_ids(codec, q, s, opts.instruction)
    seqs.append(x + y)
    cut.append(len(x))
  scores = np.zeros(len(seqs))
  for chunk in _chunks(questions, 1, opts.max_rows):
    sub = [seqs[i] for i in chunk]
    # The logits after the prompt's last token predict y's first: keep that token unshared.
    _, out, start = _prefill(cfg, params, sub, [questions[i] for i in chunk],
                             [cut[i] - 1 for i in chunk], share=opts.share_prefix, read_ids=(0,),
                             token_logprobs=True, mesh=mesh)
    for j, i in enumerate(chunk):
      scores[i] = float(np.sum(out["token_logprobs"][j][cut[i] - 1 - start[j]:]))
  return ScoreResult(scores, tokens=sum(map(len, seqs)))


def score(method: str, cfg: ModelConfig, params, vocab: Any, questions: Sequence[str],
          solutions: Sequence[str], opts: ScoringConfig = ScoringConfig(), *,
          head: dict | None = None, seed: int = 0, mesh=None) -> ScoreResult:
  """One entry point for every verifier; ``llm_judge*`` are GenRM with an untuned model."""
  if len(questions) != len(solutions):
    raise ValueError(f"score: {len(questions)} questions but {len(solutions)} solutions")
  if method in ("genrm", "llm_judge"):
    return genrm(cfg, params, vocab, questions, solutions, opts, mesh)
  if method in ("genrm_cot", "llm_judge_cot"):
    return genrm_cot(cfg, params, vocab, questions, solutions, opts, seed, mesh)
  if method == "disc":
    if head is None:
      raise ValueError("score: method 'disc' needs the classifier head (head=...)")
    return disc(cfg, params, head, vocab, questions, solutions, opts, mesh)
  if method == "dpo":
    return dpo(cfg, params, vocab, questions, solutions, opts, mesh)
  raise ValueError(f"score: unknown method {method!r}; expected one of {METHODS}")


# ----------------------------------------------------------------------------- loaded verifiers


@dataclasses.dataclass(frozen=True)
class Verifier:
  """A model directory loaded for scoring (on ``mesh``, or the default device)."""
  model_dir: str
  cfg: ModelConfig
  params: Any
  vocab: Any
  head: dict | None = None  # the discriminative head, when the directory has one
  mesh: Any = None

  def score(self, method: str, questions: Sequence[str], solutions: Sequence[str],
            opts: ScoringConfig = ScoringConfig(), seed: int = 0) -> ScoreResult:
    return score(method, self.cfg, self.params, self.vocab, questions, solutions, opts,
                 head=self.head, seed=seed, mesh=self.mesh)


def load_verifier(model_dir: str, method: str, mesh=None, what: str = "verifier") -> Verifier:
  """Loads ``model_dir`` for ``method``; an error naming ``what`` if it cannot serve it."""
  if method not in METHODS:
    raise ValueError(f"{what}: unknown method {method!r}; expected one of {METHODS}")
  cfg, params, meta, vocab = checkpoint.load_model_and_vocab(
      model_dir, mesh, need_verdict=method in VERDICT_METHODS, what=what)
  head = None
  if method == "disc":
    if "disc_head" not in meta:
      raise ValueError(f"{what}: {model_dir} has no disc_head: method {method} needs a "
                       "model trained with the disc objective")
    head = objectives.head_from_json(meta["disc_head"])
  return Verifier(model_dir, cfg, params, vocab, head, mesh)
