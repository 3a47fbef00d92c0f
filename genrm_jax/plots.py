"""The figures ``genrm_jax.eval`` writes: Best-of-N curves, accuracy against generated tokens, and
reliability diagrams. Matplotlib is imported on first use (Agg backend: no display needed)."""

from __future__ import annotations

import math
from typing import Sequence


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _finish(plt, fig, ax, path: str, title: str, grid: str = "major") -> None:
  ax.set_title(title)
  ax.grid(alpha=0.3, which=grid)
  # Beside the axes, not over them: a legend inside hides the lines that run where it sits.
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def fitted_ylim(lows: Sequence[float], highs: Sequence[float]) -> tuple[float, float]:
  """Accuracy limits around what is drawn (bands included), with a margin, inside [0, 1]: methods
  a few points apart stay apart instead of lying on one another on a 0-to-1 axis."""
  finite = lambda xs: [x for x in xs if math.isfinite(x)]  # noqa: E731
  lo, hi = min(finite(lows), default=0.0), max(finite(highs), default=1.0)
  pad = max(0.1 * (hi - lo), 0.01)
  return max(0.0, lo - pad), min(1.0, hi + pad)


def _band(ax, xs, ys, se, color) -> tuple[list[float], list[float]]:
  """Mean +- one standard error as a shaded band; returns its bounds (for the limits)."""
  if se is None:
    return list(ys), list(ys)
  lo = [y - e for y, e in zip(ys, se)]
  hi = [y + e for y, e in zip(ys, se)]
  ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
  return lo, hi


BOUNDS = {"pass@1": ":", "pass@n": "--"}


def colors(methods: Sequence[str]) -> dict[str, tuple[float, ...]]:
  """One colour per method, by its place among the non-bound methods, so that a method looks the
  same in every figure of a run (each figure plots a different subset of them)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  ranked = [m for m in methods if m not in BOUNDS]
  # The bounds are grey: no method is.
  palette = [c for c in matplotlib.colormaps["tab10" if len(ranked) <= 9 else "tab20"].colors
             if not c[0] == c[1] == c[2]]
  return {m: (*palette[i % len(palette)], 1.0) for i, m in enumerate(ranked)}


def best_of_n(results: dict[str, dict[str, float]], path: str, title: str,
              stderr: dict[str, dict[str, float]] | None = None, leave_out: Sequence[str] = ()
              ) -> None:
  """Best-of-N against N, one line per method (``leave_out``: rows not drawn, e.g. CoT's first
  k votes), each with its standard error over problems as a band where ``stderr`` has it."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8, 4.5))
  color = colors(list(results))
  lows, highs = [], []
  for method, row in results.items():
    if method in leave_out:
      continue
    ns = [int(n) for n in row]
    bound = method in BOUNDS
    ys = list(row.values())
    ax.plot(ns, ys, linestyle=BOUNDS.get(method, "-"), color=color.get(method, "gray"),
            marker=None if bound else "o", markersize=3, label=method)
    se = None if bound or not stderr or method not in stderr else [
        stderr[method][n] for n in row]
    lo, hi = _band(ax, ns, ys, se, color.get(method, "gray"))
    lows += lo
    highs += hi
  ax.set_xscale("log", base=2)
  ax.set_xticks(ns, [str(n) for n in ns])
  ax.set_xlabel("N (candidates per problem)")
  ax.set_ylabel("Best-of-N accuracy (band: ±1 standard error)" if stderr else
                "Best-of-N accuracy")
  ax.set_ylim(*fitted_ylim(lows, highs))
  _finish(plt, fig, ax, path, title)


def accuracy_vs_tokens(accuracy: dict[str, dict[str, float]], tokens: dict[str, dict[str, float]],
                       methods: Sequence[str], path: str, title: str,
                       stderr: dict[str, dict[str, float]] | None = None) -> None:
  """One curve per method over N: generated tokens per problem (x, log) against accuracy."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8, 4.5))
  color = colors(list(accuracy))
  lows, highs = [], []
  for method in methods:
    ns = list(accuracy[method])
    xs, ys = [tokens[method][n] for n in ns], [accuracy[method][n] for n in ns]
    ax.plot(xs, ys, marker="o", markersize=3, label=method, color=color[method])
    se = [stderr[method][n] for n in ns] if stderr and method in stderr else None
    lo, hi = _band(ax, xs, ys, se, color[method])
    lows += lo
    highs += hi
  ax.set_xscale("log")
  ax.set_xlabel("generated tokens per problem (solutions + rationales)")
  ax.set_ylabel("Best-of-N accuracy (band: ±1 standard error)" if stderr else
                "Best-of-N accuracy")
  ax.set_ylim(*fitted_ylim(lows, highs))
  _finish(plt, fig, ax, path, title, grid="both")


def reliability(bins_by_verifier: dict[str, list[dict[str, float]]], path: str, title: str,
                methods: Sequence[str] = ()) -> None:
  """Accuracy against mean confidence per bin, one line per verifier; the diagonal is calibrated.
  ``methods``: every method of the run, in order, for colours that match its other figures."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 5))
  ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="calibrated")
  color = colors([*methods, *(n for n in bins_by_verifier if n not in methods)])
  for name, bins in bins_by_verifier.items():
    used = [b for b in bins if b["count"]]
    ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], marker="o",
            label=name, color=color[name])
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("verifier probability (bin mean)")
  ax.set_ylabel("fraction correct")
  _finish(plt, fig, ax, path, title)
