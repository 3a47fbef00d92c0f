"""The model passes every verifier score is read from, as ``config.ScoringConfig`` configures them.

Each objective's scoring methods (``genrm_jax.objectives``; ``genrm_jax.scoring`` picks one by
name) are built from these. Sequences are tokenized as the training pipeline builds them
(``[BOS] + encode(inputs) + encode(target)``). Work is shared through the KV cache
(``sampler.extend``): within a chunk, the longest common token prefix of one question's sequences
(instruction + question) is prefilled once and extended per solution; the K rationales of a
solution are sampled from that solution's cache, and each is scored by extending its own decode
cache with the verdict question. ``share_prefix=False`` computes every prompt from scratch (same
numbers).

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
from typing import Callable, Hashable, Iterator, Sequence

import numpy as np

from genrm_jax import formats, sampler
from genrm_jax.config import ScoringConfig


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


def chunks(keys: Sequence[Hashable], rows_per_item: int, max_rows: int) -> Iterator[list[int]]:
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


def prefill(cfg, params, seqs, keys, need, *, share: bool, read_ids, token_logprobs=False,
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


def read_verdicts(cfg, params, codec, yes_no, prompts, keys, opts: ScoringConfig, mesh):
  """(p_yes, p_no) after each prompt."""
  seqs = [codec.prompt_ids(p) for p in prompts]
  p = np.zeros((len(seqs), 2))
  for chunk in chunks(keys, 1, opts.max_rows):
    sub = [seqs[i] for i in chunk]
    _, out, _ = prefill(cfg, params, sub, [keys[i] for i in chunk], [len(s) - 1 for s in sub],
                        share=opts.share_prefix, read_ids=yes_no, mesh=mesh)
    p[chunk] = np.exp(out["read_logprobs"])
  return p[:, 0], p[:, 1], sum(map(len, seqs))


def _row_seed(prompt: str, k: int) -> int:
  """The 32-bit stream of rationale k of ``prompt`` (the same in any batch, process or run)."""
  digest = hashlib.blake2b(f"{k}\0{prompt}".encode(), digest_size=4).digest()
  return int.from_bytes(digest, "little")


def sample_verdicts(cfg, params, codec, yes_no, prompts, keys, opts: ScoringConfig, seed: int,
                    mesh):
  """(p_yes [n, K], p_no [n, K], rationales, generated tokens [n, K]) with K rationales sampled
  after each prompt."""
  k = opts.num_rationales
  seqs = [codec.prompt_ids(p) for p in prompts]
  p = np.zeros((len(seqs), k, 2))
  generated = np.zeros((len(seqs), k), np.int64)
  texts: list[list[str]] = [[] for _ in seqs]
  tokens = sum(map(len, seqs))
  for chunk in chunks(keys, k, opts.max_rows):
    sub = [seqs[i] for i in chunk]
    if opts.share_prefix:  # K samples decode from (and are scored on) one cache per solution
      prefix, _, _ = prefill(cfg, params, sub, [keys[i] for i in chunk],
                             [len(s) - 1 for s in sub], share=True, read_ids=yes_no, mesh=mesh)
      parent = np.repeat(np.arange(len(sub)), k).tolist()
    else:  # every sample prefills its own copy of the prompt
      sub = [s for s in sub for _ in range(k)]
      prefix, _, _ = prefill(cfg, params, sub, None, None, share=False, read_ids=yes_no,
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
      read = _read_by_length(cfg, params, sampler.rewind(sampled, drop), list(range(len(comps))),
                             [b[n:] for b, n in zip(blocks, keep)], yes_no, mesh)
    else:
      read = _read_by_length(cfg, params, prefix, parent, blocks, yes_no, mesh)
    p[chunk] = np.exp(read).reshape(len(chunk), k, 2)
    generated[chunk] = np.array([len(x.token_ids) for x in comps]).reshape(len(chunk), k)
    for j, i in enumerate(chunk):
      texts[i] = rationale[j * k:(j + 1) * k]
  return p[..., 0], p[..., 1], texts, generated, tokens


# Verdict reads per chunk of rationales. Each read extends a quarter of the chunk's rows, those of
# similar length (sorted): most rationales need only the verdict question, and one whose
# re-tokenization changed early must not make every row of the chunk that long. Quarters, not
# one group per length, so that the shapes (and compilations) do not vary from chunk to chunk.
_READ_GROUPS = 4


def _read_by_length(cfg, params, prefix, parent, blocks, read_ids, mesh) -> np.ndarray:
  """``read_logprobs`` after each ``blocks[i]`` extending row ``parent[i]`` of ``prefix``."""
  order = np.argsort([len(b) for b in blocks], kind="stable")
  size = -(-len(blocks) // _READ_GROUPS)
  read = np.zeros((len(blocks), len(read_ids)), np.float32)
  for j in range(0, len(blocks), size):
    rows = order[j:j + size]
    _, out = sampler.extend(cfg, params, prefix, [parent[i] for i in rows],
                            [blocks[i] for i in rows], read_ids=read_ids, mesh=mesh)
    read[rows] = out["read_logprobs"]
  return read


def verdict_score(p_yes, p_no, opts: ScoringConfig):
  """The score ``opts.score`` names, from p(Yes) and p(No)."""
  return p_yes if opts.score == "p_yes" else p_yes / (p_yes + p_no)
