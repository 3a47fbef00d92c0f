"""genrm_jax.records: candidates -> task records, checked by brute force."""

from __future__ import annotations

import collections
import itertools

import numpy as np

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


def test_select_per_question_balances_or_caps():
  cands = _cands()
  by_q = collections.defaultdict(lambda: [0, 0])
  for c in cands:
    by_q[c["question"]][c["correct"]] += 1
  for max_per_class in (None, 1, 2):
    got = records.select_per_question(cands, max_per_class, balance=True)
    counts = collections.defaultdict(lambda: [0, 0])
    for c in got:
      counts[c["question"]][c["correct"]] += 1
    for q, (bad, good) in by_q.items():
      m = min(bad, good, max_per_class if max_per_class is not None else 99)
      assert counts.get(q, [0, 0]) == [m, m], (q, max_per_class)
    # Balanced selection is idempotent: selecting again keeps the same set.
    again = records.select_per_question(got, max_per_class, balance=True, seed=5)
    key = lambda c: (c["question"], c["solution"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, got))
  capped = records.select_per_question(cands, 1, balance=False)
  for q, group in itertools.groupby(sorted(capped, key=lambda c: c["question"]),
                                    key=lambda c: c["question"]):
    group = list(group)
    assert sum(c["correct"] for c in group) <= 1 and sum(not c["correct"] for c in group) <= 1
  assert len(capped) == 2 + 2 + 1 + 1


def test_data_card_counts_and_rates_by_feature():
  cands = [{"question": f"q{i % 3}", "solution": "s" * (i % 4 + 1), "correct": i % 2 == 0}
           for i in range(12)]
  card = records.data_card(cands, lambda c: {"len": len(c["solution"]),
                                             "q": int(c["question"][1])})
  assert (card["records"], card["correct"], card["questions"]) == (12, 6, 3)
  for name, fn in (("len", lambda c: len(c["solution"])), ("q", lambda c: int(c["question"][1]))):
    for value, cell in card["by"][name].items():
      members = [c for c in cands if fn(c) == int(value)]
      assert cell["count"] == len(members)
      assert cell["p_correct"] == pytest.approx(np.mean([c["correct"] for c in members]))
  # Solution length 1 and 3 are always right here: the card shows that shortcut.
  assert card["by"]["len"]["1"]["p_correct"] == 1.0 and card["by"]["len"]["2"]["p_correct"] == 0.0
  assert "P(correct) by len" in records.format_card(card)


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
  assert records.discriminative([c], "I\n") == [
      {"inputs": formats.question_prompt("Q?", "I\n"), "targets": "S", "label": 0.0}]


def test_fill_negatives_evens_each_question_up_to_the_cap():
  cands = _cands()  # (correct, wrong) per question: (3, 1), (1, 2), (2, 0), (0, 2)

  def make(c, rng):
    return {**c, "solution": c["solution"] + " (edited)", "correct": False}

  filled = records.fill_negatives(cands, make, max_per_class=2)
  added = [c for c in filled if c["solution"].endswith("(edited)")]
  per_q = collections.Counter(c["question"] for c in added)
  # Question 0: 2 of its 3 correct count (cap 2) against 1 wrong: one made; question 2: two.
  assert per_q == {"Question 0?": 1, "Question 2?": 2}
  assert all(c["candidate_id"].startswith("hard-negative-") for c in added)
  balanced = records.select_per_question(filled, 2, balance=True)
  assert collections.Counter(c["question"] for c in balanced) == {
      "Question 0?": 4, "Question 1?": 2, "Question 2?": 4}
  with pytest.raises(ValueError, match="is correct"):
    records.fill_negatives(cands, lambda c, rng: c, max_per_class=2)
