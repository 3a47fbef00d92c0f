"""LoRA and QLoRA: adapters on a frozen Gemma, created, quantized, merged and laid out for PEFT.

The model applies the adapters itself (``model.Transformer.lora``): each targeted projection of
``model.PROJECTIONS`` (transformers' module names: ``q_proj`` ... ``down_proj``) reads
``{name}_a`` [its inputs..., rank] and ``{name}_b`` [rank, its outputs...] from the ``lora``
variable collection of the module that computes it, so the adapters carry the logical axis names
of their base weight's inputs and outputs and are sharded like it. Here:

* ``init_adapters`` / ``abstract_adapters`` / ``adapter_shardings``: the trained tree;
* ``quantize_base``: QLoRA's frozen base, projection weights stored as qwix ``QArray``s (int8,
  int4 or nf4, one scale per block of ``LoraConfig.quantization_block`` inputs and output
  channel); the embedding and norms keep their dtype;
* ``merge``: base + scale * A B in every targeted slot (the base dequantized first), the plain
  parameters a LoRA model directory loads as (``genrm_jax.checkpoint``);
* ``peft_tensors`` / ``peft_config``: the Hugging Face PEFT adapter layout
  (``convert.export_hf --peft``).

Why not ``qwix.LoraProvider``: it finds a weight by intercepting ``jnp.einsum`` and
``lax.dot_general`` inside the module that owns the weight; this model's projections read
weights created in child modules, stack k/v and gate/up in one parameter, and run through a
custom-gradient ``dense`` (the CPU layouts). On it qwix refused the attention's transposes,
could not set its bookkeeping attribute on a compact module, and matched the gate projection's
weight to the down projection's by shape (docs/lora.md). qwix serves QLoRA's quantization.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from genrm_jax import model as model_lib
from genrm_jax import sharding
from genrm_jax.config import LoraConfig, ModelConfig

_QTYPES = {"int8": jnp.int8, "int4": jnp.int4, "nf4": "nf4"}


def _check(lc: LoraConfig) -> None:
  if not lc.enabled:
    raise ValueError("LoraConfig.rank is None: this run fine-tunes every weight, it has no "
                     "adapters")


def _init_fn(cfg: ModelConfig, lc: LoraConfig):
  def init(rng):
    tokens, positions = jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32)
    # Only the adapters are returned, so the base's initialisers are dead code under jit.
    return model_lib.Transformer(cfg, lc).init({"params": rng}, tokens, positions)[
        model_lib.LORA]
  return init


def abstract_adapters(cfg: ModelConfig, lc: LoraConfig, boxed: bool = False) -> Any:
  """ShapeDtypeStructs of the adapters (``boxed``: with their logical axis names)."""
  _check(lc)
  tree = jax.eval_shape(_init_fn(cfg, lc), jax.random.key(0))
  return tree if boxed else sharding.unbox(tree)


def adapter_shardings(cfg: ModelConfig, lc: LoraConfig, mesh) -> Any:
  return sharding.tree_shardings(abstract_adapters(cfg, lc, boxed=True), mesh)


def init_adapters(cfg: ModelConfig, lc: LoraConfig, rng: jax.Array, mesh=None) -> Any:
  """Fresh adapters (B zero: the adapted model computes the base's function), in their shards
  when ``mesh`` is given."""
  _check(lc)
  init = lambda r: sharding.unbox(_init_fn(cfg, lc)(r))  # noqa: E731
  if mesh is None:
    return jax.jit(init)(rng)
  with sharding.use_mesh(mesh):
    return jax.jit(init, out_shardings=adapter_shardings(cfg, lc, mesh))(rng)


def count(cfg: ModelConfig, lc: LoraConfig) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_adapters(cfg, lc))))


def flops_fraction(lc: LoraConfig) -> float:
  """A step's model FLOPs against full fine-tuning's: a frozen base's weights get no gradient,
  the third of a step's matmuls (forward, input and weight gradients) that LoRA skips."""
  return 2 / 3 if lc.enabled else 1.0


# ----------------------------------------------------------------------------- the frozen base


def _weights() -> dict[tuple[str, str], str]:
  """(module, weight path) of every projection weight -> its einsum's weight letters."""
  return {(p.module, p.weight): p.spec.split("->")[0].split(",")[1]
          for p in model_lib.PROJECTIONS.values()}


def _is_weight(path: tuple[str, ...]) -> str | None:
  """The weight letters when ``path`` (a leaf's keys) ends in a projection weight."""
  for (module, weight), letters in _weights().items():
    tail = (module, *weight.split("/"))
    if path[-len(tail):] == tail:
      return letters
  return None


def _how(path: tuple[str, ...], shape: tuple[int, ...], lc: LoraConfig) -> dict[str, Any]:
  """qwix's quantize arguments for a projection weight: one scale per output channel (and per
  stacked slot and layer) and per block of inputs along the last contracted axis (a head's
  dimensions for the output projection)."""
  letters = _is_weight(path)
  # The weight's own axes are its last len(letters) (before them: a slot, scanned layers).
  first = len(shape) - len(letters)
  proj = next(p for p in model_lib.PROJECTIONS.values()
              if p.spec.split("->")[0].split(",")[1] == letters)
  contracted = {first + letters.index(c) for c in proj.letters[0]}
  last = max(contracted)
  tiled = {}
  if lc.quantization_block:
    # An axis shorter than a block (a small head) is one block.
    tile = min(lc.quantization_block, shape[last])
    if shape[last] % tile:
      raise ValueError(f"LoraConfig.quantization_block = {lc.quantization_block} does not "
                       f"divide the {shape[last]} inputs of {'/'.join(path)} {shape}")
    tiled = {last: tile}
  return dict(qtype=_QTYPES[lc.base_quantization], tiled_axes=tiled,
              channelwise_axes=[i for i in range(len(shape)) if i not in contracted])


def quantize_base(params: Any, lc: LoraConfig) -> Any:
  """``params`` with every projection weight a qwix ``QArray`` (QLoRA); as is without
  ``base_quantization``. Jittable."""
  if lc.base_quantization == "none":
    return params
  import qwix  # pylint: disable=g-import-not-at-top

  def one(path, x):
    keys = tuple(str(getattr(k, "key", k)) for k in path)
    if _is_weight(keys) is None:
      return x
    return qwix.quantize(x, **_how(keys, x.shape, lc))
  return jax.tree_util.tree_map_with_path(one, params)


def dequantize_base(params: Any) -> Any:
  """A frozen base with its quantized weights back in floating point (as the model reads them)."""
  is_q = lambda x: hasattr(x, "qvalue")  # noqa: E731
  if not any(is_q(x) for x in jax.tree.leaves(params, is_leaf=is_q)):
    return params
  import qwix  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: qwix.dequantize(x) if is_q(x) else x, params, is_leaf=is_q)


