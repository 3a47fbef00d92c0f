"""A self-describing model directory: config, parameters (orbax) and the vocabulary together.

Layout of a model directory::

    DIR/genrm_model.json   {"model": ModelConfig dict, "head": ..., "format_version": 1, ...}
    DIR/params/            orbax StandardCheckpointer tree (per-layer ``layer_{i}`` layout)
    DIR/tokenizer.model    the SentencePiece model the parameters were trained with (if any)

Parameters are always stored unscanned, so a directory loads into either layout. A directory is
written with ``files.atomic_dir``: a failure never leaves a half-written one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from genrm_jax import files
from genrm_jax import model as model_lib
from genrm_jax import vocab as vocab_lib
from genrm_jax.config import ModelConfig

META_FILE = "genrm_model.json"
TOKENIZER_FILE = "tokenizer.model"
FORMAT_VERSION = 1


def save_model_dir(out: str, cfg: ModelConfig, params: Any, tokenizer_path: str | None = None,
                   extra: dict[str, Any] | None = None, overwrite: bool = False) -> str:
  """Writes a model directory atomically. ``extra`` holds e.g. the objective or a value head."""
  params = model_lib.unscan_params(params, cfg)
  with files.atomic_dir(out, overwrite=overwrite) as tmp:
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
  if not epath.Path(path).is_dir():
    raise FileNotFoundError(f"model directory {path} does not exist")
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
  # Orbax refuses relative paths; a model directory given relative to the working directory is fine.
  params = ocp.StandardCheckpointer().restore(os.path.join(files.abspath(path), "params"), abstract)
  params = model_lib.scan_params(params, cfg)
  return cfg, params, meta


def tokenizer_path(path: str) -> str | None:
  p = epath.Path(path) / TOKENIZER_FILE
  return str(p) if p.exists() else None


def model_meta(model_dir: str, what: str = "checkpoint") -> dict[str, Any]:
  """A model directory's metadata; a missing directory is an error naming ``what``."""
  if not epath.Path(model_dir).is_dir():
    raise FileNotFoundError(f"{what} {model_dir}: the directory does not exist")
  return read_meta(model_dir)


def load_model_and_vocab(model_dir: str, mesh=None, need_verdict: bool = False,
                         what: str = "checkpoint"):
  """(cfg, params, meta, vocab) of a model directory whose vocabulary fits its embedding; errors
  name ``what`` (e.g. "verifier v").

  ``need_verdict``: " Yes" / " No" must be single tokens (GenRM scoring reads their probability).
  """
  meta_cfg = model_meta(model_dir, what)["model"]
  tok = tokenizer_path(model_dir)
  if tok is None:
    raise FileNotFoundError(f"{what} {model_dir} has no {TOKENIZER_FILE}")
  vocab = vocab_lib.load_vocab(tok)
  vocab_lib.check_fits(meta_cfg["vocab_size"], vocab, f"{what} {model_dir}", vocab_lib.MAX_PADDING)
  if need_verdict:
    try:
      vocab_lib.verdict_token_ids(vocab)
    except ValueError as e:
      raise ValueError(f"{what} {model_dir}: {e}") from e
  cfg, params, meta = load_model_dir(model_dir, mesh=mesh)
  return cfg, params, meta, vocab
