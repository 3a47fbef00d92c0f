"""The KV cache: its layout, and the operations the sampler applies to whole caches.

Keys and values are [n, B, K, H, S] buffers (see ``init_cache``); ``pos`` [B, S] holds each slot's
position (-1: empty or padding), ``end`` the next write index, shared by all rows. Global layers
store a token per slot in write order (``k``, ``v``); local sliding-window layers store it at
position modulo the window (``k_local``, ``v_local``, positions in ``pos_local``), so a long
context costs them no more than their window. A cache may also carry ``shared``: the keys,
values and positions of fewer rows that its rows read before their own (``with_shared``). The
model reads and writes one layer's buffers (``model.Attention``); everything that touches all of
a cache at once is here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from genrm_jax import sharding
from genrm_jax.config import AttentionType, ModelConfig

Cache = dict[str, Any]
CACHE_NAMES = {AttentionType.GLOBAL: ("k", "v"),
               AttentionType.LOCAL_SLIDING: ("k_local", "v_local")}


def local_writes(cfg: ModelConfig, cache: Cache, new_pos):
  """Where local layers store new tokens (position mod window, per row; out of range = dropped),
  their cache's new positions, and the key positions they attend to (``model._cache_update``).

  A row's positions are below the cache length (they count its real tokens), so while the cache
  is no longer than the window no two positions share a slot and the slots never move as it grows.
  """
  w = cfg.sliding_window_size
  old = cache["pos_local"]
  n = old.shape[1]
  # Of a row's new tokens only the last w positions are kept: two tokens w apart share a slot.
  keep = (new_pos >= 0) & (new_pos > jnp.max(new_pos, axis=1, keepdims=True) - w)
  slots = jnp.where(keep, new_pos % w, n)
  pos_local = old.at[jnp.arange(old.shape[0])[:, None], slots].set(new_pos, mode="drop")
  if n < cache["pos"].shape[1]:
    return slots, pos_local, jnp.concatenate([old, new_pos], axis=1)
  return slots, pos_local, pos_local


def local_slots(cfg: ModelConfig, length: int) -> int:
  return min(length, cfg.sliding_window_size)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype: str | None = None) -> Cache:
  """An empty KV cache for ``length`` tokens per sequence; local layers get at most
  ``sliding_window_size`` slots.

  Keys and values are [n, B, K, H, S] buffers: with ``scan_layers`` all layers of a kind in one
  (n = their count), which the scan carries; else a tuple of one buffer (n = 1) per layer, since
  reading one layer out of a stacked buffer copies that layer's whole cache at every decode step
  (with the transposes the [B, S, K, H] layout cost, 60% of a long-prompt decode, measured).
  """
  dt = jnp.dtype(dtype or cfg.dtype)
  cache = {"pos": jnp.full((batch, length), -1, jnp.int32), "end": jnp.zeros((), jnp.int32)}
  kinds = cfg.layer_attention_types
  for kind, names in CACHE_NAMES.items():
    if kind in kinds:
      slots = length if kind == AttentionType.GLOBAL else local_slots(cfg, length)
      shape = (batch, cfg.num_kv_heads, cfg.head_dim, slots)
      n = kinds.count(kind)
      buf = (jnp.zeros((n, *shape), dt) if cfg.scan_layers
             else tuple(jnp.zeros((1, *shape), dt) for _ in range(n)))
      cache.update({name: buf for name in names})
  if AttentionType.LOCAL_SLIDING in kinds:
    cache["pos_local"] = jnp.full((batch, local_slots(cfg, length)), -1, jnp.int32)
  return cache


def cache_rows(cache: Cache, parent: jax.Array) -> Cache:
  """Rows ``parent`` (repeats allowed) of every cache array: row i becomes that of parent[i]."""
  return {name: x if name == "end" else jax.tree.map(
      lambda a, name=name: jnp.take(a, parent, axis=CACHE_LOGICAL[name].index("batch")), x)
          for name, x in cache.items()}


def grow_cache(cfg: ModelConfig, cache: Cache, n: int) -> Cache:
  """Room for ``n`` more tokens (empty slots); local layers' caches stop growing at the window."""
  length = cache["pos"].shape[1] + n
  out = {}
  for name, x in cache.items():
    if name == "end":
      out[name] = x
      continue
    axis = CACHE_LOGICAL[name].index("kv_length")
    target = length if name in ("k", "v", "pos") else local_slots(cfg, length)

    def grow(a, axis=axis, target=target, name=name):
      pad = [(0, 0)] * a.ndim
      pad[axis] = (0, target - a.shape[axis])
      return jnp.pad(a, pad, constant_values=-1 if name.startswith("pos") else 0)

    out[name] = jax.tree.map(grow, x)
  return out


_KV_LOGICAL = ("layers", "batch", "act_kv_heads", None, "kv_length")
CACHE_LOGICAL = {"k": _KV_LOGICAL, "v": _KV_LOGICAL, "k_local": _KV_LOGICAL,
                 "v_local": _KV_LOGICAL, "pos": ("batch", "kv_length"),
                 "pos_local": ("batch", "kv_length"), "end": ()}


def cache_shardings(cache_or_shapes: Cache, mesh) -> dict[str, Any]:
  return {k: cache_shardings(v, mesh) if k == "shared" else jax.tree.map(
      lambda a, k=k: sharding.logical_sharding(CACHE_LOGICAL[k], a.shape, mesh), v)
          for k, v in cache_or_shapes.items()}


def layer_buffer(buf, layer: int) -> jax.Array:
  """Layer ``layer``'s [B, K, H, S] keys or values out of a cache entry (stack or tuple)."""
  if isinstance(buf, tuple):
    return buf[layer][0]
  return jax.lax.dynamic_index_in_dim(buf, layer, keepdims=False)


# ----------------------------------------------------------------------------- shared prefixes
#
# R samples of each of P prompts: rather than R copies of a prompt's keys in R rows (read R
# times at every decode step), rows p*R ... p*R + R-1 keep only their own new tokens and attend
# to row p of a shared cache as well (``model.Attention``). Global-attention layers only: a local
# layer's ring would need the shared and the own slots interleaved by position.


def with_shared(cfg: ModelConfig, shared: Cache, reps: int, n: int) -> Cache:
  """An empty cache of ``n`` slots for ``reps`` rows per row of ``shared`` (a full cache:
  ``end`` at its last slot, as every extension leaves it), reading ``shared`` before its own.
  The shared keys and values stay one row per prompt; their positions, a few integers a slot,
  are spread to every row once here rather than at every decode step."""
  if "pos_local" in shared:
    raise ValueError("a shared-prefix cache serves models with global attention layers only")
  rows = shared["pos"].shape[0] * reps
  own = init_cache(cfg, rows, n, dtype=str(shared["k"][0].dtype))
  return {**own, "shared": {"k": shared["k"], "v": shared["v"],
                            "pos": jnp.repeat(shared["pos"], reps, axis=0)}}


def merge_shared(cache: Cache) -> Cache:
  """The plain cache of the same rows: each row's shared slots copied in front of its own."""
  shared = cache["shared"]
  reps = cache["pos"].shape[0] // jax.tree.leaves(shared["k"])[0].shape[1]

  def merge(a, b):  # [n, P, K, H, S] after [n, P * reps, K, H, S']
    return jnp.concatenate([jnp.repeat(a, reps, axis=1), b], axis=-1)

  out = {name: jax.tree.map(merge, shared[name], cache[name]) for name in ("k", "v")}
  return {**out, "pos": jnp.concatenate([shared["pos"], cache["pos"]], axis=1),
          "end": shared["pos"].shape[1] + cache["end"]}
