"""Verifier diagnostics beyond Best-of-N, and the compute each selection method spends.

Best-of-N says how often a verifier's pick is right; these say why:

- Ranking: ROC AUC within each pool (the mean over problems that hold both correct and wrong
  candidates: what Best-of-N depends on) and pooled over all candidates (which also rewards
  knowing which problems are hard). Ties count one half (the Mann-Whitney statistic).
- Calibration of probability scores: the Brier score and the expected calibration error over
  equal-width confidence bins, with the bins for a reliability plot.
- Counterfactual probes: a correct solution next to edits of it that make it wrong (drop an answer
  letter, change one, drop a step) and a wrong candidate with one more step dropped. The rate of a
  probe is the fraction of problems where the edited, wrong solution outscores the correct one
  (ties one half): a verifier that checks stays near 0, a random one sits at .5, and one that reads
  length (short answers were right more often in its data) goes towards 1.
- Compute: generated tokens per problem of Best-of-N. N drawn candidates cost N times the mean
  solution length whatever selects among them; GenRM-CoT adds K rationales per candidate. A
  forward pass over given text (the direct verdict, a discriminative head) generates nothing.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# A probe rate above this means the verifier prefers the broken solution more often than not.
PROBE_ALARM = 0.5


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks with ties given their average rank."""
  order = np.argsort(x, kind="stable")
  s = x[order]
  starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
  ends = np.r_[starts[1:], len(s)]
  avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
  ranks = np.empty(len(x))
  ranks[order] = np.repeat(avg, ends - starts)
  return ranks


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
  """P(score of a random positive > that of a random negative) + P(tie) / 2; NaN if a class is
  missing."""
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels, bool)
  if scores.shape != labels.shape:
    raise ValueError(f"auc: {scores.shape} scores but {labels.shape} labels")
  pos, neg = int(labels.sum()), int((~labels).sum())
  if not pos or not neg:
    return float("nan")
  ranks = _average_ranks(scores)
  return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def within_pool_auc(scores: Sequence[np.ndarray], correct: Sequence[np.ndarray]
                    ) -> tuple[float, int]:
  """(mean AUC over pools with both classes, how many such pools)."""
  values = [auc(s, c) for s, c in zip(scores, correct)]
  values = [v for v in values if not math.isnan(v)]
  return (float(np.mean(values)) if values else float("nan")), len(values)


def brier(probs: Sequence[float], labels: Sequence[bool]) -> float:
  p = np.asarray(probs, np.float64)
  return float(np.mean((p - np.asarray(labels, np.float64)) ** 2))


def reliability(probs: Sequence[float], labels: Sequence[bool], bins: int = 10
                ) -> list[dict[str, float]]:
  """Equal-width bins over [0, 1] (the last one closed): count, mean confidence, accuracy."""
  p = np.asarray(probs, np.float64)
  y = np.asarray(labels, np.float64)
  if np.any((p < 0) | (p > 1)):
    raise ValueError("reliability: probabilities must lie in [0, 1]")
  idx = np.minimum((p * bins).astype(int), bins - 1)
  out = []
  for b in range(bins):
    m = idx == b
    out.append({"lo": b / bins, "hi": (b + 1) / bins, "count": int(m.sum()),
                "confidence": float(p[m].mean()) if m.any() else float("nan"),
                "accuracy": float(y[m].mean()) if m.any() else float("nan")})
  return out


def ece(probs: Sequence[float], labels: Sequence[bool], bins: int = 10) -> float:
  """Expected calibration error: sum over bins of (bin share) x |accuracy - mean confidence|."""
  n = len(probs)
  return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                   for b in reliability(probs, labels, bins) if b["count"]))


def probe_rate(reference: Sequence[float], edited: Sequence[float]) -> float:
  """Fraction of problems whose edited (wrong) solution outscores the correct one; ties 1/2."""
  r = np.asarray(reference, np.float64)
  e = np.asarray(edited, np.float64)
  if r.shape != e.shape or not len(r):
    raise ValueError(f"probe_rate: {r.shape} reference scores vs {e.shape} edited")
  return float(np.mean((e > r) + 0.5 * (e == r)))


def verifier_diagnostics(scores: Sequence[np.ndarray], correct: Sequence[np.ndarray],
                         probs: Sequence[np.ndarray] | None = None, bins: int = 10) -> dict:
  """Ranking and (given probabilities) calibration of one verifier over its pools."""
  flat_s = np.concatenate(scores)
  flat_c = np.concatenate(correct).astype(bool)
  within, pools = within_pool_auc(scores, correct)
  out = {"within_pool_auc": within, "pools_with_both_classes": pools,
         "pooled_auc": auc(flat_s, flat_c)}
  if probs is not None:
    flat_p = np.concatenate(probs)
    out.update(brier=brier(flat_p, flat_c), ece=ece(flat_p, flat_c, bins),
               reliability=reliability(flat_p, flat_c, bins))
  return out


def tokens_per_problem(solution_tokens: Sequence[np.ndarray], ns: Sequence[int],
                       rationale_tokens: Sequence[np.ndarray] | None = None, votes: int = 0
                       ) -> dict[str, float]:
  """Expected generated tokens per problem of Best-of-N, keyed by str(N).

  A random N-subset of a pool of n holds N / n of its tokens in expectation; a pool smaller than N
  uses all of it (as the accuracies do). With ``votes`` K, each drawn candidate also costs its
  first K rationales (``rationale_tokens``: [n, K_max] per pool).
  """
  out = {}
  for n_req in ns:
    totals = []
    for i, t in enumerate(solution_tokens):
      per = np.asarray(t, np.float64)
      if votes:
        per = per + np.asarray(rationale_tokens[i], np.float64)[:, :votes].sum(axis=1)
      totals.append(min(n_req, len(per)) * per.mean())
    out[str(n_req)] = float(np.mean(totals))
  return out
