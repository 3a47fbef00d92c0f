"""Import a Hugging Face Gemma / Gemma 2 / Gemma 3 folder, a GGUF file, or an official Gemma Flax
checkpoint.

    python -m genrm_jax.convert.import_model --hf_dir DIR --out MODEL_DIR \
        [--tokenizer tokenizer.model]
    python -m genrm_jax.convert.import_model --gguf FILE.gguf --out MODEL_DIR
    python -m genrm_jax.convert.import_model --official_dir CKPT --preset gemma2_2b --out MODEL_DIR

The HF folder holds config.json and model.safetensors or sharded model-*.safetensors with
model.safetensors.index.json. Of a Gemma3ForConditionalGeneration checkpoint (Gemma 3 4B-27B) only
the text tower is imported; its vision tensors are counted in the log and the model's metadata.
A GGUF file (``genrm_jax.convert.gguf``) brings its own vocabulary, written as tokenizer.model.
Tensors are read one at a time (memory-mapped by safetensors) and put into their shards, so the
host never holds two copies of the model. Every check (config, tensor names and shapes,
vocabulary size) runs before anything is written; the output directory is written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
from typing import Any

import numpy as np
from safetensors import safe_open

from genrm_jax import checkpoint
from genrm_jax import cli
from genrm_jax import vocab as vocab_lib
from genrm_jax.convert import keymap
from genrm_jax.config import ModelConfig, preset

INDEX_FILE = "model.safetensors.index.json"


def _config_json(hf_dir: str) -> tuple[dict[str, Any], str]:
  path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{hf_dir}: config.json is missing")
  with open(path) as f:
    try:
      return json.load(f), path
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from e


def read_hf_config(hf_dir: str) -> ModelConfig:
  d, path = _config_json(hf_dir)
  return keymap.config_from_hf(d, where=path)


def _model_tensors(hf_dir: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
  """{HF name as Gemma*ForCausalLM spells it: (file, name in the file)}, and the vision tensors
  of a multimodal checkpoint, which are left out."""
  files = tensor_files(hf_dir)
  if not keymap.is_multimodal(_config_json(hf_dir)[0]):
    return {name: (fn, name) for name, fn in files.items()}, []
  tower, vision = keymap.text_tower_names(files)
  return {name: (files[in_file], in_file) for name, in_file in tower.items()}, vision


def tensor_files(hf_dir: str) -> dict[str, str]:
  """HF tensor name -> the safetensors file that holds it."""
  index = os.path.join(hf_dir, INDEX_FILE)
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index}: field 'weight_map' is missing")
    files = {n: os.path.join(hf_dir, fn) for n, fn in weight_map.items()}
    for fn in sorted(set(files.values())):
      if not os.path.exists(fn):
        raise FileNotFoundError(f"{index} names {os.path.basename(fn)}, which is missing")
    return files
  paths = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
  if not paths:
    raise FileNotFoundError(f"{hf_dir}: no *.safetensors files")
  files = {}
  for p in paths:
    with safe_open(p, framework="numpy") as f:
      for name in f.keys():
        if name in files:
          raise ValueError(f"tensor {name!r} appears in both {files[name]} and {p}")
        files[name] = p
  return files


def load_hf(hf_dir: str, mesh=None) -> tuple[ModelConfig, Any]:
  """(config, params) of a HF Gemma folder; params land in their shards when ``mesh`` is given."""
  cfg = read_hf_config(hf_dir)
  files, vision = _model_tensors(hf_dir)
  if vision:
    logging.warning("%s: importing the text tower only; %d vision tensors are left out",
                    hf_dir, len(vision))
  with contextlib.ExitStack() as stack:
    handles: dict[str, Any] = {}

    def get_tensor(name: str) -> np.ndarray:
      fn, in_file = files[name]
      if fn not in handles:
        handles[fn] = stack.enter_context(safe_open(fn, framework="numpy"))
      return handles[fn].get_tensor(in_file)

    params = keymap.params_from_hf(cfg, get_tensor, set(files), mesh=mesh, where=hf_dir)
  return cfg, params


def import_hf(hf_dir: str, out: str, tokenizer: str | None = None, mesh=None,
              overwrite: bool = False) -> str:
  """Writes a genrm-jax model directory from a HF folder; returns ``out``."""
  tokenizer = tokenizer or _existing(os.path.join(hf_dir, "tokenizer.model"))
  cfg = read_hf_config(hf_dir)
  multimodal = keymap.is_multimodal(_config_json(hf_dir)[0])
  if tokenizer:
    # A multimodal Gemma 3 pads its embedding past the tokenizer (262_208 rows, 262_144 pieces).
    vocab_lib.check_fits(cfg.vocab_size, tokenizer, f"HF folder {hf_dir}",
                         None if multimodal else 0)
  cfg, params = load_hf(hf_dir, mesh=mesh)
  source: dict[str, Any] = {"hf_dir": os.path.abspath(hf_dir)}
  if multimodal:
    source["vision_tensors_left_out"] = len(_model_tensors(hf_dir)[1])
  return checkpoint.save_model_dir(out, cfg, params, tokenizer_path=tokenizer,
                                   extra={"source": source}, overwrite=overwrite)


def load_official(ckpt_dir: str, cfg: ModelConfig) -> Any:
  """Our params from an official Gemma Flax/orbax checkpoint directory."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"official checkpoint {ckpt_dir} is not a directory")
  tree = ocp.PyTreeCheckpointer().restore(os.path.abspath(ckpt_dir))
  return keymap.params_from_official(tree, cfg)


