"""seqio tasks built from in-memory records, and the numpy batches the trainer consumes.

Records (lists of dicts of strings) are read by ``genrm_jax.gsm8k_release`` /
``genrm_jax.word_puzzles`` and handed to seqio as in-memory tensors: a shuffled index dataset
gathering from constants (like ``from_tensor_slices``; a ``from_generator`` source hung on this
machine). Three record kinds:

- ``lm``:   {"inputs", "targets"}; in a ``verdict`` task the targets end in " Yes" / " No".
- ``disc``: {"inputs", "label"} -> batch "labels" (1.0 = correct solution); one example a row, never packed.
- ``dpo``:  {"inputs", "chosen", "rejected"}; one pair a row, never packed.

Feature conversion happens in numpy after seqio's tokenization and mixing. It is decoder-only and
causal everywhere (Gemma runs causally, so the prefix is NOT bidirectional as in seqio's
PrefixLMFeatureConverter): each example is ``[BOS] inputs targets [EOS]`` shifted by one, with loss
only where the next token is a target token; examples are packed into fixed-length rows, each with
its own segment id and positions restarting at 0. Nothing is truncated silently: an example longer
than the row is truncated only if it has no verdict (and keeps at least one target token), otherwise
dropped; both are counted in ``BatchIterator.stats`` and logged.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from genrm_jax import startup

tf = startup.import_tensorflow()
import seqio  # pylint: disable=g-import-not-at-top,g-bad-import-order  (after TensorFlow, quietly)

from genrm_jax import formats
from genrm_jax import vocab as vocab_lib

Record = dict[str, Any]
Loader = Callable[[str], Sequence[Record]]
KINDS = ("lm", "disc", "dpo")
_TEXT_FIELDS = {"lm": ("inputs", "targets"), "disc": ("inputs",),
                "dpo": ("inputs", "chosen", "rejected")}
_EOS_FIELDS = ("targets", "chosen", "rejected")
_PASSTHROUGH = ("verdict", "label")
# With repeat=True a task whose examples are all too long would otherwise loop forever.
_MAX_DROPPED_BEFORE_ANY = 10_000
_CROSSING_BATCH = 256
_DPO_FIELDS = ("inputs", "targets", "loss_weights", "positions", "segment_ids")


class DeferredVocabulary(seqio.Vocabulary):
  """Delegates to ``vocab.default_vocab()``: tasks register on import, before any vocabulary."""

  def __init__(self):
    super().__init__(extra_ids=0)

  @property
  def _v(self) -> seqio.Vocabulary:
    return vocab_lib.default_vocab().seqio()

  @property
  def eos_id(self) -> int | None:
    return self._v.eos_id

  @property
  def unk_id(self) -> int | None:
    return self._v.unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self._v.vocab_size

  def _encode(self, s: str) -> Sequence[int]:
    return self._v.encode(s)

  def _decode(self, ids):
    return self._v.decode(ids)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self._v.encode_tf(s)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return self._v.decode_tf(ids)

  def __eq__(self, other):
    return isinstance(other, DeferredVocabulary)

  def __hash__(self):
    return hash(DeferredVocabulary)


_VOCAB = DeferredVocabulary()


def _features(kind: str) -> dict[str, seqio.Feature]:
  return {k: seqio.Feature(_VOCAB, add_eos=k in _EOS_FIELDS) for k in _TEXT_FIELDS[kind]}


# ------------------------------------------------------------------------------------------------
# Registration.

TASK_KIND: dict[str, str] = {}


def _validate(name: str, split: str, kind: str, verdict: bool, records: Sequence[Record]) -> None:
  if not records:
    raise ValueError(f"task {name!r}: split {split!r} has no records")
  for i, r in enumerate(records):
    where = r.get("where", f"record {i}")
    for k in _TEXT_FIELDS[kind]:
      v = r.get(k)
      if not isinstance(v, str) or (k != "inputs" and not v.strip()):
        raise ValueError(f"task {name!r} split {split!r} ({where}): field {k!r} is missing, "
                         f"empty or not a string: {v!r:.80}")
    if kind == "lm" and verdict and formats.target_verdict(r["targets"]) is None:
      raise ValueError(f"task {name!r} split {split!r} ({where}): target does not end in "
                       f"{formats.YES!r} / {formats.NO!r}: ...{r['targets'][-60:]!r}")
    if kind == "disc" and r.get("label") not in (0, 1, 0.0, 1.0, True, False):
      raise ValueError(f"task {name!r} split {split!r} ({where}): label must be 0/1, got "
                       f"{r.get('label')!r}")


def register_task(name: str, kind: str, loader: Loader, splits: Sequence[str],
                  verdict: bool = False) -> None:
  """Registers (or replaces) seqio task ``name``; a split's records come from ``loader(split)``.

  ``loader`` runs lazily, on first use of a split, and its records are validated then: registering
  never touches data, so a missing data directory fails only when the task is used.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

  @functools.lru_cache(maxsize=None)
  def columns(split: str) -> dict[str, np.ndarray]:
    records = loader(split)
    _validate(name, split, kind, verdict, records)
    cols = {k: np.array([r[k] for r in records], dtype=object) for k in _TEXT_FIELDS[kind]}
    if kind == "lm":
      cols["verdict"] = np.full(len(records), int(verdict), np.int32)
    if kind == "disc":
      cols["label"] = np.array([float(r["label"]) for r in records], np.float32)
    return cols

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files  # seqio's flag also turns on its (slower, partial) buffer shuffle: unused
    cols = columns(split)
    n = len(cols["inputs"])
    consts = {k: tf.constant(v) for k, v in cols.items()}
    idx = tf.data.Dataset.range(n)
    if seed is not None:
      # A full permutation of the in-memory records, redrawn every epoch (the task repeats above).
      idx = idx.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return idx.map(lambda i: {k: tf.gather(v, i) for k, v in consts.items()})

  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=tuple(splits)),
      preprocessors=[functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                     seqio.preprocessors.append_eos],
      output_features=_features(kind))
  TASK_KIND[name] = kind


