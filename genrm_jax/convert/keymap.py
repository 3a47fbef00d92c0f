"""Declarative mapping between genrm-jax parameters and other Gemma checkpoint layouts.

Two foreign layouts are covered:

* Hugging Face transformers (``GemmaForCausalLM`` / ``Gemma2ForCausalLM`` / ``Gemma3ForCausalLM``
  safetensors names, and the text tower of ``Gemma3ForConditionalGeneration``). The mapping is one
  table of ``TensorMap`` rows: HF name, our path, the slot of a stacked parameter (``kv_einsum``
  holds k and v, ``gating_einsum`` holds gate and up) and a named reshape. Import and export both
  read the same rows, so they cannot drift apart.
* The official Gemma Flax/orbax layout (the ``gemma`` library's tree), which is ours up to three
  variants: an optional ``transformer/`` prefix, ``qkv_einsum`` (3, N, D, H) for multi-head
  attention, and ``gating_einsum`` stored as (2, D, F) instead of (2, F, D).

Shapes: N query heads, K kv heads, H head dim, D embed, F MLP hidden, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
import numpy as np

from genrm_jax import model as model_lib
from genrm_jax import sharding
from genrm_jax.config import AttentionType, ModelConfig

ARCHITECTURES = {"GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2",
                 "Gemma3ForCausalLM": "gemma3", "Gemma3ForConditionalGeneration": "gemma3"}
_MODEL_TYPES = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3", "gemma3": "gemma3"}
_HF_CLASS = {"gemma": ("GemmaForCausalLM", "gemma"), "gemma2": ("Gemma2ForCausalLM", "gemma2"),
             "gemma3": ("Gemma3ForCausalLM", "gemma3_text")}
# Gemma3ForConditionalGeneration keeps the text tower under one of these prefixes (transformers 5
# writes the first, the released checkpoints use the second), beside vision weights.
TEXT_TOWER_PREFIXES = ("model.language_model.", "language_model.model.")
VISION_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.", "vision_tower.",
                   "multi_modal_projector.")
# Gemma3TextConfig's defaults: released multimodal config.json files state only some fields.
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216,
    "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
}
_LAYER_TYPES = {"sliding_attention": AttentionType.LOCAL_SLIDING,
                "full_attention": AttentionType.GLOBAL}
_GELU_TANH = ("gelu_pytorch_tanh", "gelu", "gelu_tanh")
# transformers always ties lm_head to the embedding for Gemma; a saved copy carries no information.
_TIED_NAMES = ("lm_head.weight", "language_model.lm_head.weight")


# ----------------------------------------------------------------------------- the key map


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One HF tensor <-> (a slot of) one of our parameters.

  kind names the reshape from our slice to the HF matrix:
    copy:      identical arrays (embeddings, norms, gate/up (F, D)).
    heads_in:  ours (N, D, H) <-> HF (N*H, D)   q/k/v projections (out, in).
    heads_out: ours (N, H, D) <-> HF (D, N*H)   output projection.
    transpose: ours (F, D)    <-> HF (D, F)     down projection.
  """
  hf: str
  ours: str
  index: int | None
  kind: str


_TO_HF: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda x: x,
    "heads_in": lambda x: x.transpose(0, 2, 1).reshape(-1, x.shape[1]),
    "heads_out": lambda x: x.reshape(-1, x.shape[-1]).T,
    "transpose": lambda x: x.T,
}


def _from_hf(kind: str, x: np.ndarray, our_shape: tuple[int, ...]) -> np.ndarray:
  if kind == "copy":
    return x
  if kind == "heads_in":
    n, d, h = our_shape
    return x.reshape(n, h, d).transpose(0, 2, 1)
  if kind == "heads_out":
    n, h, d = our_shape
    return x.T.reshape(n, h, d)
  if kind == "transpose":
    return x.T
  raise ValueError(f"unknown tensor map kind {kind!r}")