def frozen_shardings(cfg: ModelConfig, lc: LoraConfig, mesh) -> Any:
  """Shardings of the frozen base (``quantize_base``'s tree): a quantized weight's values and
  scales follow the weight's logical axes."""
  boxed = model_lib.abstract_params(cfg)
  plain = model_lib.param_shardings(cfg, mesh)
  if lc.base_quantization == "none":
    return plain
  abstract = jax.eval_shape(lambda p: quantize_base(p, lc), sharding.unbox(boxed))
  names = jax.tree.map(lambda x: x.names, boxed,
                       is_leaf=lambda x: isinstance(x, model_lib.nn.Partitioned))

  def one(q, n, s):
    if not hasattr(q, "qvalue"):
      return s
    return jax.tree.map(lambda leaf: NamedSharding(mesh, _quantized_spec(n, leaf.shape, s.spec,
                                                                          mesh)), q)
  return jax.tree.map(one, abstract, names, plain, is_leaf=lambda x: hasattr(x, "qvalue"))


def _quantized_spec(names, shape, weight_spec: P, mesh) -> P:
  """A quantized weight's values shard as the weight; its scales too, and where a named axis
  (one scale per block of inputs: 84 blocks of Gemma 3 27B's 5,376) does not divide, the mesh
  axis moves to the largest free axis that it divides rather than being replicated."""
  spec = list(sharding.logical_to_spec(names, shape, mesh))
  axes = lambda s: () if s is None else s if isinstance(s, tuple) else (s,)  # noqa: E731
  used = {ax for s in spec for ax in axes(s)}
  for ax in (ax for s in weight_spec for ax in axes(s)):
    fits = [i for i, d in enumerate(shape)
            if d % (math.prod(mesh.shape[a] for a in axes(spec[i])) * mesh.shape[ax]) == 0]
    if ax not in used and fits:
      i = max(fits, key=lambda i: shape[i])
      spec[i] = axes(spec[i]) + (ax,) if spec[i] is not None else ax
      used.add(ax)
  return P(*spec)


