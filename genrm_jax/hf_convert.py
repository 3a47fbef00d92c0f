"""Declarative mapping between genrm-jax parameters and other Gemma checkpoint layouts.

Two foreign layouts are covered:

* Hugging Face transformers (``GemmaForCausalLM`` / ``Gemma2ForCausalLM`` safetensors names). The
  mapping is one table of ``TensorMap`` rows: HF name, our path, the slot of a stacked parameter
  (``kv_einsum`` holds k and v, ``gating_einsum`` holds gate and up) and a named reshape. Import and
  export both read the same rows, so they cannot drift apart.
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

ARCHITECTURES = {"GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2"}
_LAYER_TYPES = {"sliding_attention": AttentionType.LOCAL_SLIDING,
                "full_attention": AttentionType.GLOBAL}
_GELU_TANH = ("gelu_pytorch_tanh", "gelu", "gelu_tanh")
# transformers always ties lm_head to the embedding for Gemma; a saved copy carries no information.
_TIED_NAMES = ("lm_head.weight",)


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


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
  """ModelConfig from a transformers Gemma / Gemma 2 config dict; unsupported fields fail loudly."""
  archs = hf.get("architectures") or []
  if archs:
    family = ARCHITECTURES.get(archs[0]) if len(archs) == 1 else None
  else:
    family = {"gemma": "gemma", "gemma2": "gemma2"}.get(hf.get("model_type"))
  if family is None:
    raise ValueError(
        f"{where}: architectures={archs} model_type={hf.get('model_type')!r} is not supported; "
        f"expected one of {sorted(ARCHITECTURES)}")

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
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  if rope.get("rope_type", rope.get("type", "default")) != "default":
    raise ValueError(f"{where}: field 'rope_parameters'={rope} is not supported "
                     "(default RoPE only)")
  rope_base = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))

  num_layers = need("num_hidden_layers")
  kw: dict[str, Any] = dict(
      vocab_size=need("vocab_size"), num_layers=num_layers, embed_dim=need("hidden_size"),
      hidden_dim=need("intermediate_size"), num_heads=need("num_attention_heads"),
      num_kv_heads=hf.get("num_key_value_heads") or need("num_attention_heads"),
      head_dim=hf.get("head_dim") or need("hidden_size") // need("num_attention_heads"),
      rope_base=float(rope_base), rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      max_seq_len=int(hf.get("max_position_embeddings", 8192)), family=family)
  if family == "gemma2":
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
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
              use_post_attn_norm=True, use_post_ffw_norm=True)
  return ModelConfig(**kw)


def config_to_hf(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
  """The transformers config.json dict for ``cfg``; fails when HF cannot express the model."""
  if cfg.family == "gemma":
    extras = [f for f, bad in (
        ("attn_logits_soft_cap", cfg.attn_logits_soft_cap is not None),
        ("final_logit_soft_cap", cfg.final_logit_soft_cap is not None),
        ("use_post_attn_norm", cfg.use_post_attn_norm),
        ("use_post_ffw_norm", cfg.use_post_ffw_norm),
        ("attention_types", AttentionType.LOCAL_SLIDING in cfg.attention_types),
        ("query_pre_attn_scalar", cfg.query_pre_attn_scalar not in (None, cfg.head_dim)))
              if bad]
    if extras:
      raise ValueError(f"ModelConfig fields {extras} are Gemma 2 features; GemmaForCausalLM "
                       "cannot express them (use family='gemma2')")
  elif not (cfg.use_post_attn_norm and cfg.use_post_ffw_norm):
    raise ValueError("ModelConfig: Gemma2ForCausalLM always has post-attention and post-ffw norms")
  d: dict[str, Any] = {
      "architectures": ["GemmaForCausalLM" if cfg.family == "gemma" else "Gemma2ForCausalLM"],
      "model_type": cfg.family, "dtype": dtype,
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
  else:
    inv = {v: k for k, v in _LAYER_TYPES.items()}
    d.update(hidden_activation="gelu_pytorch_tanh",
             query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
             attn_logit_softcapping=cfg.attn_logits_soft_cap,
             final_logit_softcapping=cfg.final_logit_soft_cap,
             # transformers builds the sliding mask even when no layer uses it.
             sliding_window=cfg.sliding_window_size or cfg.max_seq_len,
             layer_types=[inv[t] for t in cfg.layer_attention_types])
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
