"""The benchmark configs in each Gemma family: ``--family`` of every benchmark script."""

from __future__ import annotations

import numpy as np

from genrm_jax import config
from genrm_jax.convert import keymap

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


def torch_model(cfg: config.ModelConfig, params):
  """The transformers model of ``cfg`` holding ``params``, in training mode: the peer."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  hf_cfg = transformers.AutoConfig.for_model(**keymap.config_to_hf(cfg, "float32"))
  # sdpa cannot soft-cap attention logits, so Gemma 2 runs eager, as transformers itself chooses.
  attn = "eager" if cfg.family == "gemma2" else "sdpa"
  model = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=attn)
  state = {k: torch.from_numpy(np.array(v)) for k, v in keymap.hf_tensors(cfg, params)}
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
  model.tie_weights()
  return model.train()
