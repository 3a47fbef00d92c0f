"""Candidates JSONL: N candidate solutions per problem, with final answers and correctness labels.

One candidate a line::

    {"question_id": 17, "question": "...", "solution": "...", "extracted_answer": "42",
     "correct": true, "gold_answer": "42", "candidate_id": 3, ...}

``question_id``, ``question``, ``solution``, ``extracted_answer`` (string or null) and ``correct``
(bool) are required; ``gold_answer`` and ``candidate_id`` are optional (a candidate's id defaults to
its index within its question, in file order); other fields are kept. A line may omit ``correct`` when
its question has a ``gold_answer`` and the reader is given the task's answer checker.

Command line: ``python -m genrm_jax.candidates from-released --rm_dir DIR --questions N --seed S
--out FILE`` writes the released GSM8K solution pools of N held-out questions; ``python -m
genrm_jax.candidates check FILE`` validates a file and prints its pool sizes.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from genrm_jax import cli
from genrm_jax import files


REQUIRED = ("question_id", "question", "solution", "extracted_answer", "correct")
Checker = Callable[[str | None, str], bool]  # (extracted answer, gold answer) -> correct


class CandidatesError(ValueError):
  """A candidates file or record that cannot be evaluated; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class Pool:
  """All candidates of one problem, in file order."""

  question_id: int | str
  question: str
  gold_answer: str | None
  candidates: tuple[dict[str, Any], ...]

  @property
  def correct(self) -> np.ndarray:
    return np.array([c["correct"] for c in self.candidates], bool)

  @property
  def answers(self) -> list[str | None]:
    return [c["extracted_answer"] for c in self.candidates]

  def __len__(self) -> int:
    return len(self.candidates)


def _check_record(rec: Any, where: str, checker: Checker | None) -> dict[str, Any]:
  if not isinstance(rec, dict):
    raise CandidatesError(f"{where}: expected a JSON object, got {type(rec).__name__}")
  missing = [f for f in REQUIRED if f not in rec and not (f == "correct" and checker)]
  if missing:
    raise CandidatesError(f"{where}: missing field(s) {missing}")
  if not isinstance(rec["question_id"], (int, str)) or isinstance(rec["question_id"], bool):
    raise CandidatesError(f"{where}: question_id must be an integer or a string")
  for field in ("question", "solution"):
    if not isinstance(rec[field], str):
      raise CandidatesError(f"{where}: {field} must be a string")
  if rec["extracted_answer"] is not None and not isinstance(rec["extracted_answer"], str):
    raise CandidatesError(f"{where}: extracted_answer must be a string or null")
  if "correct" in rec and not isinstance(rec["correct"], bool):
    raise CandidatesError(f"{where}: correct must be true or false, got {rec['correct']!r}")
  gold = rec.get("gold_answer")
  if gold is not None and not isinstance(gold, str):
    raise CandidatesError(f"{where}: gold_answer must be a string or null")
  return rec


def build_pools(records: Iterable[tuple[str, Any]], source: str, *, require_gold: bool = False,
                checker: Checker | None = None) -> list[Pool]:
  """Validates (location, record) pairs from ``source`` and groups them into pools in order of first
  appearance.

  ``require_gold``: every question needs a gold answer. ``checker``: fills ``correct`` where a line
  lacks it (which then needs the question's gold answer).
  """
  grouped: dict[Any, list[dict[str, Any]]] = collections.OrderedDict()
  first: dict[Any, tuple[str, dict[str, Any]]] = {}
  seen_ids: dict[tuple[Any, Any], str] = {}
  for where, rec in records:
    rec = dict(_check_record(rec, where, checker))
    qid = rec["question_id"]
    pool = grouped.setdefault(qid, [])
    if qid in first:
      where0, rec0 = first[qid]
      for field in ("question", "gold_answer"):
        if rec.get(field) != rec0.get(field):
          raise CandidatesError(
              f"{where}: question_id {qid!r} has a different {field} than at {where0}")
    else:
      first[qid] = (where, rec)
    cid = rec.setdefault("candidate_id", len(pool))
    if (qid, cid) in seen_ids:
      raise CandidatesError(f"{where}: duplicate candidate (question_id {qid!r}, candidate_id "
                            f"{cid!r}); first seen at {seen_ids[qid, cid]}")
    seen_ids[qid, cid] = where
    gold = rec.get("gold_answer")
    if gold is None and (require_gold or "correct" not in rec):
      why = "a gold answer is required" if require_gold else "`correct` is missing"
      raise CandidatesError(f"{where}: question_id {qid!r} has no gold_answer ({why})")
    if "correct" not in rec:
      rec["correct"] = bool(checker(rec["extracted_answer"], gold))
    pool.append(rec)
  if not grouped:
    raise CandidatesError(f"{source}: empty pool: no candidates")
  return [Pool(qid, recs[0]["question"], recs[0].get("gold_answer"), tuple(recs))
          for qid, recs in grouped.items()]


def _lines(path: str) -> Iterable[tuple[str, Any]]:
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise CandidatesError(f"{path}:{lineno}: malformed JSON ({e.msg})") from e
      yield f"{path}:{lineno}", rec


