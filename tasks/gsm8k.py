"""seqio tasks for GSM8K from the released GenRM data, and for a user's candidates file.

Data directory (the layout of ../shared/data): ``DIR/gsm8k/{train,test}.jsonl`` and
``DIR/genrm-critiques/{rm,critiques_val,data_collection}``, from ``register_gsm8k(data_dir=...)``
(gin) or $GENRM_DATA_DIR. Registering never reads it; using a task without it fails clearly.

Splits (``train`` / ``validation``) are by question: the paper's 128 validation questions plus a
hashed ``heldout_fraction`` of the rest are held out (``genrm_jax.gsm8k.is_heldout``).
- verify / discriminative / dpo_pairs: ``rm/*`` and ``critiques_val/rm_*`` candidates; in train,
  each question gives equally many correct and wrong ones (at most ``max_per_class`` each, the
  paper's 16) or none (``records.select_per_question``; ``balance=False`` keeps the plain cap).
- correct: the correct candidates, at most ``max_per_class`` a question in train.
- verify_cot: rationales of ``data_collection/*`` whose verdict agrees with the label (as
  ``build-cot``), plus ``critiques_val/critiques_*``.
"""

from __future__ import annotations

import functools
import os

import gin

from genrm_jax import data
from genrm_jax import formats
from genrm_jax import gsm8k
from genrm_jax import records

DATA_ENV = "GENRM_DATA_DIR"
SPLITS = ("train", "validation")


def _root(data_dir: str | None) -> str:
  root = data_dir or os.environ.get(DATA_ENV)
  if not root:
    raise ValueError(f"GSM8K tasks need the data: set ${DATA_ENV} or gin "
                     "register_gsm8k.data_dir to the folder holding genrm-critiques/")
  crit = os.path.join(root, "genrm-critiques")
  if not os.path.isdir(crit):
    raise FileNotFoundError(f"GSM8K data folder {crit} does not exist")
  return crit


def register_gsm8k(data_dir: str | None = None, lam: float = 0.25, heldout_fraction: float = 0.05,
                   max_per_class: int | None = 16, balance: bool = True, skip_bad: bool = False,
                   seed: int = 0) -> list[str]:
  """Registers the ``gsm8k_*`` tasks and mixtures (lambda 1/4 as in the paper)."""

  @functools.lru_cache(maxsize=None)
  def val_questions() -> frozenset[str]:
    return frozenset(gsm8k.question_key(c["question"])
                     for c in gsm8k.read_val(_root(data_dir), cot=False, skip_bad=skip_bad))

  @functools.lru_cache(maxsize=None)
  def direct_all() -> tuple[dict, ...]:
    root = _root(data_dir)
    return tuple(gsm8k.read_rm(root, skip_bad) + gsm8k.read_val(root, False, skip_bad))

  def split_of(split: str) -> list[dict]:
    return gsm8k.split_by_question(direct_all(), split, heldout_fraction, val_questions())

  def direct(split: str) -> list[dict]:
    cands = split_of(split)
    return (records.select_per_question(cands, max_per_class, balance, seed)
            if split == "train" else cands)

  def gold(split: str) -> list[dict]:
    cands = [c for c in split_of(split) if c["correct"]]
    return (records.select_per_question(cands, max_per_class, False, seed)
            if split == "train" else cands)

  @functools.lru_cache(maxsize=None)
  def cot_all() -> tuple[dict, ...]:
    root = _root(data_dir)
    built, _ = gsm8k.build_cot(gsm8k._glob(os.path.join(root, "data_collection", "*.jsonl*")),
                               skip_bad)
    return tuple(built + gsm8k.read_val(root, True, skip_bad))

  def cot(split: str) -> list[dict]:
    return gsm8k.split_by_question(cot_all(), split, heldout_fraction, val_questions())

  return data.register_genrm_tasks("gsm8k", direct, formats.GSM8K_INSTRUCTION, SPLITS, lam=lam,
                                   gold=gold, cot=cot, seed=seed)


# Registered under unlock: the trainer may import tasks after gin has locked its config.
with gin.unlock_config():
  register_gsm8k = gin.configurable(register_gsm8k)

def register_candidate_tasks(src: str, path: str, *, gsm8k_jsonl: str | None = None,
                             instruction: str = formats.GSM8K_INSTRUCTION, lam: float = 0.25,
                             heldout_fraction: float = 0.0, skip_bad: bool = False,
                             seed: int = 0) -> list[str]:
  """Registers ``<src>_*`` tasks from a candidates JSONL (e.g. sampled from a policy).

  Candidates without a ``correct`` label are labelled by answer checking against their
  ``gold_answer`` or the GSM8K file ``gsm8k_jsonl`` (joined on the question text). Splits: ``all``,
  and ``train`` / ``validation`` by question with ``heldout_fraction``.
  """

  @functools.lru_cache(maxsize=None)
  def cands_all() -> tuple[dict, ...]:
    gold = None
    if gsm8k_jsonl:
      gold = {gsm8k.question_key(p["question"]): p["gold"] for p in gsm8k.load_gsm8k(gsm8k_jsonl)}
    return tuple(gsm8k.read_candidates(path, gold, skip_bad))

  return data.register_genrm_tasks(
      src, lambda split: gsm8k.split_by_question(cands_all(), split, heldout_fraction),
      instruction, ("all", "train", "validation"), lam=lam, seed=seed)


register_gsm8k()
