"""Readers for GSM8K and the GenRM paper's released GSM8K verifier data (no TensorFlow).

Every reader returns candidates in the ``genrm_jax.records`` format ({question_id, question,
solution, correct, [rationale], where}) and fails on bad input with the file and line: malformed
JSON, a missing or empty field, a target that is neither " Yes" nor " No", a gzip that ends early.
With ``skip_bad=True`` bad records are skipped and counted instead (``ReadStats``); a label is never
guessed.

Held-out split: a question is held out when it is one of the paper's validation questions
(``critiques_val``) or when a hash of its text falls under ``heldout_fraction``; train and
validation therefore never share a question, whatever files are loaded.

Command: ``python -m genrm_jax.gsm8k_release build-cot --data_collection DIR --out FILE`` rebuilds
the CoT training set from the raw reference-guided rationales (see ``build_cot``).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import gzip
import hashlib
import json
import os
import re
import sys
import zlib
from typing import Any, Iterator, Sequence

from genrm_jax import answers
from genrm_jax import cli
from genrm_jax import files
from genrm_jax import formats

_Q_RE = re.compile(r"Q: (.*?)\nA: Let's think step by step\.\n(.*)\n(" +
                   re.escape(formats.VERDICT_QUESTION) + "|" +
                   re.escape(formats.COT_REQUEST) + r")$", re.DOTALL)


@dataclasses.dataclass
class ReadStats:
  read: int = 0
  skipped: int = 0
  reasons: dict[str, int] = dataclasses.field(default_factory=dict)

  def skip(self, reason: str) -> None:
    self.skipped += 1
    self.reasons[reason] = self.reasons.get(reason, 0) + 1


class BadRecord(ValueError):
  """A record that cannot be read; ``where`` is "file:line"."""


def read_jsonl(path: str, required: Sequence[str] = (), skip_bad: bool = False,
               stats: ReadStats | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields ("file:line", record) for each line of a .jsonl or .jsonl.gz file."""
  stats = stats if stats is not None else ReadStats()
  opener = gzip.open if path.endswith(".gz") else open
  lineno = 0
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      for lineno, line in enumerate(f, start=1):
        if not line.strip():
          continue
        where = f"{path}:{lineno}"
        try:
          rec = json.loads(line)
          if not isinstance(rec, dict):
            raise BadRecord(f"{where}: expected a JSON object, got {type(rec).__name__}")
          missing = [k for k in required if k not in rec]
          if missing:
            raise BadRecord(f"{where}: missing field(s) {missing}")
        except (json.JSONDecodeError, BadRecord) as e:
          if not skip_bad:
            msg = f"{where}: {e}" if isinstance(e, json.JSONDecodeError) else str(e)
            raise BadRecord(msg) from e
          stats.skip("malformed JSON" if isinstance(e, json.JSONDecodeError) else "missing field")
          continue
        stats.read += 1
        yield where, rec
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    # A gzip that ends early can only be reported, not skipped past: the rest is lost.
    raise BadRecord(f"{path}: corrupt or truncated gzip after line {lineno}: {e}") from e


def _text(rec: dict[str, Any], key: str, where: str) -> str:
  v = rec.get(key)
  if not isinstance(v, str) or not v.strip():
    raise BadRecord(f"{where}: field {key!r} is missing, empty or not a string")
  return v


def parse_inputs(inputs: str, where: str) -> tuple[str, str]:
  """(question, solution) of a released record's ``inputs`` (direct or CoT)."""
  m = _Q_RE.search(inputs)
  if not m or not m.group(2).strip():
    raise BadRecord(f"{where}: inputs are not 'Q: ...\\nA: Let's think step by step.\\n"
                    "<solution>\\nVerification: ...' with a non-empty solution")
  return m.group(1), m.group(2)


def question_key(question: str) -> str:
  return " ".join(question.split())


