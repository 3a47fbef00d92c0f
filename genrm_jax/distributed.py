"""Multi-process (multi-host) plumbing: start-up, per-host data shards, global arrays, gathering.

Every process runs the same program over one global mesh. Each reads only the rows of the global
batch that its own devices hold, turns them into global ``jax.Array`` s, and everything that is
written (logs, metrics, eval results) is written by process 0 alone; orbax checkpoints are
written by all processes together into one directory.

Start-up (``initialize``) takes the coordinator address, process count and process id from
arguments or from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``; on a
multi-host Cloud TPU slice, GKE or SLURM, JAX detects them itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from genrm_jax import sharding as sharding_lib

MODES = ("auto", "on", "off")

def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _cluster_has_many_hosts() -> bool:
  """Whether the environment that GKE TPU JobSets or SLURM set up describes several hosts.

  A Cloud TPU VM slice keeps its worker list in the metadata server instead: launch/tpu_vm.sh
  passes ``--distributed=on`` there.
  """
  env = os.environ
  slurm = env.get("SLURM_NTASKS", "")
  return (bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))
          or "," in env.get("TPU_WORKER_HOSTNAMES", "")
          or (slurm.isdigit() and int(slurm) > 1))


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
  """Joins the distributed job when there is one; returns whether more than one process runs.

  ``mode``: "off" never initialises; "on" always does (missing values come from the environment
  or JAX's cluster detection: TPU slices, GKE, SLURM); "auto" does when more than one process is
  asked for or a multi-host cluster environment is present. Must run before anything touches a
  JAX device. Calling it again is a no-op.
  """
  if mode not in MODES:
    raise ValueError(f"distributed mode {mode!r}; expected one of {MODES}")
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None:
    num_processes = _env_int("JAX_NUM_PROCESSES")
  if process_id is None:
    process_id = _env_int("JAX_PROCESS_ID")
  if mode == "off":
    return False
  if mode == "auto":
    explicit = num_processes is not None and num_processes > 1
    if not explicit and not _cluster_has_many_hosts():
      return False
  if num_processes is not None and num_processes > 1 and coordinator_address is None and (
      not _cluster_has_many_hosts()):
    raise ValueError(
        f"{num_processes} processes asked for but no coordinator address: pass "
        "--coordinator_address=HOST:PORT or set JAX_COORDINATOR_ADDRESS")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  logging.info("joined distributed job: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return jax.process_count() > 1


def add_flags(ap: argparse.ArgumentParser) -> None:
  """The command-line flags of ``initialize`` (train and eval share them)."""
  ap.add_argument("--distributed", choices=MODES, default="auto",
                  help="join a multi-process JAX job: auto (when one is configured or detected), "
                       "on (always; launch/ scripts use it on TPU slices), off")
  ap.add_argument("--coordinator_address", default=None,
                  help="HOST:PORT of process 0 (default $JAX_COORDINATOR_ADDRESS)")
  ap.add_argument("--num_processes", type=int, default=None,
                  help="number of processes (default $JAX_NUM_PROCESSES)")
  ap.add_argument("--process_id", type=int, default=None,
                  help="this process's index (default $JAX_PROCESS_ID)")


def initialize_from_flags(args: argparse.Namespace) -> bool:
  """``initialize`` with the values of ``add_flags``; quiets logging on processes other than 0."""
  multi = initialize(args.distributed, args.coordinator_address, args.num_processes,
                     args.process_id)
  quiet_non_main_logging()
  return multi


def is_main() -> bool:
  """Whether this process writes logs, metrics, progress bars and result files."""
  return jax.process_index() == 0


def quiet_non_main_logging() -> None:
  """Keeps INFO logs to process 0; other processes only report warnings and errors."""
  if not is_main():
    logging.getLogger().setLevel(logging.WARNING)
    try:
      from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
      absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
      pass


@dataclasses.dataclass(frozen=True)
class BatchShard:
  """Which rows of every global batch this process feeds.

  ``index``/``count`` go to the data pipeline as ``shard_id``/``num_shards``; processes whose
  devices hold the same rows (a model-parallel axis spanning hosts) read the same shard.
  """

  index: int
  count: int
  local_batch: int


def batch_shard(mesh: Mesh, global_batch: int) -> BatchShard:
  """This process's share of a [global_batch, ...] array laid out with ``batch_sharding``."""
  sharding_lib.check_divides(mesh, batch=global_batch, where="global batch")
  shd = sharding_lib.batch_sharding(mesh, 1)
  rows = set()
  for idx in shd.addressable_devices_indices_map((global_batch,)).values():
    rows.update(range(*idx[0].indices(global_batch)))
  if not rows:
    raise ValueError(f"process {jax.process_index()} holds no device of the mesh")
  lo, hi = min(rows), max(rows) + 1
  if hi - lo != len(rows):
    raise ValueError(
        f"process {jax.process_index()} holds non-contiguous batch rows on this mesh; build the "
        "mesh from jax.devices() in order (sharding.make_mesh) so each host owns one block")
  local = hi - lo
  return BatchShard(index=lo // local, count=global_batch // local, local_batch=local)


def _batch_blocks(mesh: Mesh) -> int:
  """Into how many per-process blocks ``batch_sharding`` cuts the batch axis on ``mesh``."""
  spec = sharding_lib.batch_sharding(mesh, 1).spec[0]
  axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
  names = list(mesh.axis_names)
  parts, local = 1, set()
  for a in axes:
    parts *= mesh.shape[a]
  for coords in np.ndindex(mesh.devices.shape):
    if mesh.devices[coords].process_index == jax.process_index():
      local.add(tuple(coords[names.index(a)] for a in axes))
  if not local:
    raise ValueError(f"process {jax.process_index()} holds no device of the mesh")
  return parts // len(local)


def global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local batch rows (the process's ``batch_shard``) -> global arrays sharded on batch.

  In a single process this is a plain sharded ``device_put`` of the whole batch.
  """
  blocks = _batch_blocks(mesh)
  out = {}
  for name, local in batch.items():
    local = np.asarray(local)
    if local.ndim == 0:
      raise ValueError(f"batch field {name!r} is a scalar; every field needs a batch axis")
    global_shape = (local.shape[0] * blocks,) + local.shape[1:]
    out[name] = jax.make_array_from_process_local_data(
        sharding_lib.batch_sharding(mesh, local.ndim), local, global_shape)
  return out


def to_host(tree: Any) -> Any:
  """Every array in ``tree`` as a full numpy array on every process (an all-gather if needed)."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(one, tree)


def allgather_ragged(local: np.ndarray) -> list[np.ndarray]:
  """Every process's ``local`` array (lengths on axis 0 may differ), by process, on every process.

  The arrays travel as raw bytes, padded to the longest, so any dtype (float64 included, which
  JAX would otherwise narrow to float32) arrives bit for bit. Trailing shapes and dtypes must agree.
  """
  local = np.ascontiguousarray(local)
  if jax.process_count() == 1:
    return [local]
  raw = local.reshape(-1).view(np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray([raw.size], np.int32)).reshape(-1)
  padded = np.zeros(max(int(sizes.max()), 1), np.uint8)
  padded[:raw.size] = raw
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [gathered[p, :n].view(local.dtype).reshape((-1,) + local.shape[1:])
          for p, n in enumerate(sizes)]


def sync(name: str) -> None:
  """A barrier across processes (no-op with one process), e.g. before process 0 reads files."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
