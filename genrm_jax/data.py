"""seqio tasks built from in-memory records, and the numpy batches the trainer consumes.

Records (lists of dicts of strings) are read by ``genrm_jax.gsm8k_release`` /
``genrm_jax.word_puzzles`` and handed to seqio as in-memory tensors: a shuffled index dataset
gathering from constants (like ``from_tensor_slices``; a ``from_generator`` source hung on this
machine). A task holds the records of one objective (``genrm_jax.objectives``), which names their
fields and, after seqio's tokenization and mixing, turns them into fixed-length batch rows
(``Objective.converter``, ``genrm_jax.objectives.rows``). Nothing is truncated silently: what
does not fit a row is counted in ``BatchIterator.stats`` and logged.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from genrm_jax import startup

tf = startup.import_tensorflow()
import seqio  # pylint: disable=g-import-not-at-top,g-bad-import-order  (after TensorFlow, quietly)

from genrm_jax import objectives
from genrm_jax import vocab as vocab_lib
from genrm_jax.objectives import rows as rows_lib

Record = dict[str, Any]
Loader = Callable[[str], Sequence[Record]]
_CROSSING_BATCH = 256


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


def _features(objective: objectives.Objective) -> dict[str, seqio.Feature]:
  return {k: seqio.Feature(_VOCAB, add_eos=eos) for k, eos in objective.text_fields.items()}


# ------------------------------------------------------------------------------------------------
# Registration.

# Task or mixture -> the name of the objective its records are for.
TASK_KIND: dict[str, str] = {}


def _validate(name: str, split: str, objective: objectives.Objective, verdict: bool,
              records: Sequence[Record]) -> None:
  if not records:
    raise ValueError(f"task {name!r}: split {split!r} has no records")
  for i, r in enumerate(records):
    where = r.get("where", f"record {i}")
    for k in objective.text_fields:
      v = r.get(k)
      if not isinstance(v, str) or (k not in objective.may_be_empty and not v.strip()):
        raise ValueError(f"task {name!r} split {split!r} ({where}): field {k!r} is missing, "
                         f"empty or not a string: {v!r:.80}")
    problem = objective.check_record(r, verdict)
    if problem:
      raise ValueError(f"task {name!r} split {split!r} ({where}): {problem}")


def register_task(name: str, kind: str, loader: Loader, splits: Sequence[str],
                  verdict: bool = False) -> None:
  """Registers (or replaces) seqio task ``name`` of records for objective ``kind``; a split's
  records come from ``loader(split)``. ``verdict``: the targets end in " Yes" / " No".

  ``loader`` runs lazily, on first use of a split, and its records are validated then: registering
  never touches data, so a missing data directory fails only when the task is used.
  """
  objective = objectives.get(kind)

  @functools.lru_cache(maxsize=None)
  def columns(split: str) -> dict[str, np.ndarray]:
    records = loader(split)
    _validate(name, split, objective, verdict, records)
    cols = {k: np.array([r[k] for r in records], dtype=object) for k in objective.text_fields}
    cols.update(objective.columns(records, verdict))
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
      output_features=_features(objective))
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
# Batches.


class BatchIterator:
  """Iterator of batches (dicts of numpy arrays) with the pipeline's ``stats``."""

  def __init__(self, gen: Iterator[dict[str, np.ndarray]], stats: rows_lib.Stats):
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
      ds = provider.get_dataset(passthrough_features=objectives.get(TASK_KIND[name]).passthrough,
                                copy_pretokenized=False, **kwargs)
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
    objective: the name of the objective the batches are for (``genrm_jax.objectives``).
    seed: sets shuffling and mixture sampling; the same seed gives the same batches.
    shard_id, num_shards: this host's disjoint share of the examples.
    start_batch: skip this many batches, so a resumed run sees exactly what it would have seen.
    repeat: False for one pass; the last batch is then filled with padding rows (segment_ids 0).
    pack: pack several examples a row where the objective packs (lm, disc; not dpo).
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
    conv = objectives.get(kind).converter(seq_len, v, pack)

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
