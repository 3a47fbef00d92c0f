"""Best-of-N metrics against brute-force enumeration of subsets and tie orderings."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from genrm_jax import best_of_n as ev


def _random_pool(rng, n):
  """Scores from a small set (many ties); answers with a consistent correct one, some abstain."""
  scores = rng.integers(0, 3, n).astype(float) / 2
  answers = [None if rng.random() < 0.15 else str(rng.integers(0, 3)) for _ in range(n)]
  correct = np.array([a == "0" for a in answers])
  return scores, answers, correct


def _brute_best_of_k_orders(scores, correct, k):
  """Averages over every total order that breaks ties, and every k-subset."""
  n = len(scores)
  vals = []
  for perm in itertools.permutations(range(n)):
    rank = {c: r for r, c in enumerate(perm)}
    for sub in itertools.combinations(range(n), k):
      top = max(sub, key=lambda i: (scores[i], rank[i]))
      vals.append(correct[top])
  return np.mean(vals)


def _brute_best_of_k_subsets(scores, correct, k):
  """Every k-subset; ties at the top broken uniformly within the subset."""
  vals = []
  for sub in itertools.combinations(range(len(scores)), k):
    best = max(scores[i] for i in sub)
    vals.append(np.mean([correct[i] for i in sub if scores[i] == best]))
  return np.mean(vals)


def _brute_vote(answers, weights, correct, sub):
  tally = {}
  for i in sub:
    if answers[i] is not None:
      tally.setdefault(answers[i], []).append(i)
  if not tally:
    return np.mean([correct[i] for i in sub])
  totals = {a: sum(weights[i] for i in idx) for a, idx in tally.items()}
  best = max(totals.values())
  return np.mean([np.mean([correct[i] for i in tally[a]])
                  for a, v in totals.items() if v == best])


def _brute_curve(fn, n):
  return np.array([np.mean([fn(sub) for sub in itertools.combinations(range(n), k)])
                   for k in range(1, n + 1)])


@pytest.mark.parametrize("seed", range(6))
def test_best_of_k_matches_brute_force_over_tie_orders(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(1, 6))
  scores, _, correct = _random_pool(rng, n)
  curve = ev.best_of_k_curve(scores, correct)
  for k in range(1, n + 1):
    assert curve[k - 1] == pytest.approx(_brute_best_of_k_orders(scores, correct, k), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_best_of_k_matches_brute_force_over_subsets(seed):
  rng = np.random.default_rng(100 + seed)
  n = int(rng.integers(1, 10))
  scores, _, correct = _random_pool(rng, n)
  curve = ev.best_of_k_curve(scores, correct)
  expected = [_brute_best_of_k_subsets(scores, correct, k) for k in range(1, n + 1)]
  np.testing.assert_allclose(curve, expected, atol=1e-12)


def test_best_of_k_weights_and_extremes():
  w = ev.top_of_subset_weights(6)
  np.testing.assert_allclose(w.sum(axis=1), 1.0)
  assert w[2, 1] == pytest.approx(math.comb(4, 2) / math.comb(6, 3))
  # All tied: a random pick at every k. Distinct scores: k = n picks the best.
  correct = [True, False, False, True]
  np.testing.assert_allclose(ev.best_of_k_curve([1, 1, 1, 1], correct), 0.5)
  assert ev.best_of_k_curve([0.1, 0.9, 0.5, 0.2], correct)[-1] == 0.0
  assert ev.best_of_k_curve([0.1, 0.9, 0.5, 0.2], correct)[0] == 0.5


@pytest.mark.parametrize("seed", range(10))
def test_pass_at_k_matches_brute_force(seed):
  rng = np.random.default_rng(200 + seed)
  n = int(rng.integers(1, 10))
  correct = rng.random(n) < 0.4
  brute = _brute_curve(lambda sub: float(any(correct[i] for i in sub)), n)
  np.testing.assert_allclose(ev.pass_at_k_curve(correct), brute, atol=1e-12)


@pytest.mark.parametrize("seed", range(25))
def test_self_consistency_matches_brute_force(seed):
  rng = np.random.default_rng(300 + seed)
  n = int(rng.integers(1, 11))
  _, answers, correct = _random_pool(rng, n)
  brute = _brute_curve(lambda sub: _brute_vote(answers, np.ones(n), correct, sub), n)
  np.testing.assert_allclose(ev.self_consistency_curve(answers, correct), brute, atol=1e-12)


def test_self_consistency_large_pool_against_monte_carlo():
  rng = np.random.default_rng(7)
  n = 40
  answers = [str(a) for a in rng.choice(6, n, p=[.3, .25, .2, .1, .1, .05])]
  correct = np.array([a == "1" for a in answers])
  curve = ev.self_consistency_curve(answers, correct)
  for k in (3, 10):
    subs = [rng.choice(n, k, replace=False) for _ in range(4000)]
    mc = np.mean([_brute_vote(answers, np.ones(n), correct, s) for s in subs])
    assert curve[k - 1] == pytest.approx(mc, abs=0.03)
  assert curve[-1] == 0.0  # "0" is the majority of the whole pool


@pytest.mark.parametrize("seed", range(10))
def test_weighted_self_consistency_exact_matches_brute_force(seed):
  rng = np.random.default_rng(400 + seed)
  n = int(rng.integers(1, 9))
  scores, answers, correct = _random_pool(rng, n)
  brute = _brute_curve(lambda sub: _brute_vote(answers, scores, correct, sub), n)
  np.testing.assert_allclose(ev.weighted_sc_curve(answers, scores, correct), brute, atol=1e-12)


def test_weighted_self_consistency_top_and_monte_carlo():
  answers = ["a", "a", "a", "b"]
  correct = [False, False, False, True]
  scores = [0.3, 0.3, 0.3, 0.8]
  # Summing all votes, "a" (0.9) beats "b" (0.8); counting only each answer's best, "b" wins.
  assert ev.weighted_sc_curve(answers, scores, correct)[-1] == 0.0
  assert ev.weighted_sc_curve(answers, scores, correct, top=1)[-1] == 1.0
  rng = np.random.default_rng(9)
  scores, answers, correct = _random_pool(rng, 9)
  exact = ev.weighted_sc_curve(answers, scores, correct)
  mc = ev.weighted_sc_curve(answers, scores, correct, max_exact_subsets=1, num_samples=4000)
  np.testing.assert_allclose(mc, exact, atol=0.04)
  again = ev.weighted_sc_curve(answers, scores, correct, max_exact_subsets=1, num_samples=4000)
  np.testing.assert_array_equal(mc, again)
  some = ev.weighted_sc_curve(answers, scores, correct, ks=[2, 9])
  np.testing.assert_array_equal(some[[1, 8]], exact[[1, 8]])
  assert np.isnan(some[[0, 2, 7]]).all()


def test_bad_pools_raise():
  with pytest.raises(ValueError, match="q7: empty pool"):
    ev.best_of_k_curve([], [], what="q7")
  with pytest.raises(ValueError, match="non-finite"):
    ev.best_of_k_curve([0.5, float("nan")], [True, False])
  with pytest.raises(ValueError, match="2 scores but 3"):
    ev.best_of_k_curve([0.5, 0.1], [True, False, True])
  with pytest.raises(ValueError, match="in \\[0, 1\\]"):
    ev.weighted_sc_curve(["1", "2"], [-3.0, -1.0], [True, False])


def test_aggregation_over_unequal_pools():
  assert ev.report_ns([3, 16]) == [1, 2, 4, 8, 16]
  assert ev.report_ns([5, 12]) == [1, 2, 4, 8, 12]
  curves = [np.array([0.5, 1.0]), np.array([0.0, 0.25, 0.5, 0.75])]
  got = ev.at_ns(curves, [1, 2, 4])
  assert got == {"1": 0.25, "2": 0.625, "4": 0.875}
  # At N=4 the problems score 1.0 and 0.75: sample std 0.1768 over sqrt(2) problems.
  assert ev.stderr_at(curves, 4) == pytest.approx(0.125)
  assert ev.stderr_at(curves, 1) == pytest.approx(0.25)
  assert math.isnan(ev.stderr_at(curves[:1], 4))