def _candidates(paths: Sequence[str], cot: bool, skip_bad: bool,
                stats: ReadStats | None) -> list[dict[str, Any]]:
  out = []
  for path in paths:
    for where, rec in read_jsonl(path, ("inputs", "targets", "question_id"), skip_bad, stats):
      try:
        question, solution = parse_inputs(_text(rec, "inputs", where), where)
        target = _text(rec, "targets", where)
        if cot:
          correct = formats.parse_verdict(target)
          if correct is None:
            raise BadRecord(f"{where}: CoT target does not end in "
                            f"'{formats.VERDICT_QUESTION} Yes|No'")
        elif target in (formats.YES, formats.NO):
          correct = target == formats.YES
        else:
          raise BadRecord(f"{where}: target must be {formats.YES!r} or {formats.NO!r}, "
                          f"got {target!r:.40}")
      except BadRecord as e:
        if not skip_bad:
          raise
        (stats or ReadStats()).skip(str(e).split(": ", 1)[-1][:40])
        continue
      cand = {"question_id": rec["question_id"], "question": question, "solution": solution,
              "correct": correct, "where": where, "model_output_id": rec.get("model_output_id")}
      if cot:
        cand["rationale"] = target
      out.append(cand)
  return out


def _glob(pattern: str) -> list[str]:
  paths = sorted(glob.glob(pattern))
  if not paths:
    raise FileNotFoundError(f"no files match {pattern}")
  return paths


def read_rm(root: str, skip_bad: bool = False,
            stats: ReadStats | None = None) -> list[dict[str, Any]]:
  """Direct-verifier candidates from ``root/rm/*.jsonl.gz`` (root = the genrm-critiques folder)."""
  return _candidates(_glob(os.path.join(root, "rm", "*.jsonl*")), False, skip_bad, stats)


def read_val(root: str, cot: bool, skip_bad: bool = False,
             stats: ReadStats | None = None) -> list[dict[str, Any]]:
  """The paper's validation questions: ``critiques_val/rm_*`` (direct) or ``critiques_*`` (CoT)."""
  prefix = "critiques_" if cot else "rm_"
  return _candidates(_glob(os.path.join(root, "critiques_val", prefix + "*.jsonl*")), cot, skip_bad,
                     stats)


def load_gsm8k(path: str) -> list[dict[str, str]]:
  """GSM8K problems: {question, answer (gold solution), gold (normalized #### number), where}."""
  out = []
  for where, rec in read_jsonl(path, ("question", "answer")):
    answer = _text(rec, "answer", where)
    try:
      gold = answers.gold_answer(answer)
    except ValueError as e:
      raise BadRecord(f"{where}: {e}") from e
    out.append({"question": _text(rec, "question", where), "answer": answer, "gold": gold,
                "where": where})
  return out


def gold_solution(answer: str) -> str:
  """A GSM8K gold solution in the policy's format: no <<calculator>> notes, "The answer is X."."""
  body = re.sub(r"<<[^>]*>>", "", answer)
  body = re.sub(r"\n?####.*$", "", body, flags=re.DOTALL).rstrip()
  return f"{body}\nThe answer is {answers.gold_answer(answer)}."


def read_candidates(path: str, gold_by_question: dict[str, str] | None = None,
                    skip_bad: bool = False, stats: ReadStats | None = None) -> list[dict[str, Any]]:
  """A user's candidates JSONL ({question_id, question, solution}, one a line).

  The label is the record's ``correct`` (a bool) when present; otherwise the final answer is checked
  against the record's ``gold_answer`` or ``gold_by_question[question]``; with neither, an error.
  """
  out = []
  for where, rec in read_jsonl(path, ("question_id", "question", "solution"), skip_bad, stats):
    try:
      question, solution = _text(rec, "question", where), _text(rec, "solution", where)
      if "correct" in rec:
        if not isinstance(rec["correct"], bool):
          raise BadRecord(f"{where}: 'correct' must be true/false, got {rec['correct']!r}")
        correct = rec["correct"]
      else:
        gold = rec.get("gold_answer")
        if gold is None and gold_by_question:
          gold = gold_by_question.get(question_key(question))
        if gold is None:
          raise BadRecord(f"{where}: no 'correct' label, no 'gold_answer' and the question is "
                          "not in the gold answers given")
        correct = answers.is_correct(solution, str(gold))
    except BadRecord as e:
      if not skip_bad:
        raise
      (stats or ReadStats()).skip(str(e).split(": ", 1)[-1][:40])
      continue
    out.append({**rec, "question": question, "solution": solution, "correct": correct,
                "where": where})
  return out


