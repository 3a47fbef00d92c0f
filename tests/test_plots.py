"""The figures of a run give each method one colour across all of them."""

import matplotlib.axes
import matplotlib.figure
import pytest

from genrm_jax import plots


def test_a_method_has_the_same_colour_in_every_figure(tmp_path, monkeypatch):
  drawn: dict[str, list] = {}
  plot = matplotlib.axes.Axes.plot

  def recording(self, *args, **kwargs):
    drawn.setdefault(kwargs.get("label"), []).append(kwargs.get("color"))
    return plot(self, *args, **kwargs)

  monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording)
  ns = {"1": 0.5, "2": 0.6}
  acc = {m: ns for m in ("pass@1", "pass@n", "self_consistency", "genrm", "genrm+weighted_sc",
                         "genrm_cot")}
  plots.best_of_n(acc, str(tmp_path / "a.png"), "t")
  plots.accuracy_vs_tokens(acc, {m: {"1": 10, "2": 20} for m in acc},
                           ["self_consistency", "genrm_cot"], str(tmp_path / "b.png"), "t")
  bins = [{"count": 2, "confidence": 0.5, "accuracy": 0.5}]
  plots.reliability({"genrm_cot": bins}, str(tmp_path / "c.png"), "t", list(acc))
  assert drawn["genrm_cot"][0] == drawn["genrm_cot"][1] == drawn["genrm_cot"][2]
  assert drawn["self_consistency"][0] == drawn["self_consistency"][1]
  firsts = [drawn[m][0] for m in acc if m not in plots.BOUNDS]
  assert len(set(firsts)) == len(firsts)
  assert drawn["pass@1"] == ["gray"] and drawn["pass@n"] == ["gray"]
  assert (tmp_path / "c.png").exists()


@pytest.mark.parametrize("count", [3, 14])
def test_colours_are_distinct(count):
  names = [f"m{i}" for i in range(count)]
  colours = plots.colors(["pass@1", *names]).values()
  assert len(set(colours)) == count
  assert not any(c[0] == c[1] == c[2] for c in colours)  # grey is the bounds' colour


def test_best_of_n_fits_its_axis_draws_bands_and_leaves_out_rows(tmp_path, monkeypatch):
  figures = []
  savefig = matplotlib.figure.Figure.savefig

  def keep(self, *args, **kwargs):
    figures.append(self)
    return savefig(self, *args, **kwargs)

  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
  acc = {"pass@1": {"1": 0.80, "4": 0.80}, "pass@n": {"1": 0.80, "4": 0.95},
         "genrm": {"1": 0.80, "4": 0.90}, "genrm_cot": {"1": 0.80, "4": 0.92},
         "genrm_cot[K=1]": {"1": 0.80, "4": 0.85}}
  se = {m: {"1": 0.02, "4": 0.01} for m in acc}
  plots.best_of_n(acc, str(tmp_path / "a.png"), "t", se, leave_out=["genrm_cot[K=1]"])
  ax = figures[-1].axes[0]
  labels = [ln.get_label() for ln in ax.get_lines()]
  assert labels == ["pass@1", "pass@n", "genrm", "genrm_cot"]
  # Bands for the two verifiers (not for the bounds), and an axis around .78-.95, not 0-1.
  assert len(ax.collections) == 2
  lo, hi = ax.get_ylim()
  assert 0.7 < lo < 0.78 and 0.95 <= hi < 0.98
  # The legend sits outside the axes.
  assert ax.get_legend().get_bbox_to_anchor().x0 > ax.bbox.x1
  plots.accuracy_vs_tokens(acc, {m: {"1": 10, "4": 40} for m in acc},
                           ["genrm_cot", "genrm_cot[K=1]"], str(tmp_path / "b.png"), "t", se)
  ax = figures[-1].axes[0]
  assert [ln.get_label() for ln in ax.get_lines()] == ["genrm_cot", "genrm_cot[K=1]"]
  assert len(ax.collections) == 2


def test_fitted_limits_stay_inside_zero_and_one():
  assert plots.fitted_ylim([0.0, 0.5], [0.99, 1.0]) == (0.0, 1.0)
  assert plots.fitted_ylim([0.5, float("nan")], [0.6, float("nan")]) == pytest.approx((0.49, 0.61))
