"""Export a genrm-jax model directory as a Hugging Face transformers folder, or a LoRA model
directory's adapters as a Hugging Face PEFT adapter.

    python -m genrm_jax.convert.export_hf --checkpoint MODEL_DIR --out HF_DIR [--dtype bfloat16]
    python -m genrm_jax.convert.export_hf --checkpoint LORA_MODEL_DIR --out ADAPTER_DIR --peft \
        [--base_model HF_BASE_DIR_OR_HUB_NAME]

Writes config.json, model.safetensors (or model-0000i-of-0000n.safetensors plus
model.safetensors.index.json above ``--max_shard_gb``), and the tokenizer (tokenizer.model,
tokenizer_config.json, special_tokens_map.json), loadable with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``. A LoRA model
directory exports merged (base + scale * A B). With ``--peft`` it writes adapter_config.json and
adapter_model.safetensors instead, which ``peft.PeftModel.from_pretrained(base, ADAPTER_DIR)``
applies to the exported base model (``--checkpoint`` the base model directory). Tensors are
converted and written one shard at a time; the folder appears only once complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from typing import Any

import jax.numpy as jnp
import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from safetensors.numpy import save_file

from genrm_jax import checkpoint
from genrm_jax import cli
from genrm_jax import files
from genrm_jax import vocab as vocab_lib
from genrm_jax.convert import keymap
from genrm_jax.config import ModelConfig

DEFAULT_MAX_SHARD_BYTES = 5 * 2**30
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _shard_plan(cfg: ModelConfig, itemsize: int, max_shard_bytes: int) -> list[list[str]]:
  """HF names grouped into consecutive shards of at most ``max_shard_bytes`` (one tensor min)."""
  shards: list[list[str]] = [[]]
  size = 0
  for name, shape in keymap.hf_shapes(cfg).items():
    n = int(np.prod(shape)) * itemsize
    if shards[-1] and size + n > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += n
  return shards


def write_weights(cfg: ModelConfig, params: Any, out: str, dtype: str,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Writes the safetensors file(s) (and the index when sharded); returns the file names."""
  plan = _shard_plan(cfg, jnp.dtype(dtype).itemsize, max_shard_bytes)
  names = [SINGLE_FILE] if len(plan) == 1 else [
      f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
  tensors = keymap.hf_tensors(cfg, params, dtype)
  weight_map, total = {}, 0
  for fname, shard in zip(names, plan):
    batch = {}
    for expected in shard:
      name, arr = next(tensors)
      assert name == expected, (name, expected)  # plan and tensors walk the same key map
      batch[name] = arr
      weight_map[name] = fname
      total += arr.nbytes
    save_file(batch, os.path.join(out, fname), metadata={"format": "pt"})
    del batch
  if len(plan) > 1:
    with open(os.path.join(out, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return names


def _special_tokens(sp: spm.SentencePieceProcessor) -> dict[str, tuple[str, int]]:
  out = {}
  for key, idx in (("pad_token", sp.pad_id()), ("eos_token", sp.eos_id()),
                   ("bos_token", sp.bos_id()), ("unk_token", sp.unk_id())):
    if idx >= 0:
      out[key] = (sp.id_to_piece(idx), idx)
  return out


def _added_tokens(proto: sp_pb2.ModelProto) -> dict[str, dict[str, Any]]:
  """Control, unknown and user-defined pieces as HF added tokens.

  transformers rebuilds a BPE tokenizer from tokenizer.model, which cannot produce user-defined
  pieces such as "▁Yes" by merges; declaring them makes HF split text as SentencePiece does.
  Pieces holding "▁" are matched after the space -> "▁" normalisation, others on raw text.
  """
  kinds = {proto.SentencePiece.CONTROL, proto.SentencePiece.UNKNOWN,
           proto.SentencePiece.USER_DEFINED}
  out = {}
  for i, p in enumerate(proto.pieces):
    if p.type in kinds:
      user = p.type == proto.SentencePiece.USER_DEFINED
      out[str(i)] = {"content": p.piece, "normalized": user and "▁" in p.piece,
                     "special": not user, "lstrip": False, "rstrip": False,
                     "single_word": False}
  return out


def write_tokenizer(tokenizer_path: str, out: str, cfg: ModelConfig) -> dict[str, int]:
  """Copies tokenizer.model and writes the HF tokenizer configs; returns special token ids."""
  sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
  vocab_lib.check_fits(cfg.vocab_size, tokenizer_path, "exported model", max_padding=None)
  proto = sp_pb2.ModelProto()
  proto.ParseFromString(sp.serialized_model_proto())
  norm = proto.normalizer_spec
  special = _special_tokens(sp)
  if (norm.add_dummy_prefix or norm.remove_extra_whitespaces
      or [idx for _, idx in special.values()] != [0, 1, 2, 3]):
    logging.warning(
        "%s is not Gemma-style (pad/eos/bos/unk = 0/1/2/3, no dummy prefix, whitespace kept): "
        "transformers' GemmaTokenizer will split text differently from SentencePiece",
        tokenizer_path)
  shutil.copyfile(tokenizer_path, os.path.join(out, "tokenizer.model"))
  tok_cfg = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
             "model_max_length": cfg.max_seq_len, "padding_side": "left",
             "added_tokens_decoder": _added_tokens(proto)}
  tok_cfg.update({k: piece for k, (piece, _) in special.items()})
  with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump(tok_cfg, f, indent=2, ensure_ascii=False)
  with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
    json.dump({k: piece for k, (piece, _) in special.items()}, f, indent=2)
  return {k.replace("_token", "_token_id"): idx for k, (_, idx) in special.items()
          if k != "unk_token"}


def write_hf_dir(cfg: ModelConfig, params: Any, out: str, tokenizer_path: str | None = None,
                 dtype: str | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 overwrite: bool = False) -> str:
  """Writes a complete HF folder atomically; returns ``out``."""
  dtype = dtype or cfg.param_dtype
  hf_cfg = keymap.config_to_hf(cfg, dtype)  # fails before anything is written
  with files.atomic_dir(out, overwrite=overwrite) as tmp:
    if tokenizer_path:
      hf_cfg.update(write_tokenizer(tokenizer_path, tmp, cfg))
    write_weights(cfg, params, tmp, dtype, max_shard_bytes)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_cfg, f, indent=2)
  return out


def write_peft_dir(checkpoint_dir: str, out: str, base_model: str | None = None,
                   overwrite: bool = False) -> str:
  """Writes the Hugging Face PEFT adapter of a LoRA model directory atomically; returns ``out``.
  ``base_model``: adapter_config.json's base_model_name_or_path (default: the base model
  directory the adapters were trained on)."""
  from genrm_jax import lora as lora_lib  # pylint: disable=g-import-not-at-top
  lc, adapters, base = checkpoint.load_adapters(checkpoint_dir)
  cfg = ModelConfig.from_dict(checkpoint.read_meta(checkpoint_dir)["model"])
  tensors = dict(lora_lib.peft_tensors(cfg, adapters))
  with files.atomic_dir(out, overwrite=overwrite) as tmp:
    save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
      json.dump(lora_lib.peft_config(lc, base_model or base["path"]), f, indent=2)
  return out


def export_hf(checkpoint_dir: str, out: str, dtype: str | None = None,
              max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False) -> str:
  cfg, params, _ = checkpoint.load_model_dir(checkpoint_dir, cfg_overrides={"scan_layers": False})
  return write_hf_dir(cfg, params, out, checkpoint.tokenizer_path(checkpoint_dir), dtype,
                      max_shard_bytes, overwrite)


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m genrm_jax.convert.export_hf",
                               description=__doc__.split("\n\n")[0])
  ap.add_argument("--checkpoint", required=True, help="genrm-jax model directory")
  ap.add_argument("--out", required=True, help="Hugging Face folder to write")
  ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                  help="tensor dtype (default: the parameter dtype)")
  ap.add_argument("--max_shard_gb", type=float, default=DEFAULT_MAX_SHARD_BYTES / 2**30,
                  help="split model.safetensors into shards of at most this size")
  ap.add_argument("--overwrite", action="store_true")
  ap.add_argument("--peft", action="store_true",
                  help="a LoRA model directory's adapters as a Hugging Face PEFT adapter")
  ap.add_argument("--base_model", default=None,
                  help="--peft: the adapter's base_model_name_or_path (default: the base model "
                       "directory it was trained on)")
  args = ap.parse_args(argv)

  def run() -> None:
    if args.peft:
      write_peft_dir(args.checkpoint, args.out, args.base_model, args.overwrite)
    else:
      export_hf(args.checkpoint, args.out, args.dtype, int(args.max_shard_gb * 2**30),
                args.overwrite)
    print(f"wrote {args.out}")

  return cli.main(run)


if __name__ == "__main__":
  raise SystemExit(main())