def _hf_shape(kind: str, our_shape: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(_TO_HF[kind](np.empty(our_shape, np.int8)).shape)


_GLOBAL_ROWS = (
    TensorMap("model.embed_tokens.weight", "embedder/input_embedding", None, "copy"),
    TensorMap("model.norm.weight", "final_norm/scale", None, "copy"),
)
_LAYER_ROWS = (
    TensorMap("model.layers.{i}.input_layernorm.weight", "layer_{i}/pre_attention_norm/scale",
              None, "copy"),
    TensorMap("model.layers.{i}.self_attn.q_proj.weight", "layer_{i}/attn/q_einsum/w", None,
              "heads_in"),
    TensorMap("model.layers.{i}.self_attn.k_proj.weight", "layer_{i}/attn/kv_einsum/w", 0,
              "heads_in"),
    TensorMap("model.layers.{i}.self_attn.v_proj.weight", "layer_{i}/attn/kv_einsum/w", 1,
              "heads_in"),
    TensorMap("model.layers.{i}.self_attn.o_proj.weight", "layer_{i}/attn/attn_vec_einsum/w",
              None, "heads_out"),
    TensorMap("model.layers.{i}.mlp.gate_proj.weight", "layer_{i}/mlp/gating_einsum", 0, "copy"),
    TensorMap("model.layers.{i}.mlp.up_proj.weight", "layer_{i}/mlp/gating_einsum", 1, "copy"),
    TensorMap("model.layers.{i}.mlp.down_proj.weight", "layer_{i}/mlp/linear", None, "transpose"),
)
# Gemma 1 calls its pre-MLP norm "post_attention_layernorm"; Gemma 2 reuses that name for the
# norm after attention and adds explicit pre/post feed-forward norms.
_FAMILY_LAYER_ROWS = {
    "gemma": (
        TensorMap("model.layers.{i}.post_attention_layernorm.weight",
                  "layer_{i}/pre_ffw_norm/scale", None, "copy"),
    ),
    "gemma2": (
        TensorMap("model.layers.{i}.post_attention_layernorm.weight",
                  "layer_{i}/post_attention_norm/scale", None, "copy"),
        TensorMap("model.layers.{i}.pre_feedforward_layernorm.weight",
                  "layer_{i}/pre_ffw_norm/scale", None, "copy"),
        TensorMap("model.layers.{i}.post_feedforward_layernorm.weight",
                  "layer_{i}/post_ffw_norm/scale", None, "copy"),
    ),
}
_FAMILY_LAYER_ROWS["gemma3"] = _FAMILY_LAYER_ROWS["gemma2"] + (
    TensorMap("model.layers.{i}.self_attn.q_norm.weight", "layer_{i}/attn/_query_norm/scale", None,
              "copy"),
    TensorMap("model.layers.{i}.self_attn.k_norm.weight", "layer_{i}/attn/_key_norm/scale", None,
              "copy"),
)


# llama.cpp's GGUF names of the HF tensors above (Gemma's pre-MLP norm is ffn_norm in all three).
# GGUF files store every Gemma RMSNorm weight as 1 + w, the scale it applies.
_GGUF_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight",
                      "model.norm.weight": "output_norm.weight"}
_GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
}
_GGUF_POST_ATTENTION = {"gemma": "ffn_norm", "gemma2": "post_attention_norm",
                        "gemma3": "post_attention_norm"}


def gguf_name(hf_name: str, family: str) -> str:
  """The GGUF tensor name of an HF tensor name of a ``family`` model."""
  if hf_name in _GGUF_GLOBAL_NAMES:
    return _GGUF_GLOBAL_NAMES[hf_name]
  _, _, i, rest = hf_name.split(".", 3)
  module = rest.removesuffix(".weight")
  gguf = (_GGUF_POST_ATTENTION[family] if module == "post_attention_layernorm"
          else _GGUF_LAYER_NAMES[module])
  return f"blk.{i}.{gguf}.weight"


