"""The paper's optimizer: AdamW, global-norm clipping, linear warmup then cosine decay then hold.

Every number of the recipe is a default of ``OptimConfig`` and nowhere else.
"""

from __future__ import annotations

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with the GenRM paper's schedule (Zhang et al. 2025, appendix)."""

  peak_lr: float = 2e-6
  warmup_steps: int = 1_000
  # The cosine ends at step ``decay_steps`` (counted from step 0, warmup included) at
  # ``final_lr_fraction * peak_lr`` and the rate is held there afterwards.
  decay_steps: int = 200_000
  final_lr_fraction: float = 0.1
  weight_decay: float = 1e-2
  clip_global_norm: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  def __post_init__(self):
    if not 0 <= self.warmup_steps < self.decay_steps:
      raise ValueError(f"OptimConfig: need 0 <= warmup_steps ({self.warmup_steps}) < "
                       f"decay_steps ({self.decay_steps})")
    if self.peak_lr <= 0 or not 0 <= self.final_lr_fraction <= 1:
      raise ValueError(f"OptimConfig: peak_lr={self.peak_lr} must be > 0 and "
                       f"final_lr_fraction={self.final_lr_fraction} in [0, 1]")


def schedule(cfg: OptimConfig) -> optax.Schedule:
  """Learning rate by step: 0 -> peak linearly, cosine to the floor at ``decay_steps``, then flat."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.peak_lr, warmup_steps=cfg.warmup_steps,
      decay_steps=cfg.decay_steps, end_value=cfg.peak_lr * cfg.final_lr_fraction)


def optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  # Clip first: the paper clips the raw gradient, before Adam's moments see it.
  return optax.chain(
      optax.clip_by_global_norm(cfg.clip_global_norm),
      optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                  weight_decay=cfg.weight_decay))