def read_candidates(path: str, *, require_gold: bool = False,
                    checker: Checker | None = None) -> list[Pool]:
  """Reads and validates a candidates JSONL file into pools (see ``build_pools``)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"candidates file {path} does not exist")
  return build_pools(_lines(path), path, require_gold=require_gold, checker=checker)


def write_candidates(path: str, records: Sequence[dict[str, Any]], *,
                     require_gold: bool = False) -> list[Pool]:
  """Validates every record first, then writes the file atomically; returns the pools."""
  pools = build_pools(((f"{path} (record {i})", r) for i, r in enumerate(records)), path,
                      require_gold=require_gold)
  files.write_jsonl(path, (c for p in pools for c in p.candidates))
  return pools


def from_released(rm_dir: str, num_questions: int, seed: int, gsm8k_train: str | None = None,
                  heldout_fraction: float | None = None, max_pool_size: int | None = None
                  ) -> list[dict[str, Any]]:
  """Candidates of ``num_questions`` held-out questions drawn with ``seed``, sorted by id.

  Held out means ``gsm8k_release.is_heldout(question, heldout_fraction)``: the questions the GSM8K
  training tasks leave out with the same fraction. Gold answers come from GSM8K's train.jsonl (joined on the
  question text) when given. With ``max_pool_size``, larger pools are cut to a seeded random subset.
  """
  from genrm_jax import answers, gsm8k_release  # pylint: disable=g-import-not-at-top
  if heldout_fraction is None:
    heldout_fraction = gsm8k_release.HELDOUT_FRACTION
  rm_dir = os.path.abspath(rm_dir)
  if os.path.basename(rm_dir) != "rm" or not os.path.isdir(rm_dir):
    raise FileNotFoundError(f"--rm_dir {rm_dir}: expected the released genrm-critiques/rm folder")
  pools: dict[Any, list[dict[str, Any]]] = collections.defaultdict(list)
  for c in gsm8k_release.read_rm(os.path.dirname(rm_dir)):
    pools[c["question_id"]].append(c)
  gold = {}
  if gsm8k_train:
    gold = {gsm8k_release.question_key(p["question"]): p["gold"]
            for p in gsm8k_release.load_gsm8k(gsm8k_train)}
  heldout = sorted(q for q, pool in pools.items()
                   if gsm8k_release.is_heldout(pool[0]["question"], heldout_fraction))
  if num_questions > len(heldout):
    raise ValueError(f"asked for {num_questions} questions; {rm_dir} has {len(heldout)} held out "
                     f"at heldout_fraction={heldout_fraction}")
  rng = np.random.default_rng(seed)
  out = []
  for qid in sorted(rng.choice(heldout, num_questions, replace=False).tolist()):
    pool = sorted(pools[qid], key=lambda c: c["model_output_id"])
    if max_pool_size and len(pool) > max_pool_size:
      pool = [pool[i] for i in sorted(rng.choice(len(pool), max_pool_size, replace=False))]
    for c in pool:
      rec = {"question_id": qid, "question": c["question"], "solution": c["solution"],
             "extracted_answer": answers.extract_answer(c["solution"]), "correct": c["correct"],
             "candidate_id": c["model_output_id"],
             "source": os.path.basename(c["where"])}
      if gsm8k_release.question_key(c["question"]) in gold:
        rec["gold_answer"] = gold[gsm8k_release.question_key(c["question"])]
      out.append(rec)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m genrm_jax.candidates", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  rel = sub.add_parser("from-released", help="write the released GSM8K pools of held-out questions")
  rel.add_argument("--rm_dir", required=True, help="genrm-critiques/rm (rm_*.jsonl.gz files)")
  rel.add_argument("--questions", type=int, required=True, help="number of held-out questions")
  rel.add_argument("--seed", type=int, default=0)
  rel.add_argument("--gsm8k_train", default=None,
                   help="GSM8K train.jsonl for gold answers (default: ../gsm8k/train.jsonl "
                        "beside rm_dir's parent, if present)")
  rel.add_argument("--heldout_fraction", type=float, default=None,
                   help="must match the training tasks' (default: theirs, "
                        "gsm8k_release.HELDOUT_FRACTION)")
  rel.add_argument("--max_pool_size", type=int, default=None)
  rel.add_argument("--out", required=True)
  chk = sub.add_parser("check", help="validate a candidates file and print its pool sizes")
  chk.add_argument("file")
  chk.add_argument("--require_gold", action="store_true")
  args = parser.parse_args(argv)

  def run() -> None:
    if args.command == "from-released":
      train = args.gsm8k_train or os.path.join(
          os.path.dirname(os.path.abspath(args.rm_dir)), "..", "gsm8k", "train.jsonl")
      train = train if os.path.exists(train) else None
      recs = from_released(args.rm_dir, args.questions, args.seed, train, args.heldout_fraction,
                           args.max_pool_size)
      pools = write_candidates(args.out, recs)
    else:
      pools = read_candidates(args.file, require_gold=args.require_gold)
    sizes = collections.Counter(len(p) for p in pools)
    n = sum(len(p) for p in pools)
    print(f"{len(pools)} questions, {n} candidates, "
          f"{sum(int(p.correct.sum()) for p in pools)} correct; pool sizes "
          f"{dict(sorted(sizes.items()))}")

  return cli.main(run)


if __name__ == "__main__":
  raise SystemExit(main())