def key_map(cfg: ModelConfig) -> list[TensorMap]:
  """Every HF tensor of ``cfg``'s model, in HF order, with its place in our tree."""
  rows = list(_GLOBAL_ROWS)
  for i in range(cfg.num_layers):
    for r in _LAYER_ROWS + _FAMILY_LAYER_ROWS[cfg.family]:
      rows.append(dataclasses.replace(r, hf=r.hf.format(i=i), ours=r.ours.format(i=i)))
  return rows


def _get(tree: dict, path: str):
  for k in path.split("/"):
    tree = tree[k]
  return tree


def _set(tree: dict, path: str, value) -> None:
  *parents, last = path.split("/")
  for k in parents:
    tree = tree.setdefault(k, {})
  tree[last] = value


def our_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Path -> shape of every (unscanned) parameter, without allocating."""
  plain = cfg.replace(scan_layers=False)
  tree = sharding.unbox(model_lib.abstract_params(plain))
  return {"/".join(str(p.key) for p in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """HF name -> expected shape."""
  shapes = our_shapes(cfg)
  out = {}
  for r in key_map(cfg):
    s = shapes[r.ours]
    out[r.hf] = _hf_shape(r.kind, s if r.index is None else s[1:])
  return out


# ----------------------------------------------------------------------------- config.json


def text_tower_names(names: set[str] | list[str]) -> tuple[dict[str, str], list[str]]:
  """For a Gemma3ForConditionalGeneration checkpoint: {name as in Gemma3ForCausalLM: name in the
  file} of the text tower's tensors, and the vision tensors, which are left out."""
  tower, vision = {}, []
  for n in names:
    prefix = next((p for p in TEXT_TOWER_PREFIXES if n.startswith(p)), None)
    if prefix is not None:
      tower["model." + n[len(prefix):]] = n
    elif n.startswith(VISION_PREFIXES):
      vision.append(n)
    else:
      tower[n] = n  # lm_head, or a stray tensor the key map will name
  return tower, sorted(vision)


def family_of(hf: dict[str, Any], where: str = "config.json") -> str:
  archs = hf.get("architectures") or []
  if archs:
    family = ARCHITECTURES.get(archs[0]) if len(archs) == 1 else None
  else:
    family = _MODEL_TYPES.get(hf.get("model_type"))
  if family is None:
    raise ValueError(
        f"{where}: architectures={archs} model_type={hf.get('model_type')!r} is not supported; "
        f"expected one of {sorted(ARCHITECTURES)}")
  return family


def is_multimodal(hf: dict[str, Any]) -> bool:
  return "text_config" in hf or hf.get("model_type") == "gemma3"