def import_official(ckpt_dir: str, cfg: ModelConfig, out: str, tokenizer: str | None = None,
                    overwrite: bool = False) -> str:
  # Official Gemma 1 embeddings are padded past the tokenizer (256128 rows, 256000 pieces).
  if tokenizer:
    vocab_lib.check_fits(cfg.vocab_size, tokenizer, f"official checkpoint {ckpt_dir}", None)
  params = load_official(ckpt_dir, cfg)
  return checkpoint.save_model_dir(out, cfg, params, tokenizer_path=tokenizer,
                                   extra={"source": {"official_dir": os.path.abspath(ckpt_dir)}},
                                   overwrite=overwrite)


def _existing(path: str) -> str | None:
  return path if os.path.exists(path) else None


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m genrm_jax.convert.import_model",
                               description=__doc__.split("\n\n")[0])
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--hf_dir", help="Hugging Face folder: config.json + *.safetensors")
  src.add_argument("--gguf", help="GGUF file of a Gemma / Gemma 2 / Gemma 3 (llama.cpp)")
  src.add_argument("--official_dir", help="official Gemma Flax/orbax checkpoint directory")
  ap.add_argument("--preset", help="model preset of an official checkpoint (e.g. gemma2_2b)")
  ap.add_argument("--out", required=True, help="genrm-jax model directory to write")
  ap.add_argument("--tokenizer", help="SentencePiece tokenizer.model (default: the HF folder's)")
  ap.add_argument("--overwrite", action="store_true")
  args = ap.parse_args(argv)
  if args.gguf and args.tokenizer:
    ap.error("--gguf brings its own vocabulary; --tokenizer does not apply")
  if args.official_dir and not args.preset:
    ap.error("--official_dir needs --preset (official checkpoints carry no config)")

  def run() -> None:
    if args.hf_dir:
      import_hf(args.hf_dir, args.out, args.tokenizer, overwrite=args.overwrite)
    elif args.gguf:
      from genrm_jax.convert import gguf  # pylint: disable=g-import-not-at-top
      gguf.import_gguf(args.gguf, args.out, overwrite=args.overwrite)
    else:
      import_official(args.official_dir, preset(args.preset), args.out, args.tokenizer,
                      overwrite=args.overwrite)
    print(f"wrote {args.out}")

  return cli.main(run)


if __name__ == "__main__":
  raise SystemExit(main())
