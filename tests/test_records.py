"""genrm_jax.records: candidates -> task records, checked by brute force."""

from __future__ import annotations

import itertools

import pytest

from genrm_jax import formats
from genrm_jax import records


def _cands():
  out = []
  for q, (n_good, n_bad) in enumerate([(3, 1), (1, 2), (2, 0), (0, 2)]):
    for k in range(n_good + n_bad):
      out.append({"question_id": q, "question": f"Question {q}?", "solution": f"S{q}.{k}",
                  "correct": k < n_good})
  return out


def test_dpo_pairs_pair_each_question_correct_with_incorrect():
  cands = _cands()
  pairs = records.dpo_pairs(cands, "I\n", seed=0)
  assert len(pairs) == 3 + 2  # max(#correct, #incorrect) for the two questions with both
  label = {(c["question"], c["solution"]): c["correct"] for c in cands}
  for p in pairs:
    q = p["inputs"].split("Q: ")[1].split("\n")[0]
    assert p["inputs"] == formats.question_prompt(q, "I\n")
    assert label[(q, p["chosen"])] and not label[(q, p["rejected"])]
  used = {(p["inputs"], s) for p in pairs for s in (p["chosen"], p["rejected"])}
  assert len(used) == 4 + 3  # every solution of those questions is used at least once


def test_cap_per_question():
  capped = records.cap_per_question(_cands(), max_correct=1, max_incorrect=1)
  for q, group in itertools.groupby(sorted(capped, key=lambda c: c["question"]),
                                    key=lambda c: c["question"]):
    group = list(group)
    assert sum(c["correct"] for c in group) <= 1 and sum(not c["correct"] for c in group) <= 1
  assert len(capped) == 2 + 2 + 1 + 1


def test_verify_and_cot_records():
  c = {"question_id": 0, "question": "Q?", "solution": "S", "correct": False,
       "rationale": f"Step ok.\n**{formats.VERDICT_QUESTION} No**"}
  (v,) = records.verify([c], "I\n")
  assert v == {"inputs": formats.direct_prompt("Q?", "S", "I\n"), "targets": " No"}
  (r,) = records.verify_cot([c], "I\n")
  assert r["inputs"].endswith(formats.COT_REQUEST) and r["targets"].endswith(
      formats.VERDICT_QUESTION + " No") and "**" not in r["targets"][-60:]
  with pytest.raises(ValueError, match="contradicts"):
    records.verify_cot([{**c, "correct": True}], "I\n")
  assert records.correct([c], "I\n") == []
  assert records.discriminative([c], "I\n")[0]["label"] == 0.0