# ----------------------------------------------------------------------------- merge


def _adapter_items(adapters: Any) -> Iterator[tuple[tuple[str, ...], str, Any, Any]]:
  """(path of the module, projection name, A, B) of every adapter pair."""
  flat = {tuple(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(adapters)}
  for path, a in flat.items():
    if path[-1].endswith("_a"):
      name = path[-1][:-2]
      yield path[:-1], name, a, flat[path[:-1] + (f"{name}_b",)]


def delta(name: str, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  """scale * A B in the layout of projection ``name``'s weight slot (leading layers axis kept)."""
  proj = model_lib.PROJECTIONS[name]
  contracted, free, _ = proj.letters
  ws = proj.spec.split("->")[0].split(",")[1]
  prod = jnp.einsum(f"...{contracted}R,...R{free}->...{ws}", a.astype(jnp.float32),
                    b.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
  return prod * scale


def merge(cfg: ModelConfig, lc: LoraConfig, base: Any, adapters: Any) -> Any:
  """The parameters the adapted model computes with: base (dequantized) + scale * A B in every
  targeted slot. Same layout (scanned or not) as ``base``."""
  del cfg
  out = jax.tree.map(lambda x: x, dequantize_base(base))
  for module_path, name, a, b in _adapter_items(adapters):
    proj = model_lib.PROJECTIONS[name]
    parent = out
    *keys, last = (*module_path, *proj.weight.split("/"))
    for k in keys:
      parent = parent[k]
    w = parent[last]
    d = delta(name, a, b, lc.scale)
    if proj.slot is not None:
      # The slot axis comes right before the weight's own axes (after a scanned layers axis).
      axis = w.ndim - len(proj.spec.split("->")[0].split(",")[1]) - 1
      index = (slice(None),) * axis + (proj.slot,)
      parent[last] = w.at[index].add(d.astype(w.dtype))
    else:
      parent[last] = w + d.astype(w.dtype)
  return out


# ----------------------------------------------------------------------------- PEFT


def peft_tensors(cfg: ModelConfig, adapters: Any) -> Iterator[tuple[str, np.ndarray]]:
  """(name, float32 array) of every tensor of a Hugging Face PEFT LoRA adapter
  (``adapter_model.safetensors``): lora_A [rank, in] and lora_B [out, rank] of each targeted
  module, in and out flattened in the order of transformers' weight (``convert.keymap``'s
  rows)."""
  from genrm_jax.convert import keymap  # pylint: disable=g-import-not-at-top
  plain = model_lib.unscan_params(jax.device_get(adapters), cfg)
  modules = {}
  for row in keymap.key_map(cfg):
    module = row.hf.removesuffix(".weight")
    modules[(row.ours.split("/")[0], module.rsplit(".", 1)[-1])] = module
  for path, name, a, b in _adapter_items(plain):
    rank = a.shape[-1]
    module = modules[(path[0], name)]
    yield (f"base_model.model.{module}.lora_A.weight",
           np.ascontiguousarray(np.asarray(a, np.float32).reshape(-1, rank).T))
    yield (f"base_model.model.{module}.lora_B.weight",
           np.ascontiguousarray(np.asarray(b, np.float32).reshape(rank, -1).T))


def peft_config(lc: LoraConfig, base_model: str) -> dict[str, Any]:
  """``adapter_config.json`` of that adapter."""
  _check(lc)
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
          "r": lc.rank, "lora_alpha": lc.alpha, "lora_dropout": lc.dropout,
          "target_modules": sorted(lc.targets), "bias": "none", "fan_in_fan_out": False,
          "use_rslora": False, "use_dora": False, "inference_mode": True,
          "init_lora_weights": True, "modules_to_save": None}
