"""From labelled candidate solutions to the records of every GenRM task (no TensorFlow needed).

A candidate is a dict: ``question_id``, ``question``, ``solution``, ``correct`` (bool), optionally
``rationale`` (a CoT verification ending in the verdict) and ``where`` (file:line, for errors). The
records are those of ``genrm_jax.data``: lm {"inputs", "targets"}, disc {"inputs", "targets",
"label"}, dpo {"inputs", "chosen", "rejected"}.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Any, Callable, Iterable, Sequence

from genrm_jax import formats
from genrm_jax import word_puzzles

Candidate = dict[str, Any]

# The paper's data recipe, named once: lambda, the weight of SFT on correct solutions in the
# verifier mixtures (1/4 for GSM8K, 1/3 for the algorithmic tasks), and at most 16 correct and 16
# wrong solutions a question.
PAPER_LAMBDA = {"gsm8k": 1 / 4, "last_letters": 1 / 3, "word_sorting": 1 / 3}
PAPER_MAX_PER_CLASS = 16


@dataclasses.dataclass(frozen=True)
class MixtureConfig:
  """How the verifier tasks and mixtures are built (``tasks.register_all``); a field of
  ``DataConfig``, bound in gin as ``MixtureConfig.<field>``."""
  lam: float | None = None  # weight of SFT on correct solutions; None: the source's PAPER_LAMBDA
  # Per question at most this many correct and as many wrong candidates (None: no cap); balanced:
  # equally many of each, or none (``select_per_question``).
  max_per_class: int | None = PAPER_MAX_PER_CLASS
  balance: bool = True
  # The ``policy_*`` tasks: candidates sampled from a policy on ``candidates_task`` (a candidates
  # JSONL; empty: not registered), with programmatic rationales of this style.
  candidates_file: str = ""
  candidates_task: str = word_puzzles.LAST_LETTERS
  rationale_style: str = word_puzzles.DEFAULT_RATIONALE_STYLE

  def lam_for(self, src: str) -> float:
    return PAPER_LAMBDA[src] if self.lam is None else self.lam


def _by_question(cands: Iterable[Candidate]) -> dict[str, list[Candidate]]:
  # Keyed by the question text: ids of different releases (e.g. rm vs critiques_val) may collide.
  by_q: dict[str, list[Candidate]] = collections.defaultdict(list)
  for c in cands:
    by_q[" ".join(c["question"].split())].append(c)
  return by_q


def _where(c: Candidate) -> dict[str, str]:
  return {"where": c["where"]} if "where" in c else {}


def verify(cands: Iterable[Candidate], instruction: str) -> list[dict[str, Any]]:
  """Direct verification: inputs end in the verdict question, targets " Yes" / " No"."""
  return [{"inputs": formats.direct_prompt(c["question"], c["solution"], instruction),
           "targets": formats.verdict_target(c["correct"]), **_where(c)} for c in cands]


def verify_cot(cands: Iterable[Candidate], instruction: str) -> list[dict[str, Any]]:
  """CoT verification from the candidates that carry a rationale (whose verdict must match)."""
  out = []
  for c in cands:
    if "rationale" not in c:
      continue
    prefix = formats.verdict_prefix(c["rationale"])
    if prefix is None:
      target = formats.cot_target(c["rationale"], c["correct"])
    else:
      if formats.parse_verdict(prefix) != bool(c["correct"]):
        raise ValueError(f"{c.get('where', c['question_id'])}: rationale verdict contradicts the "
                         f"label correct={c['correct']}")
      target = formats.clean_rationale(prefix)
    out.append({"inputs": formats.cot_prompt(c["question"], c["solution"], instruction),
                "targets": target, **_where(c)})
  return out


def correct(cands: Iterable[Candidate], instruction: str) -> list[dict[str, Any]]:
  """SFT on correct solutions: the question prompt continued by a correct solution."""
  return [{"inputs": formats.question_prompt(c["question"], instruction),
           "targets": c["solution"].rstrip("\n"), **_where(c)} for c in cands if c["correct"]]


def discriminative(cands: Iterable[Candidate], instruction: str) -> list[dict[str, Any]]:
  """The question prompt and the solution with a binary label, for the classifier-head baseline
  (kept apart so that a correct solution can also be an SFT target)."""
  return [{"inputs": formats.question_prompt(c["question"], instruction),
           "targets": c["solution"].rstrip("\n"), "label": float(bool(c["correct"])),
           **_where(c)} for c in cands]


def dpo_pairs(cands: Iterable[Candidate], instruction: str, seed: int = 0) -> list[dict[str, Any]]:
  """(correct, incorrect) pairs of one question.

  Each question with both kinds gives max(#correct, #incorrect) pairs: the longer list is shuffled
  (seeded) and the shorter one cycled over it, so every solution is used at least once.
  """
  by_q = _by_question(cands)
  rng = random.Random(seed)
  out = []
  for qid in sorted(by_q):
    good = [c for c in by_q[qid] if c["correct"]]
    bad = [c for c in by_q[qid] if not c["correct"]]
    if not good or not bad:
      continue
    rng.shuffle(good)
    rng.shuffle(bad)
    prompt = formats.question_prompt(good[0]["question"], instruction)
    for i in range(max(len(good), len(bad))):
      out.append({"inputs": prompt, "chosen": good[i % len(good)]["solution"].rstrip("\n"),
                  "rejected": bad[i % len(bad)]["solution"].rstrip("\n")})
  return out


def select_per_question(cands: Sequence[Candidate], max_per_class: int | None = PAPER_MAX_PER_CLASS,
                        balance: bool = True, seed: int = 0) -> list[Candidate]:
  """The verifier training set: per question, at most ``max_per_class`` correct and as many wrong
  candidates (None: no cap), drawn with ``seed``.

  ``balance``: a question contributes equally many correct and wrong candidates, or nothing. Without
  it, the share of correct candidates varies with the question's difficulty, and whatever marks a
  hard question (its length, the number of steps, the length of the answer) predicts the label:
  a verifier can then score solutions without checking them. Balanced selection is idempotent.
  """
  rng = random.Random(seed)
  out = []
  for _, group in sorted(_by_question(cands).items()):
    good = [c for c in group if c["correct"]]
    bad = [c for c in group if not c["correct"]]
    if balance:
      m = min(len(good), len(bad), max_per_class if max_per_class is not None else len(group))
      caps = (m, m)
    else:
      caps = (max_per_class, max_per_class)
    for members, cap in zip((good, bad), caps):
      out += rng.sample(members, cap) if cap is not None and len(members) > cap else members
  return out


def fill_negatives(cands: Sequence[Candidate], make: Callable[[Candidate, random.Random], Candidate],
                   max_per_class: int | None = PAPER_MAX_PER_CLASS, seed: int = 0
                   ) -> list[Candidate]:
  """``cands`` plus, for every question with fewer wrong than correct candidates (up to
  ``max_per_class``), wrong ones made by ``make(a correct candidate, rng)`` to even the count.

  With a policy that solves most problems, few questions have both classes to balance; one-edit
  wrong solutions ("hard negatives") let every question contribute pairs that differ only where a
  check would look.
  """
  rng = random.Random(seed)
  out = list(cands)
  for _, group in sorted(_by_question(cands).items()):
    good = [c for c in group if c["correct"]]
    bad = len(group) - len(good)
    want = min(len(good), max_per_class if max_per_class is not None else len(good))
    for i in range(max(0, want - bad)):
      made = {**make(good[i % len(good)], rng), "candidate_id": f"hard-negative-{i}"}
      if made["correct"]:
        raise ValueError(f"a hard negative of question {made['question']!r} is correct")
      out.append(made)
  return out


def data_card(cands: Sequence[Candidate], features: Callable[[Candidate], dict[str, int]]
              ) -> dict[str, Any]:
  """Counts and P(correct) of a verifier training set by each feature (e.g. problem length,
  number of steps, answer length), so that a feature that predicts the label shows before
  training."""
  card: dict[str, Any] = {
      "records": len(cands), "correct": sum(bool(c["correct"]) for c in cands),
      "questions": len(_by_question(cands)), "by": {}}
  rows = [(features(c), bool(c["correct"])) for c in cands]
  for name in (rows[0][0] if rows else {}):
    table: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0])
    for f, ok in rows:
      table[f[name]][0] += 1
      table[f[name]][1] += ok
    card["by"][name] = {str(v): {"count": n, "p_correct": k / n}
                        for v, (n, k) in sorted(table.items())}
  return card


def format_card(card: dict[str, Any]) -> str:
  lines = [f"{card['records']} records ({card['correct']} correct) over {card['questions']} "
           "questions"]
  for name, table in card["by"].items():
    cells = ", ".join(f"{v}: {t['count']} @ {t['p_correct']:.2f}" for v, t in table.items())
    lines.append(f"  P(correct) by {name} (value: count @ p): {cells}")
  return "\n".join(lines)