def _gemma3_rope(hf: dict[str, Any], where: str) -> dict[str, float]:
  """Our RoPE fields from either transformers 5's per-layer-type ``rope_parameters`` or the older
  ``rope_theta`` / ``rope_local_base_freq`` / ``rope_scaling`` fields."""
  params = hf.get("rope_parameters") or {}
  full = dict(params.get("full_attention") or {})
  local = dict(params.get("sliding_attention") or {})
  full.setdefault("rope_theta", hf.get("rope_theta", GEMMA3_TEXT_DEFAULTS["rope_theta"]))
  local.setdefault("rope_theta",
                   hf.get("rope_local_base_freq", GEMMA3_TEXT_DEFAULTS["rope_local_base_freq"]))
  if hf.get("rope_scaling"):
    full.update(hf["rope_scaling"])
  kinds = {"full_attention": full, "sliding_attention": local}
  for name, rope in kinds.items():
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "linear") or (kind == "linear" and name != "full_attention"):
      raise ValueError(f"{where}: field 'rope_parameters'[{name!r}]={rope} is not supported "
                       "(default RoPE, or linear scaling of global layers)")
  scale = float(full.get("factor", 1.0)) if full.get("rope_type", full.get("type")) == "linear" \
      else 1.0
  return dict(rope_base=float(full["rope_theta"]), local_rope_base=float(local["rope_theta"]),
              global_rope_scale=scale)


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
  """ModelConfig from a transformers Gemma / Gemma 2 / Gemma 3 config dict (of a multimodal Gemma
  3, its ``text_config``); unsupported fields fail loudly."""
  family = family_of(hf, where)
  if family == "gemma3":
    text = hf.get("text_config", hf) if is_multimodal(hf) else hf
    hf = {**GEMMA3_TEXT_DEFAULTS, **{k: v for k, v in text.items() if v is not None}}
    if hf.get("use_bidirectional_attention"):
      raise ValueError(f"{where}: field 'use_bidirectional_attention'=true is not supported "
                       "(genrm-jax models are causal)")
    if hf.get("attn_logit_softcapping") is not None:
      raise ValueError(f"{where}: field 'attn_logit_softcapping'={hf['attn_logit_softcapping']} "
                       "is not supported: transformers' Gemma 3 attention never applies it")

  def need(key):
    if key not in hf or hf[key] is None:
      raise ValueError(f"{where}: field {key!r} is missing")
    return hf[key]

  act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
  if act not in _GELU_TANH:
    raise ValueError(f"{where}: field 'hidden_activation'={act!r}; Gemma uses gelu_pytorch_tanh")
  if hf.get("tie_word_embeddings", True) is False:
    raise ValueError(f"{where}: field 'tie_word_embeddings'=false; Gemma ties the output layer")
  if hf.get("attention_bias"):
    raise ValueError(f"{where}: field 'attention_bias'=true is not supported")
  if family == "gemma3":
    rope_kw = _gemma3_rope(hf, where)
  else:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
      raise ValueError(f"{where}: field 'rope_parameters'={rope} is not supported "
                       "(default RoPE only)")
    rope_kw = dict(rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))))

  num_layers = need("num_hidden_layers")
  kw: dict[str, Any] = dict(
      vocab_size=need("vocab_size"), num_layers=num_layers, embed_dim=need("hidden_size"),
      hidden_dim=need("intermediate_size"), num_heads=need("num_attention_heads"),
      num_kv_heads=hf.get("num_key_value_heads") or need("num_attention_heads"),
      head_dim=hf.get("head_dim") or need("hidden_size") // need("num_attention_heads"),
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      max_seq_len=int(hf.get("max_position_embeddings", 8192)), family=family, **rope_kw)
  if family in ("gemma2", "gemma3"):
    # Gemma 2 alternates from a local layer; Gemma 3 repeats 5 local, 1 global (or every
    # sliding_window_pattern-th layer global, in older config files).
    every = 2 if family == "gemma2" else int(hf.get("sliding_window_pattern") or 6)
    layer_types = hf.get("layer_types") or [
        "full_attention" if (i + 1) % every == 0 else "sliding_attention"
        for i in range(num_layers)]
    if len(layer_types) != num_layers or any(t not in _LAYER_TYPES for t in layer_types):
      raise ValueError(f"{where}: field 'layer_types'={layer_types} does not give one of "
                       f"{sorted(_LAYER_TYPES)} per layer ({num_layers} layers)")
    period = next(p for p in range(1, num_layers + 1)
                  if all(layer_types[i] == layer_types[i % p] for i in range(num_layers)))
    kw.update(query_pre_attn_scalar=need("query_pre_attn_scalar"),
              attn_logits_soft_cap=hf.get("attn_logit_softcapping"),
              final_logit_soft_cap=hf.get("final_logit_softcapping"),
              attention_types=tuple(_LAYER_TYPES[t] for t in layer_types[:period]),
              sliding_window_size=(hf.get("sliding_window")
                                   if "sliding_attention" in layer_types else None),
              use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=family == "gemma3")
  return ModelConfig(**kw)


