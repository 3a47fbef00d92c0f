"""genrm_jax.diagnostics: AUC, calibration, probes and compute, against brute-force computations."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from genrm_jax import algorithmic as alg
from genrm_jax import diagnostics as diag


def _brute_auc(scores, labels):
  pairs = [(p, n) for p, n in itertools.product(
      [s for s, l in zip(scores, labels) if l], [s for s, l in zip(scores, labels) if not l])]
  return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])


def test_auc_matches_pair_counting_with_ties():
  rng = np.random.default_rng(0)
  for _ in range(50):
    n = rng.integers(2, 12)
    scores = rng.integers(0, 4, n) / 3  # many ties
    labels = rng.random(n) < 0.5
    if labels.all() or not labels.any():
      assert np.isnan(diag.auc(scores, labels))
      continue
    assert diag.auc(scores, labels) == pytest.approx(_brute_auc(scores, labels))
  with pytest.raises(ValueError, match="labels"):
    diag.auc([0.1, 0.2], [True])


def test_within_pool_auc_skips_single_class_pools():
  scores = [np.array([0.9, 0.1]), np.array([0.2, 0.8, 0.5]), np.array([0.3, 0.3])]
  correct = [np.array([True, False]), np.array([True, False, False]), np.array([True, True])]
  mean, pools = diag.within_pool_auc(scores, correct)
  assert pools == 2 and mean == pytest.approx((1.0 + 0.0) / 2)
  d = diag.verifier_diagnostics(scores, correct)
  assert d["pooled_auc"] == pytest.approx(_brute_auc(np.concatenate(scores),
                                                     np.concatenate(correct)))


def test_brier_and_ece_against_loops():
  rng = np.random.default_rng(1)
  p = rng.random(200)
  p[:5] = [0.0, 1.0, 0.1, 0.1, 0.999]  # bin edges: 1.0 falls in the last bin
  y = rng.random(200) < p
  assert diag.brier(p, y) == pytest.approx(sum((a - b) ** 2 for a, b in zip(p, y)) / 200)
  total = 0.0
  for b in range(10):
    members = [i for i in range(200) if min(int(p[i] * 10), 9) == b]
    if members:
      conf = np.mean([p[i] for i in members])
      acc = np.mean([y[i] for i in members])
      total += len(members) / 200 * abs(acc - conf)
  assert diag.ece(p, y) == pytest.approx(total)
  bins = diag.reliability(p, y)
  assert sum(b["count"] for b in bins) == 200 and bins[-1]["hi"] == 1.0
  # A perfectly calibrated step function: every prediction equals its bin's accuracy.
  assert diag.ece([0.05] * 20 + [0.95] * 20, [True] + [False] * 19 + [False] + [True] * 19) == (
      pytest.approx(0.0))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    diag.reliability([1.5], [True])


def _probe_rates(task, scorer, count=40):
  """Probe rates of a hand-made scorer over problems with a wrong candidate each."""
  rng = random.Random(0)
  rates = {}
  per = {name: ([], []) for name in alg.PROBES}
  for p in alg.split_problems(task, "test", count, seed=2, test_length=5):
    wrong = alg.synthetic_solve(p, rng, error_rate=1.0)
    edits = alg.counterfactuals(p, rng, wrong)
    for name, sol in edits.items():
      assert not alg.is_correct(p, sol), name
      per[name][0].append(scorer(p, p.solution))
      per[name][1].append(scorer(p, sol))
  for name, (ref, edited) in per.items():
    rates[name] = diag.probe_rate(ref, edited)
  return rates


@pytest.mark.parametrize("task", alg.TASKS)
def test_probes_flag_a_length_reader_and_clear_a_checker(task):
  def shorter_is_better(problem, solution):  # what a verifier that reads length does
    steps, answer = alg.parse_solution(solution)
    return -(len(steps) + len(answer or ""))

  def checker(problem, solution):
    return float(alg.is_correct(problem, solution))

  length = _probe_rates(task, shorter_is_better)
  assert length["drop_answer_letter"] == 1.0 and length["drop_step"] == 1.0
  assert all(r > diag.PROBE_ALARM for n, r in length.items() if n != "change_answer_letter")
  assert length["change_answer_letter"] == 0.5  # same length: a tie every time
  assert all(r == 0.0 for r in _probe_rates(task, checker).values())


def test_counterfactual_edits_are_one_edit_away():
  p = alg.Problem(alg.LAST_LETTERS, ("apple", "fig", "kiwi"))
  edits = alg.counterfactuals(p, random.Random(3), "apple:e\nfig:g\nkiwi:w\nThe answer is egw.")
  steps, answer = alg.parse_solution(edits["drop_answer_letter"])
  assert steps == p.steps() and len(answer) == 2 and answer in ("gi", "ei", "eg")
  steps, answer = alg.parse_solution(edits["change_answer_letter"])
  assert steps == p.steps() and sum(a != b for a, b in zip(answer, "egi")) == 1
  steps, answer = alg.parse_solution(edits["drop_step"])
  assert len(steps) == 2 and answer == "".join(s[-1] for s in steps)
  steps, answer = alg.parse_solution(edits["wrong_drop_step"])
  assert len(steps) == 2 and len(answer) == 2
  s = alg.Problem(alg.WORD_SORTING, ("pear", "apple", "fig"))
  steps, answer = alg.parse_solution(alg.counterfactuals(s, random.Random(0))["drop_step"])
  assert [x.split()[0] for x in steps] == ["1", "2"] and answer.split() == [
      x.split()[1] for x in steps]
  # A wrong candidate whose every shortening is right gives no wrong_drop_step probe.
  two = alg.Problem(alg.LAST_LETTERS, ("apple", "fig"))
  extra = "apple:e\nfig:g\nfig:g\nThe answer is egg."
  assert "wrong_drop_step" in alg.counterfactuals(two, random.Random(0), extra)  # 'eg' drops
  assert "wrong_drop_step" not in alg.counterfactuals(two, random.Random(0), "The answer is x.")


def test_tokens_per_problem_hand_counted():
  # Two problems: solutions of 10 and 20 tokens, and of 30 tokens (one candidate).
  sol = [np.array([10.0, 20.0]), np.array([30.0])]
  rat = [np.array([[5.0, 7.0], [1.0, 3.0]]), np.array([[2.0, 4.0]])]
  # N=1: one drawn candidate, 15 on average, and 30.
  # N=2: both of the first pool (30); the second pool has one candidate (30).
  assert diag.tokens_per_problem(sol, [1, 2]) == {"1": (15 + 30) / 2, "2": (30 + 30) / 2}
  # One vote: the first rationale of each drawn candidate: (10+5, 20+1) and (30+2).
  assert diag.tokens_per_problem(sol, [1, 2], rat, votes=1) == {
      "1": ((15 + 21) / 2 + 32) / 2, "2": ((15 + 21) + 32) / 2}
  # Two votes: (10+5+7, 20+1+3) and (30+2+4).
  assert diag.tokens_per_problem(sol, [2], rat, votes=2) == {"2": ((22 + 24) + 36) / 2}