def register_mixture(name: str, tasks: Sequence[tuple[str, float]]) -> None:
  """Registers (or replaces) a mixture sampling its tasks with the given rates."""
  kinds = {TASK_KIND[t] for t, _ in tasks}
  if len(kinds) != 1:
    raise ValueError(f"mixture {name!r} mixes record kinds {sorted(kinds)}")
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(tasks))
  TASK_KIND[name] = kinds.pop()


# ------------------------------------------------------------------------------------------------
# Feature conversion.


@dataclasses.dataclass
class Stats:
  """What the pipeline did to the examples so far (this host only)."""
  examples: int = 0      # examples placed in rows
  tokens: int = 0        # real tokens placed in rows
  rows: int = 0
  truncated: int = 0     # examples cut to the row length (never ones with a verdict)
  dropped: int = 0       # examples longer than a row that could not be truncated
  batches: int = 0
  seq_len: int = 0

  def summary(self) -> str:
    # Tokens are counted when placed, rows when closed: mid-stream the open rows are not in it.
    fill = (f"{self.tokens / (self.rows * self.seq_len):.1%} full" if self.rows
            else "no row closed yet")
    return (f"{self.examples} examples in {self.rows} rows ({fill}), "
            f"{self.truncated} truncated, {self.dropped} dropped as too long")


class _Packer:
  """First-fit packing into a small pool of open rows; completed rows come out in FIFO order."""

  def __init__(self, seq_len: int, pack: bool, max_open: int = 8):
    self.seq_len, self.pack, self.max_open = seq_len, pack, max_open if pack else 1
    self.open: collections.deque[list[tuple[np.ndarray, ...]]] = collections.deque()
    self.used: collections.deque[int] = collections.deque()

  def add(self, seg: tuple[np.ndarray, ...]) -> list[list[tuple[np.ndarray, ...]]]:
    n = len(seg[0])
    if self.pack:
      for i, used in enumerate(self.used):
        if used + n <= self.seq_len:
          self.open[i].append(seg)
          self.used[i] += n
          return []
    self.open.append([seg])
    self.used.append(n)
    out = []
    while len(self.open) > self.max_open or (not self.pack and self.open):
      out.append(self.open.popleft())
      self.used.popleft()
    return out

  def flush(self) -> list[list[tuple[np.ndarray, ...]]]:
    out = list(self.open)
    self.open.clear()
    self.used.clear()
    return out


