"""A self-describing model directory: config, parameters (orbax) and the vocabulary together.

Layout of a model directory::

    DIR/genrm_model.json   {"model": ModelConfig dict, "head": ..., "format_version": 1, ...}
    DIR/params/            orbax StandardCheckpointer tree (per-layer ``layer_{i}`` layout)
    DIR/tokenizer.model    the SentencePiece model the parameters were trained with (if any)

A LoRA model directory holds ``adapters/`` instead of ``params/``, and its metadata's ``lora``
names the LoRA config and the base model directory, by path and content hash (``content_hash``).
It loads as the merged model (``lora.merge``: base + scale * A B; merging once costs a few matrix
products, after which every command runs the plain model), so ``eval``, ``serve``, ``generate``,
``convert.export_hf`` and ``init_from`` take it as they take any model directory; a missing or
changed base is an error naming it.

Parameters are always stored unscanned, so a directory loads into either layout. A directory is
written with ``files.atomic_dir``: a failure never leaves a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from genrm_jax import files
from genrm_jax import model as model_lib
from genrm_jax import vocab as vocab_lib
from genrm_jax.config import RUNTIME_FIELDS, LoraConfig, ModelConfig

META_FILE = "genrm_model.json"
TOKENIZER_FILE = "tokenizer.model"
FORMAT_VERSION = 1
PARAMS_DIR, ADAPTERS_DIR = "params", "adapters"


def content_hash(path: str) -> str:
  """sha256 over a directory's files (relative paths and bytes, in sorted order)."""
  root = epath.Path(path)

  def walk(d: epath.Path):
    for p in sorted(d.iterdir()):
      yield from walk(p) if p.is_dir() else (p,)

  h = hashlib.sha256()
  for f in walk(root):
    h.update(str(f.relative_to(root)).encode() + b"\0")
    with f.open("rb") as fh:
      while chunk := fh.read(1 << 24):
        h.update(chunk)
  return h.hexdigest()


def base_record(base_dir: str) -> dict[str, str]:
  """How a LoRA run names its base model directory: absolute path and content hash."""
  return {"path": files.abspath(base_dir), "sha256": content_hash(base_dir)}


def save_model_dir(out: str, cfg: ModelConfig, params: Any, tokenizer_path: str | None = None,
                   extra: dict[str, Any] | None = None, overwrite: bool = False,
                   lora: tuple[LoraConfig, dict[str, str]] | None = None) -> str:
  """Writes a model directory atomically. ``extra`` holds e.g. the objective or a value head.
  ``lora``: (config, ``base_record``): ``params`` are the adapters of that base."""
  params = model_lib.unscan_params(params, cfg)
  with files.atomic_dir(out, overwrite=overwrite) as tmp:
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(tmp, ADAPTERS_DIR if lora else PARAMS_DIR), params)
    ckptr.wait_until_finished()
    meta = {"format_version": FORMAT_VERSION, "model": cfg.replace(scan_layers=False).to_dict()}
    if lora:
      meta["lora"] = {"config": lora[0].to_dict(), "base": lora[1]}
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
  if "lora" in meta:
    return cfg, _load_merged(path, meta, cfg, mesh, cfg_overrides), meta
  abstract = model_lib.sharding.unbox(model_lib.abstract_params(stored))
  shardings = None if mesh is None else model_lib.param_shardings(stored, mesh)
  params = _restore(path, PARAMS_DIR, stored, abstract, shardings)
  return cfg, model_lib.scan_params(params, cfg), meta


def _restore(path: str, subdir: str, stored: ModelConfig, abstract: Any, shardings: Any) -> Any:
  """The unscanned tree in ``path/subdir`` (orbax), into its shards when given."""
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          model_lib.unscan_params(abstract, stored))
  if shardings is not None:
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        model_lib.unscan_params(shardings, stored))
  # Orbax refuses relative paths; a model directory given relative to the working directory is fine.
  return ocp.StandardCheckpointer().restore(os.path.join(files.abspath(path), subdir), abstract)


def check_base(path: str, base: dict[str, str]) -> None:
  """A LoRA model directory's base must be there and unchanged."""
  where = f"LoRA model directory {path}: its base model directory {base['path']}"
  if not (epath.Path(base["path"]) / META_FILE).exists():
    raise FileNotFoundError(f"{where} is missing ({META_FILE} lora.base.path)")
  now = content_hash(base["path"])
  if now != base["sha256"]:
    raise ValueError(f"{where} has changed since training (content sha256 {now[:16]}..., "
                     f"recorded {base['sha256'][:16]}...)")


def load_adapters(path: str, mesh=None) -> tuple[LoraConfig, Any, dict[str, str]]:
  """(LoRA config, unscanned adapters, base record) of a LoRA model directory."""
  from genrm_jax import lora as lora_lib  # pylint: disable=g-import-not-at-top
  meta = read_meta(path)
  if "lora" not in meta:
    raise ValueError(f"{path} is not a LoRA model directory (its {META_FILE} has no 'lora')")
  cfg = ModelConfig.from_dict(meta["model"])
  lc = LoraConfig.from_dict(meta["lora"]["config"])
  shardings = None if mesh is None else lora_lib.adapter_shardings(cfg, lc, mesh)
  adapters = _restore(path, ADAPTERS_DIR, cfg, lora_lib.abstract_adapters(cfg, lc), shardings)
  return lc, adapters, meta["lora"]["base"]


def _load_merged(path: str, meta: dict[str, Any], cfg: ModelConfig, mesh,
                 cfg_overrides: dict[str, Any] | None) -> Any:
  from genrm_jax import lora as lora_lib  # pylint: disable=g-import-not-at-top
  check_base(path, meta["lora"]["base"])
  lc, adapters, base = load_adapters(path, mesh)
  base_cfg, params, _ = load_model_dir(base["path"], mesh, cfg_overrides)
  diff = base_cfg.differences(cfg, ignore=RUNTIME_FIELDS)
  if diff:
    raise ValueError(f"LoRA model directory {path}: its base {base['path']} holds another model "
                     f"config ({diff})")
  adapters = model_lib.scan_params(adapters, cfg)
  merge = lambda p, a: lora_lib.merge(cfg, lc, lora_lib.quantize_base(p, lc), a)  # noqa: E731
  if mesh is None:
    return jax.jit(merge)(params, adapters)
  with model_lib.sharding.use_mesh(mesh):
    return jax.jit(merge, out_shardings=model_lib.param_shardings(cfg, mesh))(params, adapters)


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
