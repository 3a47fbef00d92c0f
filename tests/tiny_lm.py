"""Tiny random language models and brute-force references shared by the sampler/scoring tests."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from genrm_jax import config, model, sampler


def small_cfg(vocab_size: int = 64, gemma2: bool = False, gemma3: bool = False
              ) -> config.ModelConfig:
  kw = dict(vocab_size=vocab_size, num_layers=2, embed_dim=64, hidden_dim=128, num_heads=4,
            num_kv_heads=2, head_dim=16, max_seq_len=256)
  if gemma3:
    # 7 layers: one 5-local-1-global pattern and a local tail; window 5 < the sequences.
    return config.tiny_gemma3(**dict(kw, num_layers=7, sliding_window_size=5))
  if gemma2:
    kw.update(attention_types=(config.AttentionType.LOCAL_SLIDING, config.AttentionType.GLOBAL),
              sliding_window_size=5, attn_logits_soft_cap=50.0, final_logit_soft_cap=30.0,
              use_post_attn_norm=True, use_post_ffw_norm=True, query_pre_attn_scalar=16,
              family="gemma2")
  return config.tiny(**kw)


def lively_params(cfg: config.ModelConfig, seed: int = 0, mesh=None):
  """Random params whose next-token distributions are spread out (not "repeat the last token").

  With Gemma's init the tied embedding dominates and a random model just echoes its input; a
  smaller embedding and larger layer weights give varied greedy paths and flat distributions.
  """
  params = model.init_params(cfg, jax.random.key(seed), mesh=mesh)

  def rescale(path, x):
    name = jax.tree_util.keystr(path)
    if "input_embedding" in name:
      return x * 0.2
    if "einsum" in name or "linear" in name:
      return x * 3.0
    return x

  return jax.tree_util.tree_map_with_path(rescale, params)


@functools.lru_cache(maxsize=None)
def _forward_fn(cfg):
  def f(params, tokens, segs):
    pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    logits, _, hidden = model.Transformer(cfg).apply({"params": params}, tokens, pos, segs,
                                                     return_hidden=True)
    return logits, hidden
  return jax.jit(f)


def full_forward(cfg, params, seq) -> tuple[np.ndarray, np.ndarray]:
  """(logits [len(seq), V], final hidden [len(seq), D]) of one sequence, full forward, no cache."""
  length = max(64, 1 << (len(seq) - 1).bit_length())  # few shapes, few compiles
  tokens = np.zeros((1, length), np.int32)
  segs = np.zeros((1, length), np.int32)
  tokens[0, :len(seq)] = seq
  segs[0, :len(seq)] = 1
  logits, hidden = _forward_fn(cfg)(params, tokens, segs)
  return np.asarray(logits)[0, :len(seq)], np.asarray(hidden)[0, :len(seq)]


def full_logits(cfg, params, seq) -> np.ndarray:
  return full_forward(cfg, params, seq)[0]


def greedy_reference(cfg, params, prompt, max_new: int, stop_ids=()) -> list[int]:
  """Greedy continuation recomputing the full forward each step."""
  seq = list(prompt)
  out = []
  for _ in range(max_new):
    tok = int(np.argmax(full_logits(cfg, params, seq)[-1]))
    out.append(tok)
    seq.append(tok)
    if tok in stop_ids:
      break
  return out


def char_codec(eos_id: int = 1, bos_id: int | None = None) -> sampler.Codec:
  """Token i <-> the character chr(0x100 + i): lets tests build stop strings from token ids."""
  return sampler.Codec(encode=lambda s: [ord(c) - 0x100 for c in s],
                       decode=lambda ids: "".join(chr(0x100 + i) for i in ids), eos_id=eos_id,
                       bos_id=bos_id)


def random_hf_model(cls_name: str, seed: int = 0, **kw):
  """A small transformers Gemma (config class ``cls_name``) with random weights and norms far from
  their init, so that a converter mixing up any norm shows in the logits."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  base = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4,
              max_position_embeddings=64, attn_implementation="eager")
  base.update(kw)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
      getattr(transformers, cls_name)(**base)).eval()
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if "norm" in pname:
        p.normal_(0.0, 0.3)
  return model
