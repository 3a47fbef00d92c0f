"""The figures ``genrm_jax.eval`` writes: Best-of-N curves, accuracy against generated tokens, and
reliability diagrams. Matplotlib is imported on first use (Agg backend: no display needed)."""

from __future__ import annotations

from typing import Sequence


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _finish(plt, fig, ax, path: str, title: str, grid: str = "major") -> None:
  ax.set_title(title)
  ax.grid(alpha=0.3, which=grid)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


BOUNDS = {"pass@1": ":", "pass@n": "--"}


def colors(methods: Sequence[str]) -> dict[str, tuple[float, ...]]:
  """One colour per method, by its place among the non-bound methods, so that a method looks the
  same in every figure of a run (each figure plots a different subset of them)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  ranked = [m for m in methods if m not in BOUNDS]
  cmap = matplotlib.colormaps["tab10" if len(ranked) <= 10 else "tab20"]
  return {m: cmap(i % cmap.N) for i, m in enumerate(ranked)}


def best_of_n(results: dict[str, dict[str, float]], path: str, title: str) -> None:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  color = colors(list(results))
  for method, row in results.items():
    ns = [int(n) for n in row]
    bound = method in BOUNDS
    ax.plot(ns, list(row.values()), linestyle=BOUNDS.get(method, "-"),
            color=color.get(method, "gray"), marker=None if bound else "o", label=method)
  ax.set_xscale("log", base=2)
  ax.set_xticks(ns, [str(n) for n in ns])
  ax.set_xlabel("N (candidates per problem)")
  ax.set_ylabel("Best-of-N accuracy")
  ax.set_ylim(0, 1)
  _finish(plt, fig, ax, path, title)


def accuracy_vs_tokens(accuracy: dict[str, dict[str, float]], tokens: dict[str, dict[str, float]],
                       methods: Sequence[str], path: str, title: str) -> None:
  """One curve per method over N: generated tokens per problem (x, log) against accuracy."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  color = colors(list(accuracy))
  for method in methods:
    ns = list(accuracy[method])
    ax.plot([tokens[method][n] for n in ns], [accuracy[method][n] for n in ns], marker="o",
            markersize=3, label=method, color=color[method])
  ax.set_xscale("log")
  ax.set_xlabel("generated tokens per problem (solutions + rationales)")
  ax.set_ylabel("Best-of-N accuracy")
  ax.set_ylim(0, 1)
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