def config_to_hf(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
  """The transformers config.json dict for ``cfg``; fails when HF cannot express the model."""
  gemma3 = (("use_qk_norm", cfg.use_qk_norm),
            ("local_rope_base", cfg.local_rope_base not in (None, cfg.rope_base)),
            ("global_rope_scale", cfg.global_rope_scale != 1.0))
  if cfg.family == "gemma":
    extras = [f for f, bad in (
        ("attn_logits_soft_cap", cfg.attn_logits_soft_cap is not None),
        ("final_logit_soft_cap", cfg.final_logit_soft_cap is not None),
        ("use_post_attn_norm", cfg.use_post_attn_norm),
        ("use_post_ffw_norm", cfg.use_post_ffw_norm),
        ("attention_types", AttentionType.LOCAL_SLIDING in cfg.attention_types),
        ("query_pre_attn_scalar", cfg.query_pre_attn_scalar not in (None, cfg.head_dim)))
              + gemma3 if bad]
    if extras:
      raise ValueError(f"ModelConfig fields {extras} are Gemma 2/3 features; GemmaForCausalLM "
                       "cannot express them (use family='gemma2' or 'gemma3')")
  elif not (cfg.use_post_attn_norm and cfg.use_post_ffw_norm):
    raise ValueError(f"ModelConfig: {_HF_CLASS[cfg.family][0]} always has post-attention and "
                     "post-ffw norms")
  elif cfg.family == "gemma2" and any(bad for _, bad in gemma3):
    raise ValueError(f"ModelConfig fields {[f for f, bad in gemma3 if bad]} are Gemma 3 "
                     "features; Gemma2ForCausalLM cannot express them (use family='gemma3')")
  elif cfg.family == "gemma3" and not cfg.use_qk_norm:
    raise ValueError("ModelConfig: Gemma3ForCausalLM always has QK-norm (use_qk_norm=True)")
  elif cfg.family == "gemma3" and cfg.attn_logits_soft_cap is not None:
    raise ValueError("ModelConfig field attn_logits_soft_cap: Gemma3ForCausalLM never applies "
                     "attention soft-capping")
  arch, model_type = _HF_CLASS[cfg.family]
  d: dict[str, Any] = {
      "architectures": [arch], "model_type": model_type, "dtype": dtype,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.embed_dim,
      "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_seq_len,
      "rms_norm_eps": cfg.rms_norm_eps, "tie_word_embeddings": True, "attention_bias": False,
      "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
      "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
      "rope_parameters": {"rope_theta": cfg.rope_base, "rope_type": "default"},
  }
  if cfg.family == "gemma":
    d["hidden_act"] = "gelu_pytorch_tanh"
    return d
  inv = {v: k for k, v in _LAYER_TYPES.items()}
  d.update(hidden_activation="gelu_pytorch_tanh",
           query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
           attn_logit_softcapping=cfg.attn_logits_soft_cap,
           final_logit_softcapping=cfg.final_logit_soft_cap,
           # transformers builds the sliding mask even when no layer uses it.
           sliding_window=cfg.sliding_window_size or cfg.max_seq_len,
           layer_types=[inv[t] for t in cfg.layer_attention_types])
  if cfg.family == "gemma3":
    base, scale = cfg.rope(AttentionType.GLOBAL)
    full = {"rope_type": "default", "rope_theta": base}
    if scale != 1.0:
      full = {"rope_type": "linear", "rope_theta": base, "factor": scale}
    local = {"rope_type": "default", "rope_theta": cfg.rope(AttentionType.LOCAL_SLIDING)[0]}
    d.update(rope_parameters={"full_attention": full, "sliding_attention": local},
             use_bidirectional_attention=False)
  return d


# ----------------------------------------------------------------------------- tensors


def params_from_hf(cfg: ModelConfig, get_tensor: Callable[[str], np.ndarray],
                   names: set[str] | list[str], mesh=None, where: str = "") -> Any:
  """Builds our (unscanned) params, one parameter at a time, each put straight into its shards.

  ``get_tensor(name)`` loads a single HF tensor, so at most one parameter plus one HF tensor is
  ever in host memory beyond the result. Fails naming the first missing, extra or misshapen tensor.
  """
  ctx = f" in {where}" if where else ""
  rows = key_map(cfg)
  expected = hf_shapes(cfg)
  known = {r.hf for r in rows}
  missing = [n for n in (r.hf for r in rows) if n not in names]
  if missing:
    raise ValueError(f"tensor {missing[0]!r} is missing{ctx} "
                     f"({len(missing)} missing of {len(rows)})")
  extra = sorted(set(names) - known - set(_TIED_NAMES))
  if extra:
    raise ValueError(f"tensor {extra[0]!r}{ctx} has no place in a {cfg.family} model "
                     f"({len(extra)} unexpected tensors)")
  shapes = our_shapes(cfg)
  shardings = None
  if mesh is not None:
    shardings = model_lib.param_shardings(cfg.replace(scan_layers=False), mesh)
  by_param: dict[str, list[TensorMap]] = {}
  for r in rows:
    by_param.setdefault(r.ours, []).append(r)
  dtype = np.dtype(cfg.param_dtype)
  params: dict = {}
  for path, group in by_param.items():
    value = np.empty(shapes[path], dtype)
    for r in group:
      t = get_tensor(r.hf)
      if tuple(t.shape) != expected[r.hf]:
        raise ValueError(f"tensor {r.hf!r}{ctx} has shape {tuple(t.shape)} but the config "
                         f"implies {expected[r.hf]}")
      piece = _from_hf(r.kind, t, value.shape if r.index is None else value.shape[1:])
      if r.index is None:
        value[...] = piece
      else:
        value[r.index] = piece
      del t, piece
    target = None if shardings is None else _get(shardings, path)
    _set(params, path, jax.device_put(value, target) if target is not None
         else jax.numpy.asarray(value))
    del value
  return params


def hf_tensors(cfg: ModelConfig, params: Any, dtype: str | None = None
               ) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, array) for every tensor, in HF order, converting one at a time."""
  params = model_lib.unscan_params(params, cfg)
  for r in key_map(cfg):
    leaf = np.asarray(jax.device_get(_get(params, r.ours)))
    if r.index is not None:
      leaf = leaf[r.index]
    out = np.ascontiguousarray(_TO_HF[r.kind](leaf))
    yield r.hf, out.astype(jax.numpy.dtype(dtype)) if dtype else out


# ----------------------------------------------------------------------------- official layout


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
  return out


def params_from_official(tree: dict, cfg: ModelConfig) -> dict:
  """Our (unscanned) params from an official Gemma Flax tree, nested or ``/``-joined keys.

  Accepts the ``transformer/`` prefix of released checkpoints, ``qkv_einsum`` (3, N, D, H) and
  ``gating_einsum`` as (2, F, D) or (2, D, F); anything else must match our shapes exactly.
  """
  flat = {}
  for k, v in _flatten(tree).items():
    flat[k.removeprefix("transformer/")] = v
  shapes = our_shapes(cfg)
  out: dict = {}
  used = set()

  def take(key):
    if key not in flat:
      raise ValueError(f"official checkpoint: tensor {key!r} is missing")
    used.add(key)
    return np.asarray(flat[key])

  for path, shape in shapes.items():
    layer, _, rest = path.partition("/")
    if rest == "attn/q_einsum/w" and f"{layer}/attn/qkv_einsum/w" in flat:
      value = take(f"{layer}/attn/qkv_einsum/w")[0]
    elif rest == "attn/kv_einsum/w" and f"{layer}/attn/qkv_einsum/w" in flat:
      value = take(f"{layer}/attn/qkv_einsum/w")[1:]
    elif rest == "mlp/gating_einsum":
      value = take(path)
      if value.shape != shape and value.shape == (2, shape[2], shape[1]):
        value = value.transpose(0, 2, 1)
    else:
      value = take(path)
    if value.shape != shape:
      raise ValueError(f"official checkpoint: tensor {path!r} has shape {value.shape} but the "
                       f"config implies {shape}")
    _set(out, path, jax.numpy.asarray(value.astype(cfg.param_dtype)))
  extra = sorted(set(flat) - used)
  if extra:
    raise ValueError(f"official checkpoint: tensor {extra[0]!r} has no place in the model "
                     f"({len(extra)} unexpected)")
  return out