def _lm_row(segments, seq_len: int) -> dict[str, np.ndarray]:
  row = {k: np.zeros(seq_len, np.int32) for k in ("inputs", "targets", "positions", "segment_ids")}
  row.update({k: np.zeros(seq_len, np.float32) for k in ("loss_weights", "verdict_weights")})
  start = 0
  for sid, (inp, tgt, lw, vw) in enumerate(segments, start=1):
    sl = slice(start, start + len(inp))
    row["inputs"][sl], row["targets"][sl] = inp, tgt
    row["loss_weights"][sl], row["verdict_weights"][sl] = lw, vw
    row["positions"][sl] = np.arange(len(inp))
    row["segment_ids"][sl] = sid
    start += len(inp)
  return row


class _Converter:
  """Turns tokenized examples into fixed-length rows, counting what does not fit."""

  def __init__(self, kind: str, seq_len: int, vocab: vocab_lib.Vocab, pack: bool):
    self.kind, self.seq_len, self.bos = kind, seq_len, vocab.bos_id
    self.verdict_ids = vocab_lib.verdict_token_ids(vocab) if kind == "lm" else None
    self.packer = _Packer(seq_len, pack and kind == "lm")
    self.stats = Stats(seq_len=seq_len)
    self._warned = False

  def _too_long(self, truncated: bool) -> None:
    if truncated:
      self.stats.truncated += 1
    else:
      self.stats.dropped += 1
      if self.stats.dropped >= _MAX_DROPPED_BEFORE_ANY and not self.stats.examples:
        raise ValueError(f"the first {self.stats.dropped} examples are all longer than "
                         f"seq_len={self.seq_len}: raise seq_len")
    if not self._warned:
      self._warned = True
      logging.warning("input pipeline: an example is longer than seq_len=%d (%s); so far: %s",
                      self.seq_len, "truncated" if truncated else "dropped", self.stats.summary())

  def _shifted(self, prompt: np.ndarray, target: np.ndarray):
    """(inputs, targets, loss_weights) of [BOS] prompt target, or None when it must be dropped."""
    seq = np.concatenate([[self.bos], prompt, target]).astype(np.int32)
    inp, tgt = seq[:-1], seq[1:]
    lw = (np.arange(len(tgt)) >= len(prompt)).astype(np.float32)
    return inp, tgt, lw

  def add(self, ex: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Rows completed by adding ``ex`` (possibly none)."""
    if self.kind == "lm":
      inp, tgt, lw = self._shifted(ex["inputs"], ex["targets"])
      vw = np.zeros_like(lw)
      if ex["verdict"]:
        k = len(tgt) - 2  # the verdict token, right before EOS
        if tgt[k] not in self.verdict_ids:
          raise ValueError(f"verdict example whose last target token {tgt[k]} is not ' Yes'/' No' "
                           f"{self.verdict_ids}: does the vocabulary split the verdict?")
        vw[k] = 1.0
      if len(inp) > self.seq_len:
        if ex["verdict"] or len(ex["inputs"]) + 1 >= self.seq_len:
          self._too_long(truncated=False)
          return []
        self._too_long(truncated=True)
        inp, tgt, lw, vw = (a[:self.seq_len] for a in (inp, tgt, lw, vw))
      self.stats.examples += 1
      self.stats.tokens += len(inp)
      return [_lm_row(segs, self.seq_len) for segs in self.packer.add((inp, tgt, lw, vw))]
    if self.kind == "disc":
      seq = np.concatenate([[self.bos], ex["inputs"]]).astype(np.int32)
      if len(seq) > self.seq_len:
        self._too_long(truncated=False)
        return []
      self.stats.examples += 1
      self.stats.tokens += len(seq)
      row = {k: np.zeros(self.seq_len, np.int32) for k in ("inputs", "positions", "segment_ids")}
      row["inputs"][:len(seq)] = seq
      row["positions"][:len(seq)] = np.arange(len(seq))
      row["segment_ids"][:len(seq)] = 1
      row["score_index"] = np.int32(len(seq) - 1)
      row["labels"] = np.float32(ex["label"])
      return [row]
    pair = [self._shifted(ex["inputs"], ex[k]) for k in ("chosen", "rejected")]
    if max(len(p[0]) for p in pair) > self.seq_len:
      self._too_long(truncated=False)
      return []
    self.stats.examples += 1
    row = {}
    for prefix, (inp, tgt, lw) in zip(("chosen_", "rejected_"), pair):
      self.stats.tokens += len(inp)
      r = _lm_row([(inp, tgt, lw, np.zeros_like(lw))], self.seq_len)
      row.update({prefix + k: r[k] for k in _DPO_FIELDS})
    return [row]

  def flush(self) -> list[dict[str, np.ndarray]]:
    if self.kind != "lm":
      return []
    return [_lm_row(segs, self.seq_len) for segs in self.packer.flush()]

  def empty_row(self) -> dict[str, np.ndarray]:
    """A padding row (segment_ids all 0, no loss) that fills the last batch of a finite pass."""
    if self.kind == "lm":
      return _lm_row([], self.seq_len)
    if self.kind == "disc":
      z = np.zeros(self.seq_len, np.int32)
      return {"inputs": z, "positions": z, "segment_ids": z, "score_index": np.int32(0),
              "labels": np.float32(0)}
    r = _lm_row([], self.seq_len)
    return {p + k: r[k] for p in ("chosen_", "rejected_") for k in _DPO_FIELDS}


# ------------------------------------------------------------------------------------------------
# Batches.


class BatchIterator:
  """Iterator of batches (dicts of numpy arrays) with the pipeline's ``stats``."""

  def __init__(self, gen: Iterator[dict[str, np.ndarray]], stats: Stats):
    self._gen, self.stats = gen, stats

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._gen)


