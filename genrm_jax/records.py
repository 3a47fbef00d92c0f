"""From labelled candidate solutions to the records of every GenRM task (no TensorFlow needed).

A candidate is a dict: ``question_id``, ``question``, ``solution``, ``correct`` (bool), optionally
``rationale`` (a CoT verification ending in the verdict) and ``where`` (file:line, for errors). The
records are those of ``genrm_jax.data``: lm {"inputs", "targets"}, disc {"inputs", "label"},
dpo {"inputs", "chosen", "rejected"}.
"""

from __future__ import annotations

import collections
import random
import re
from typing import Any, Iterable, Sequence

from genrm_jax import formats

Candidate = dict[str, Any]


_ANY_VERDICT_RE = re.compile(r"\**\s*Verification:\s*\**\s*Is the answer correct \(Yes/No\)\?\s*\**"
                             r"\s*(Yes|No)\b\**")


def verdict_prefix(text: str) -> str | None:
  """The rationale up to and including its LAST verdict line, or None when there is no verdict."""
  matches = list(_ANY_VERDICT_RE.finditer(text))
  if not matches:
    return None
  return text[:matches[-1].end()].strip()


def clean_rationale(text: str) -> str:
  """A rationale ending in its verdict, rewritten to the plain released format (no ``**``)."""
  verdict = formats.parse_verdict(text)
  if verdict is None:
    raise ValueError(f"rationale has no final verdict: ...{text[-80:]!r}")
  m = list(_ANY_VERDICT_RE.finditer(text))[-1]
  body = text[:m.start()].rstrip(" *\n")
  return formats.cot_target(body, verdict)


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
    prefix = verdict_prefix(c["rationale"])
    if prefix is None:
      target = formats.cot_target(c["rationale"], c["correct"])
    else:
      if formats.parse_verdict(prefix) != bool(c["correct"]):
        raise ValueError(f"{c.get('where', c['question_id'])}: rationale verdict contradicts the "
                         f"label correct={c['correct']}")
      target = clean_rationale(prefix)
    out.append({"inputs": formats.cot_prompt(c["question"], c["solution"], instruction),
                "targets": target, **_where(c)})
  return out


def correct(cands: Iterable[Candidate], instruction: str) -> list[dict[str, Any]]:
  """SFT on correct solutions: the question prompt continued by a correct solution."""
  return [{"inputs": formats.question_prompt(c["question"], instruction),
           "targets": c["solution"].rstrip("\n"), **_where(c)} for c in cands if c["correct"]]


def discriminative(cands: Iterable[Candidate], instruction: str) -> list[dict[str, Any]]:
  """Question + solution with a binary label, for the classifier-head baseline."""
  return [{"inputs": formats.solution_block(c["question"], c["solution"], instruction).rstrip("\n"),
           "label": float(bool(c["correct"])), **_where(c)} for c in cands]


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


def cap_per_question(cands: Sequence[Candidate], max_correct: int | None,
                     max_incorrect: int | None, seed: int = 0) -> list[Candidate]:
  """At most ``max_correct`` correct and ``max_incorrect`` incorrect candidates a question
  (None: no cap on that class)."""
  rng = random.Random(seed)
  by_q = _by_question(cands)
  out = []
  for qid in sorted(by_q):
    for label, cap in ((True, max_correct), (False, max_incorrect)):
      group = [c for c in by_q[qid] if bool(c["correct"]) == label]
      out += rng.sample(group, cap) if cap is not None and len(group) > cap else group
  return out


BUILDERS = {"verify": verify, "verify_cot": verify_cot, "correct": correct,
            "discriminative": discriminative}
