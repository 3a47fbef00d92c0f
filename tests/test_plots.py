"""The figures of a run give each method one colour across all of them."""

import matplotlib.axes
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
  assert len(set(plots.colors(["pass@1", *names]).values())) == count
