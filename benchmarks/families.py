"""The benchmark configs in each Gemma family: ``--family`` of every benchmark script."""

from __future__ import annotations

from genrm_jax import config

FAMILIES = ("gemma", "gemma2", "gemma3")


def in_family(cfg: config.ModelConfig, family: str) -> config.ModelConfig:
  """``cfg``'s shapes with the family's layer recipe; local layers get a 128-token window."""
  if family == "gemma":
    return cfg
  common = dict(family=family, use_post_attn_norm=True, use_post_ffw_norm=True,
                sliding_window_size=128, query_pre_attn_scalar=cfg.head_dim)
  if family == "gemma2":
    return cfg.replace(attention_types=(config.AttentionType.LOCAL_SLIDING,
                                        config.AttentionType.GLOBAL),
                       attn_logits_soft_cap=50.0, final_logit_soft_cap=30.0, **common)
  if family == "gemma3":
    return cfg.replace(attention_types=config.GEMMA3_PATTERN, use_qk_norm=True,
                       rope_base=1_000_000.0, local_rope_base=10_000.0, **common)
  raise ValueError(f"--family={family!r}; expected one of {FAMILIES}")