def tokenized_examples(name: str, split: str, *, seed: int = 0, shard_id: int = 0,
                       num_shards: int = 1, repeat: bool = True, shuffle: bool = True,
                       vocab: vocab_lib.Vocab | str | None = None
                       ) -> Iterator[dict[str, np.ndarray]]:
  """Tokenized (and, for mixtures, sampled) examples of a task or mixture, as numpy dicts."""
  provider = seqio.get_mixture_or_task(name)
  shard = seqio.ShardInfo(shard_id, num_shards) if num_shards > 1 else None
  # Shuffling is the source's full permutation, on whenever a seed is given.
  kwargs = dict(sequence_length=None, split=split, shuffle=False, seed=seed if shuffle else None,
                shard_info=shard, num_epochs=None if repeat else 1, trim_output_features=False)
  if split not in provider.splits:
    raise ValueError(f"{name!r} has no split {split!r} (splits: {list(provider.splits)})")
  with vocab_lib.using(vocab):
    if isinstance(provider, seqio.Mixture):
      ds = provider.get_dataset(passthrough_features=_PASSTHROUGH, copy_pretokenized=False,
                                **kwargs)
    else:
      ds = provider.get_dataset(**kwargs)
  # Crossing into Python one example at a time costs more than tokenizing it: cross in ragged
  # batches and split them here. (The dataset is built above, eagerly, so bad data fails here.)
  batches = ds.ragged_batch(_CROSSING_BATCH).as_numpy_iterator()
  return ({k: v[i] for k, v in batch.items()}
          for batch in batches for i in range(len(batch["inputs"])))


