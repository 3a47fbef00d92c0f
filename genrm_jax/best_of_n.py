"""Best-of-N metrics: verifier picks, pass@k, and (weighted) self-consistency.

Every metric is the exact expectation, for each k from 1 to the pool size n, over a uniformly random
k-subset of a problem's n candidates and over uniformly random tie-breaking (except weighted
self-consistency for large C(n, k), which is a seeded Monte Carlo estimate; see ``weighted_sc_curve``).

Best-of-k from n: sort the n candidates by score, best first. For a fixed order, candidate i (0-based)
is the top of a random k-subset iff it is drawn and the k - 1 others come from the n - i - 1 below it:
probability w_i = C(n - i - 1, k - 1) / C(n, k). Random tie-breaking puts the members of a tied group
(positions a..b-1) in a uniformly random order among those positions, so each member is at each position
with probability 1 / (b - a) and its expected weight is the group's mean weight: the group's total
weight is shared evenly. (Breaking ties among the k drawn candidates is the same as breaking them once
over all n and restricting: a uniform order restricted to a subset is uniform on it.)

Pools of different sizes: a per-problem curve has n_i entries; the accuracy at N averages, over all
problems, the value at min(N, n_i): a problem with fewer than N candidates uses its whole pool.
``report_ns`` lists the N at which results are reported: 1, 2, 4, ... and the largest pool size.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence

import numpy as np

# float64 holds C(n, k) for every k up to n = 1020; larger pools would overflow the exact DP.
MAX_POOL = 1000


def _check_pool(n: int, what: str) -> None:
  if n == 0:
    raise ValueError(f"{what}: empty pool (no candidates)")
  if n > MAX_POOL:
    raise ValueError(f"{what}: pool of {n} candidates; at most {MAX_POOL} are supported")


@functools.lru_cache(maxsize=64)
def top_of_subset_weights(n: int) -> np.ndarray:
  """[k - 1, i]: probability that the i-th best of n is the best of a random k-subset."""
  w = np.zeros((n, n))
  for k in range(1, n + 1):
    total = math.comb(n, k)
    for i in range(n - k + 1):
      w[k - 1, i] = math.comb(n - i - 1, k - 1) / total
  w.setflags(write=False)
  return w


def best_of_k_curve(scores: Sequence[float], correct: Sequence[bool], what: str = "problem"
                    ) -> np.ndarray:
  """Expected accuracy of picking the top-scored of a random k-subset, for k = 1..n ([n])."""
  scores = np.asarray(scores, np.float64)
  correct = np.asarray(correct, np.float64)
  n = len(scores)
  _check_pool(n, what)
  if correct.shape != scores.shape:
    raise ValueError(f"{what}: {n} scores but {len(correct)} correctness labels")
  if not np.all(np.isfinite(scores)):
    raise ValueError(f"{what}: non-finite verifier score in {scores.tolist()}")
  order = np.argsort(-scores, kind="stable")
  s, c = scores[order], correct[order]
  # Tied groups are maximal runs of equal scores in sorted order.
  starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
  ends = np.r_[starts[1:], n]
  w = top_of_subset_weights(n)
  cum = np.concatenate([np.zeros((n, 1)), np.cumsum(w, axis=1)], axis=1)
  group_weight = cum[:, ends] - cum[:, starts]  # [k, groups]
  group_acc = np.add.reduceat(c, starts) / (ends - starts)
  return group_weight @ group_acc


def pass_at_k_curve(correct: Sequence[bool], what: str = "problem") -> np.ndarray:
  """Unbiased pass@k = 1 - C(n - c, k) / C(n, k) for k = 1..n ([n])."""
  correct = np.asarray(correct, bool)
  n, c = len(correct), int(correct.sum())
  _check_pool(n, what)
  return np.array([1.0 - math.comb(n - c, k) / math.comb(n, k) for k in range(1, n + 1)])


def _answer_groups(answers: Sequence[str | None], correct: np.ndarray):
  """(voting group sizes, their accuracy, no-answer count, no-answer accuracy)."""
  groups: dict[str, list[int]] = {}
  abstain = []
  for i, a in enumerate(answers):
    if a is None or a == "":
      abstain.append(i)
    else:
      groups.setdefault(a, []).append(i)
  sizes = np.array([len(v) for v in groups.values()], int)
  acc = np.array([correct[v].mean() for v in groups.values()])
  abstain_acc = correct[abstain].mean() if abstain else 0.0
  return sizes, acc, len(abstain), abstain_acc


def self_consistency_curve(answers: Sequence[str | None], correct: Sequence[bool],
                           what: str = "problem") -> np.ndarray:
  """Exact expected accuracy of majority voting over a random k-subset, for k = 1..n ([n]).

  Candidates vote for their final answer; candidates without one (None or "") do not vote. The most
  voted answer wins, ties broken uniformly at random; the pick is correct with the accuracy of that
  answer's candidates (all or none of them, with a deterministic checker). A subset with no vote
  picks one of its candidates at random.

  Computed by counting: for an answer of size m winning with t votes, a polynomial DP over the other
  answers (each with fewer than t votes, or exactly t: a tie) counts the subsets by (size, ties).
  """
  correct = np.asarray(correct, np.float64)
  n = len(correct)
  _check_pool(n, what)
  if len(answers) != n:
    raise ValueError(f"{what}: {len(answers)} answers but {n} correctness labels")
  sizes, acc, n_abstain, abstain_acc = _answer_groups(answers, correct)
  total = np.array([math.comb(n, k) for k in range(n + 1)], np.float64)
  expected = np.zeros(n + 1)  # indexed by k
  # Answers of equal size win equally often: one DP per distinct size.
  for m in np.unique(sizes):
    others = list(sizes)
    others.remove(m)
    win_count = np.zeros(n + 1)  # subsets of each size that this answer wins, tie-weighted
    for t in range(1, m + 1):
      dp = _count_others(others, n_abstain, t, n)
      ties = 1.0 / np.arange(1, dp.shape[1] + 1)
      shifted = np.zeros(n + 1)
      shifted[t:] = (dp @ ties)[:n + 1 - t]
      win_count += math.comb(m, t) * shifted
    expected += acc[sizes == m].sum() * win_count
  no_vote = np.array([math.comb(n_abstain, k) for k in range(n + 1)], np.float64)
  expected += abstain_acc * no_vote
  return expected[1:] / total[1:]


def _count_others(others: list[int], n_abstain: int, t: int, n: int) -> np.ndarray:
  """[r, s]: ways to draw r candidates from the other groups, each with <= t votes, s with exactly t."""
  dp = np.zeros((n + 1, len(others) + 1))
  dp[0, 0] = 1.0
  for m in others:
    new = np.zeros_like(dp)
    for x in range(min(t - 1, m) + 1):
      new[x:] += math.comb(m, x) * dp[:n + 1 - x]
    if t <= m:
      new[t:, 1:] += math.comb(m, t) * dp[:n + 1 - t, :-1]
    dp = new
  new = np.zeros_like(dp)
  for x in range(n_abstain + 1):
    new[x:] += math.comb(n_abstain, x) * dp[:n + 1 - x]
  return new


def _weighted_votes(answers: Sequence[str | None], scores: np.ndarray, correct: np.ndarray,
                    masks: np.ndarray, top: int | None) -> np.ndarray:
  """Expected correctness of the weighted vote in each subset ([S] from masks [S, n]), ties shared."""
  groups: dict[str, list[int]] = {}
  for i, a in enumerate(answers):
    if a not in (None, ""):
      groups.setdefault(a, []).append(i)
  totals = np.full((len(masks), max(len(groups), 1)), -np.inf)
  accs = np.zeros(totals.shape[1])
  for g, idx in enumerate(groups.values()):
    drawn = np.where(masks[:, idx], scores[idx], -np.inf)  # [S, m]
    best = -np.sort(-drawn, axis=1)[:, :top] if top else drawn
    weight = np.where(np.isfinite(best), best, 0.0).sum(axis=1)
    totals[:, g] = np.where(masks[:, idx].any(axis=1), weight, -np.inf)
    accs[g] = correct[idx].mean()
  winners = totals == totals.max(axis=1, keepdims=True)
  voted = np.isfinite(totals.max(axis=1))
  picked = (winners * accs).sum(axis=1) / np.maximum(winners.sum(axis=1), 1)
  no_vote = (masks * correct).sum(axis=1) / masks.sum(axis=1)
  return np.where(voted, picked, no_vote)


def weighted_sc_curve(answers: Sequence[str | None], scores: Sequence[float],
                      correct: Sequence[bool], *, top: int | None = None,
                      max_exact_subsets: int = 5000, num_samples: int = 2000, seed: int = 0,
                      ks: Sequence[int] | None = None, what: str = "problem") -> np.ndarray:
  """Weighted self-consistency for k = 1..n: each answer's weight is the sum of the verifier scores
  of its candidates in the subset (only its ``top`` best, if set); the heaviest answer wins, ties
  broken uniformly at random; a subset with no vote picks a random candidate.

  Scores must be probabilities in [0, 1] (a sum of log-probs would penalise popular answers). For
  each k the expectation enumerates all k-subsets when there are at most ``max_exact_subsets`` of
  them, otherwise it averages ``num_samples`` uniformly random k-subsets drawn from
  ``np.random.default_rng((seed, k))``: a Monte Carlo estimate, reproducible for a given seed.
  ``ks``: compute only these k (the others are NaN); by default every k from 1 to n.
  """
  scores = np.asarray(scores, np.float64)
  correct = np.asarray(correct, np.float64)
  n = len(scores)
  _check_pool(n, what)
  if not (len(answers) == len(correct) == n):
    raise ValueError(f"{what}: {len(answers)} answers, {n} scores, {len(correct)} labels")
  if not np.all((scores >= 0) & (scores <= 1)):
    raise ValueError(f"{what}: weighted self-consistency needs scores in [0, 1]")
  curve = np.full(n, np.nan)
  for k in (range(1, n + 1) if ks is None else sorted(set(ks))):
    if not 1 <= k <= n:
      raise ValueError(f"{what}: k={k} outside 1..{n}")
    if math.comb(n, k) <= max_exact_subsets:
      drawn = np.array(list(itertools.combinations(range(n), k)))
    else:
      rng = np.random.default_rng((seed, k))
      drawn = np.argsort(rng.random((num_samples, n)), axis=1)[:, :k]
    masks = np.zeros((len(drawn), n), bool)
    np.put_along_axis(masks, drawn, True, axis=1)
    curve[k - 1] = _weighted_votes(answers, scores, correct, masks, top).mean()
  return curve


def report_ns(pool_sizes: Sequence[int]) -> list[int]:
  """1, 2, 4, ... up to the largest pool, and the largest pool itself."""
  largest = max(pool_sizes)
  ns = [1 << i for i in range(largest.bit_length()) if 1 << i <= largest]
  return ns if ns[-1] == largest else ns + [largest]


def at_ns(curves: Sequence[np.ndarray], ns: Sequence[int]) -> dict[str, float]:
  """Mean over problems of curve[min(N, n_i) - 1], keyed by str(N)."""
  if not curves:
    raise ValueError("no problems to evaluate")
  return {str(n): float(np.mean([c[min(n, len(c)) - 1] for c in curves])) for n in ns}


def stderr_at(curves: Sequence[np.ndarray], n: int) -> float:
  """Standard error over problems of ``at_ns``'s mean at N (how far apart two methods must be)."""
  values = [c[min(n, len(c)) - 1] for c in curves]
  if len(values) < 2:
    return float("nan")
  return float(np.std(values, ddof=1) / math.sqrt(len(values)))
