"""The paper's schedule and optimizer, checked against a hand-written formula."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from genrm_jax import optim


def _paper_lr(step: int) -> float:
  """Linear warmup over 1K steps to 2e-6, cosine to 2e-7 at step 200K, then flat."""
  peak, floor = 2e-6, 2e-7
  if step < 1000:
    return peak * step / 1000
  if step >= 200_000:
    return floor
  frac = (step - 1000) / (200_000 - 1000)
  return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * frac))


@pytest.mark.parametrize("step, expected", [
    (0, 0.0), (500, 1e-6), (1000, 2e-6), (100_000, None), (201_000, 2e-7), (300_000, 2e-7)])
def test_schedule_values(step, expected):
  lr = float(optim.schedule(optim.OptimConfig())(step))
  want = _paper_lr(step) if expected is None else expected
  assert lr == pytest.approx(want, rel=1e-5, abs=1e-13)
  assert lr == pytest.approx(_paper_lr(step), rel=1e-5, abs=1e-13)


def test_schedule_midpoint_is_between_peak_and_floor():
  lr = float(optim.schedule(optim.OptimConfig())(100_000))
  assert 2e-7 < lr < 2e-6
  assert lr == pytest.approx(2e-7 + 1.8e-6 * 0.5 * (1 + math.cos(math.pi * 99 / 199)), rel=1e-5)


def test_defaults_are_the_paper_recipe():
  c = optim.OptimConfig()
  assert (c.peak_lr, c.warmup_steps, c.decay_steps, c.final_lr_fraction, c.weight_decay,
          c.clip_global_norm) == (2e-6, 1000, 200_000, 0.1, 1e-2, 1.0)


def test_clipping_and_decoupled_weight_decay():
  cfg = optim.OptimConfig(peak_lr=0.1, warmup_steps=0, decay_steps=10, final_lr_fraction=1.0)
  tx = optim.optimizer(cfg)
  params = {"w": jnp.full((4,), 2.0)}
  state = tx.init(params)
  # A huge gradient is clipped to norm 1; Adam's first step moves each coordinate by ~lr*sign(g),
  # and decoupled decay subtracts lr * wd * w on top.
  grads = {"w": jnp.asarray([1e6, -1e6, 1e6, 0.0])}
  updates, _ = tx.update(grads, state, params)
  got = np.asarray(updates["w"])
  want = -0.1 * (np.sign([1, -1, 1, 0]) + 1e-2 * 2.0)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_bad_config_is_rejected():
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.OptimConfig(warmup_steps=10, decay_steps=5)
