"""The device mesh and the one table that maps logical axis names to mesh axes.

Parameters and activations are annotated with logical names (``embed``, ``heads`` ...); this module
alone decides which mesh axes (``data``, ``fsdp``, ``tensor``) they land on. A mesh axis that does
not divide a dimension is dropped for that dimension (e.g. Gemma-2B's single KV head on a 4-way
tensor axis stays replicated) instead of failing at compile time.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or tuple of mesh axes, or None for replicated).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("kv_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_hidden", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("hidden", "tensor"),
    ("layers", None),
    # A LoRA adapter's rank: small, replicated; its other axis follows the base weight's.
    ("lora_rank", None),
    ("stack", None),
    ("norm", None),
)


def mesh_sizes(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) over ``num_devices``; ``-1`` for one axis takes the devices left over."""
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: data={data}, fsdp={fsdp}, tensor={tensor}: at most one axis may be -1")
  if -1 in sizes:
    rest = -math.prod(sizes)
    if num_devices % rest:
      raise ValueError(f"mesh: data={data} x fsdp={fsdp} x tensor={tensor} (-1 excluded) "
                       f"does not divide {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // rest
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"mesh: data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} "
        f"but {num_devices} devices are available")
  return sizes[0], sizes[1], sizes[2]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; ``-1`` for one axis takes the devices left over."""
  devices = list(devices if devices is not None else jax.devices())
  # Mesh(...) keeps the axes in Auto mode, which with_sharding_constraint needs
  # (jax.make_mesh would make them Explicit).
  return Mesh(np.asarray(devices).reshape(mesh_sizes(data, fsdp, tensor, len(devices))),
              MESH_AXES)


def _mesh_axes_for(name: str | None, rules) -> tuple[str, ...]:
  if name is None:
    return ()
  for logical, mesh_axes in rules:
    if logical == name:
      if mesh_axes is None:
        return ()
      return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
  raise KeyError(f"logical axis {name!r} has no entry in LOGICAL_RULES")


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int] | None, mesh: Mesh,
                    rules=LOGICAL_RULES) -> P:
  """The PartitionSpec for one array, dropping mesh axes that do not divide its dimension."""
  used: set[str] = set()
  spec = []
  for i, name in enumerate(logical):
    axes = []
    size = 1
    for ax in _mesh_axes_for(name, rules):
      if ax in used or ax not in mesh.shape:
        continue
      n = mesh.shape[ax]
      if shape is not None and shape[i] % (size * n):
        continue
      axes.append(ax)
      size *= n
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return P(*spec)


def logical_sharding(logical: Sequence[str | None], shape: Sequence[int] | None,
                     mesh: Mesh, rules=LOGICAL_RULES) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(logical, shape, mesh, rules))


def tree_shardings(abstract_boxed: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
  """NamedShardings for a tree of (possibly ``nn.Partitioned``-boxed) abstract arrays.

  Leaves without logical names are replicated.
  """

  def one(x):
    if isinstance(x, nn.Partitioned):
      return logical_sharding(x.names, x.value.shape, mesh, rules)
    return NamedSharding(mesh, P())

  return jax.tree.map(one, abstract_boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def unbox(tree: Any) -> Any:
  return nn.meta.unbox(tree)


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """Activation sharding constraint by logical names; a no-op outside a mesh context."""
  mesh = _current_mesh()
  if mesh is None or mesh.empty or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, logical_sharding(logical, x.shape, mesh))


_MESH_STACK: list[Mesh] = []


@contextlib.contextmanager
def use_mesh(mesh: Mesh):
  """Makes ``mesh`` the one activation constraints refer to while tracing."""
  # Constraints carry explicit NamedShardings, so no global mesh context is needed.
  _MESH_STACK.append(mesh)
  try:
    yield mesh
  finally:
    _MESH_STACK.pop()


def _current_mesh() -> Mesh | None:
  return _MESH_STACK[-1] if _MESH_STACK else None


def batch_shard_count(batch: int) -> int:
  """Blocks the current mesh splits a [batch, ...] activation into (1 outside a mesh)."""
  mesh = _current_mesh()
  if mesh is None or mesh.empty:
    return 1
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  return n if batch % n == 0 else 1


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a [batch, ...] input array: batch over (data, fsdp)."""
  return logical_sharding(("batch",) + (None,) * (ndim - 1), None, mesh)


def check_divides(mesh: Mesh, *, batch: int | None = None, num_heads: int | None = None,
                  where: str = "") -> None:
  """Fails before compiling when the batch or the heads cannot be laid out on the mesh."""
  ctx = f" ({where})" if where else ""
  if batch is not None:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch % n:
      raise ValueError(
          f"batch size {batch} is not divisible by data x fsdp = {n} mesh devices{ctx}")
  if num_heads is not None and num_heads % mesh.shape["tensor"]:
    raise ValueError(
        f"num_heads={num_heads} is not divisible by the tensor axis ({mesh.shape['tensor']}){ctx}")