# Besides the paper's 128 validation questions, a hashed 5% of the rest is held out from training
# (the verifier tasks' validation split, and the questions ``candidates from-released`` draws).
HELDOUT_FRACTION = 0.05


def is_heldout(question: str, fraction: float, always: frozenset[str] = frozenset()) -> bool:
  """Whether a question belongs to the held-out (validation) split: stable across runs and files."""
  key = question_key(question)
  if key in always:
    return True
  h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
  return h < fraction * 2**64


def split_by_question(cands: Sequence[dict[str, Any]], split: str, fraction: float,
                      always: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
  """The candidates of ``split`` ("train", "validation" = held out, or "all")."""
  if split == "all":
    return list(cands)
  if split not in ("train", "validation"):
    raise ValueError(f"unknown split {split!r}; expected train, validation or all")
  want = split == "validation"
  return [c for c in cands if is_heldout(c["question"], fraction, always) == want]


# ------------------------------------------------------------------------------------------------
# CoT training set from the raw reference-guided rationales.

_COLLECTION_FIELDS = ("question", "question_id", "model_output", "model_output_id", "correctness",
                      "verifier_output")


def build_cot(paths: Sequence[str], skip_bad: bool = False
              ) -> tuple[list[dict[str, Any]], dict[str, int]]:
  """Keeps the rationales whose final verdict agrees with ``correctness``, markdown stripped.

  Returns (candidates with a ``rationale``, counts {kept, dropped (verdict disagrees), unparseable
  (no verdict found), skipped (bad records)}). The rationale is cut right after its verdict: text a
  grader wrote after it (a summary) is not part of the training target.
  """
  stats = ReadStats()
  counts = {"kept": 0, "dropped": 0, "unparseable": 0}
  out = []
  for path in paths:
    for where, rec in read_jsonl(path, _COLLECTION_FIELDS, skip_bad, stats):
      if rec["correctness"] not in (0, 1, True, False):
        if not skip_bad:
          raise BadRecord(f"{where}: correctness must be 0/1, got {rec['correctness']!r}")
        stats.skip("bad correctness")
        continue
      verdict_text = formats.verdict_prefix(rec["verifier_output"] or "")
      if verdict_text is None:
        counts["unparseable"] += 1
        continue
      if formats.parse_verdict(verdict_text) != bool(rec["correctness"]):
        counts["dropped"] += 1
        continue
      counts["kept"] += 1
      out.append({"question_id": rec["question_id"], "question": rec["question"],
                  "solution": rec["model_output"], "correct": bool(rec["correctness"]),
                  "rationale": formats.clean_rationale(verdict_text),
                  "model_output_id": rec["model_output_id"], "where": where})
  counts["skipped"] = stats.skipped
  return out, counts


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m genrm_jax.gsm8k_release")
  sub = parser.add_subparsers(dest="cmd", required=True)
  cot = sub.add_parser("build-cot", help="rebuild the CoT training set from raw rationales")
  cot.add_argument("--data_collection", required=True, help="folder with *.jsonl.gz rationales")
  cot.add_argument("--out", required=True,
                   help="output JSONL (.gz to compress); written atomically")
  cot.add_argument("--skip_bad", action="store_true", help="skip and count malformed records")
  args = parser.parse_args(argv)

  def run() -> None:
    paths = _glob(os.path.join(args.data_collection, "*.jsonl*"))
    cands, counts = build_cot(paths, skip_bad=args.skip_bad)
    records = [{"question_id": c["question_id"], "question": c["question"],
                "solution": c["solution"], "correct": c["correct"], "rationale": c["rationale"],
                "model_output_id": c["model_output_id"]} for c in cands]
    files.write_jsonl(args.out, records)
    total = sum(counts.values())
    print(f"build-cot: {len(paths)} files, {total} rationales: kept {counts['kept']}, dropped "
          f"{counts['dropped']} (verdict disagrees with correctness), unparseable "
          f"{counts['unparseable']}, skipped {counts['skipped']} -> {args.out}")

  return cli.main(run)

if __name__ == "__main__":
  sys.exit(main())
