"""A self-describing model directory: config, parameters (orbax) and the vocabulary together.

Layout of a model directory::

    DIR/genrm_model.json   {"model": ModelConfig dict, "head": ..., "format_version": 1, ...}
    DIR/params/            orbax StandardCheckpointer tree (per-layer ``layer_{i}`` layout)
    DIR/tokenizer.model    the SentencePiece model the parameters were trained with (if any)

Parameters are always stored unscanned, so a directory loads into either layout. Writing goes to a
temporary sibling that is renamed at the end: a failure never leaves a half-written directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from genrm_jax import model as model_lib
from genrm_jax.config import ModelConfig

META_FILE = "genrm_model.json"
TOKENIZER_FILE = "tokenizer.model"
FORMAT_VERSION = 1


def is_remote(path: str) -> bool:
  """A URL-style path (gs://...) that os and shutil cannot handle."""
  return "://" in str(path)


def abspath(path: str) -> str:
  return str(path) if is_remote(path) else os.path.abspath(path)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def atomic_dir(out: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary directory beside ``out``; renames it to ``out`` only on success.

  With several JAX processes, all of them must enter: they share one temporary directory (on a
  filesystem they all see), which process 0 creates and renames. Object stores (gs://) cannot
  rename a directory, so there the directory is written in place and its ``genrm_model.json``,
  written last, marks it complete.
  """
  if is_remote(out):
    target = epath.Path(out)
    if target.exists() and any(target.iterdir()) and not overwrite:
      raise FileExistsError(f"output directory {out} exists and is not empty")
    _barrier(f"atomic_dir checked {out}")
    yield out
    _barrier(f"atomic_dir written {out}")
    return
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    if os.listdir(out):
      raise FileExistsError(f"output directory {out} exists and is not empty")
  parent = os.path.dirname(out)
  main = jax.process_index() == 0
  if jax.process_count() > 1:
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp-shared")
    if main:
      shutil.rmtree(tmp, ignore_errors=True)
      os.makedirs(tmp)
    _barrier(f"atomic_dir created {out}")
  else:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
  try:
    yield tmp
  except BaseException:
    if main:
      shutil.rmtree(tmp, ignore_errors=True)
    raise
  _barrier(f"atomic_dir written {out}")
  if main:
    if os.path.exists(out):
      shutil.rmtree(out)
    os.rename(tmp, out)
  _barrier(f"atomic_dir renamed {out}")


def save_model_dir(out: str, cfg: ModelConfig, params: Any, tokenizer_path: str | None = None,
                   extra: dict[str, Any] | None = None, overwrite: bool = False) -> str:
  """Writes a model directory atomically. ``extra`` holds e.g. the objective or a value head."""
  params = model_lib.unscan_params(params, cfg)
  with atomic_dir(out, overwrite=overwrite) as tmp:
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(tmp, "params"), params)
    ckptr.wait_until_finished()
    meta = {"format_version": FORMAT_VERSION, "model": cfg.replace(scan_layers=False).to_dict()}
    meta.update(extra or {})
    # One writer; the metadata goes last, so a directory that has it is complete.
    if jax.process_index() == 0:
      if tokenizer_path:
        epath.Path(tokenizer_path).copy(epath.Path(tmp) / TOKENIZER_FILE, overwrite=True)
      (epath.Path(tmp) / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
  return out


def read_meta(path: str) -> dict[str, Any]:
  meta_path = epath.Path(path) / META_FILE
  if not meta_path.exists():
    raise FileNotFoundError(f"{path} is not a genrm-jax model directory: {META_FILE} is missing")
  try:
    meta = json.loads(meta_path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{meta_path}: line {e.lineno}: invalid JSON ({e.msg})") from e
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{meta_path}: format_version {meta.get('format_version')!r}, "
                     f"expected {FORMAT_VERSION}")
  return meta


def load_model_dir(path: str, mesh=None, cfg_overrides: dict[str, Any] | None = None
                   ) -> tuple[ModelConfig, Any, dict[str, Any]]:
  """Loads (config, params, meta). With ``mesh`` each array is restored straight into its shards.

  ``cfg_overrides`` may change numerics/memory fields (dtype, scan_layers, remat_policy) but the
  stored shapes must match.
  """
  meta = read_meta(path)
  cfg = ModelConfig.from_dict(meta["model"])
  stored = cfg
  if cfg_overrides:
    cfg = cfg.replace(**cfg_overrides)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
      model_lib.unscan_params(model_lib.sharding.unbox(model_lib.abstract_params(
          stored)), stored))
  if mesh is not None:
    shardings = model_lib.unscan_params(model_lib.param_shardings(stored, mesh), stored)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  params = ocp.StandardCheckpointer().restore(os.path.join(path, "params"), abstract)
  params = model_lib.scan_params(params, cfg)
  return cfg, params, meta


def tokenizer_path(path: str) -> str | None:
  p = epath.Path(path) / TOKENIZER_FILE
  return str(p) if p.exists() else None