def get_batches(name: str, split: str, *, batch_size: int, seq_len: int, objective: str = "lm",
                seed: int = 0, shard_id: int = 0, num_shards: int = 1, start_batch: int = 0,
                repeat: bool = True, pack: bool = True,
                vocab: vocab_lib.Vocab | str | None = None) -> BatchIterator:
  """Batches of task or mixture ``name`` for the trainer (see the module docstring for the layout).

  Args:
    name: a registered task or mixture; its record kind must match ``objective``.
    split: e.g. "train", "validation", "test".
    batch_size: the GLOBAL batch size; this host yields ``batch_size // num_shards`` rows a batch.
    seq_len: the row length T.
    objective: "lm" (packed rows unless ``pack=False``), "disc" or "dpo" (one example / pair a row).
    seed: sets shuffling and mixture sampling; the same seed gives the same batches.
    shard_id, num_shards: this host's disjoint share of the examples.
    start_batch: skip this many batches, so a resumed run sees exactly what it would have seen.
    repeat: False for one pass; the last batch is then filled with padding rows (segment_ids 0).
    pack: pack several lm examples per row.
    vocab: a Vocab or .model path; default ``vocab.default_vocab()``.
  """
  kind = TASK_KIND.get(name)
  if kind is None:
    raise ValueError(f"unknown task or mixture {name!r}; is its module (e.g. tasks) imported?")
  if kind != objective:
    raise ValueError(f"{name!r} holds {kind!r} records, not objective {objective!r}")
  if batch_size % num_shards:
    raise ValueError(f"batch_size {batch_size} is not divisible by num_shards {num_shards}")
  if not 0 <= shard_id < num_shards:
    raise ValueError(f"shard_id {shard_id} not in [0, {num_shards})")
  local = batch_size // num_shards
  with vocab_lib.using(vocab) as v:
    examples = tokenized_examples(name, split, seed=seed, shard_id=shard_id, num_shards=num_shards,
                                  repeat=repeat, vocab=v)
    conv = _Converter(kind, seq_len, v, pack)

  def rows() -> Iterator[dict[str, np.ndarray]]:
    for ex in examples:
      yield from conv.add(ex)
    yield from conv.flush()

  def batches() -> Iterator[dict[str, np.ndarray]]:
    buf: list[dict[str, np.ndarray]] = []
    for row in rows():
      buf.append(row)
      if len(buf) == local:
        conv.stats.rows += local
        conv.stats.batches += 1
        if conv.stats.batches > start_batch:
          yield {k: np.stack([r[k] for r in buf]) for k in buf[0]}
        buf = []
    if buf:
      conv.stats.rows += len(buf)
      conv.stats.batches += 1
      buf += [conv.empty_row() for _ in range(local - len(buf))]
      if conv.stats.batches > start_batch:
        yield {k: np.stack([r[k] for r in buf]) for k in buf[0]}
    if conv.stats.truncated or conv.stats.dropped:
      logging.warning("input pipeline %s/%s: %s", name, split, conv.stats.summary())

  return BatchIterator(batches(), conv.stats)


def register_genrm_tasks(src: str, candidates: Loader, instruction: str, splits: Sequence[str], *,
                         lam: float, gold: Loader | None = None, cot: Loader | None = None,
                         seed: int = 0) -> list[str]:
  """Registers ``<src>_{verify,verify_cot,correct,discriminative,dpo_pairs}`` and the mixtures
  ``<src>_genrm`` (verify + lam * correct) and ``<src>_genrm_cot`` (verify_cot + lam * correct).

  ``candidates(split)`` gives labelled candidates (``genrm_jax.records``); ``gold(split)`` gives the
  correct solutions for SFT (default: the correct candidates); ``cot(split)`` the candidates with
  rationales for CoT verification (default: the candidates). Loaders run once a split, lazily.
  """
  from genrm_jax import records  # pylint: disable=g-import-not-at-top
  cands = functools.lru_cache(maxsize=None)(candidates)
  gold = functools.lru_cache(maxsize=None)(gold) if gold else cands
  cot = functools.lru_cache(maxsize=None)(cot) if cot else cands

  def build(fn, loader=cands):
    return lambda split: fn(loader(split), instruction)

  register_task(f"{src}_verify", "lm", build(records.verify), splits, verdict=True)
  register_task(f"{src}_verify_cot", "lm", build(records.verify_cot, cot), splits, verdict=True)
  register_task(f"{src}_correct", "lm", build(records.correct, gold), splits)
  register_task(f"{src}_discriminative", "disc", build(records.discriminative), splits)
  register_task(f"{src}_dpo_pairs", "dpo",
                lambda split: records.dpo_pairs(cands(split), instruction, seed), splits)
  register_mixture(f"{src}_genrm", [(f"{src}_verify", 1.0), (f"{src}_correct", lam)])
  register_mixture(f"{src}_genrm_cot", [(f"{src}_verify_cot", 1.0), (f"{src}_correct", lam)])
  return [f"{src}_{k}" for k in ("verify", "verify_cot", "correct", "discriminative", "dpo_pairs",
                                 "genrm", "genrm_cot")]
