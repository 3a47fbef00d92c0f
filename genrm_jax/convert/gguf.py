"""Import a Gemma / Gemma 2 / Gemma 3 GGUF file (llama.cpp's format) as a genrm-jax model directory.

    python -m genrm_jax.convert.import_model --gguf FILE.gguf --out MODEL_DIR

The file is memory-mapped and its container parsed here (the ``gguf`` package's reader takes over a
minute on a 262K-token vocabulary); the block formats are dequantized here, in numpy, to float32
with ggml's arithmetic (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K). Tensor
names map onto the HF names of ``genrm_jax.convert.keymap``, so the same rows place them in our
tree. The vocabulary stored in the file (tokens, scores, token types, special ids) is rebuilt as
the SentencePiece ``tokenizer.model`` Gemma ships, so the model directory is complete. Every check
(architecture, tensor types, names, shapes, vocabulary) runs before anything is written, and the
directory appears atomically.

What a GGUF file does not state is taken from llama.cpp, which wrote it: Gemma 3's local layers use
RoPE base 10,000 and every 6th layer is global; Gemma 2 and 3 scale queries by head_dim**-0.5 except
the 27B models (46 and 62 layers), which use (embed_dim / num_heads)**-0.5.
"""

from __future__ import annotations

import os
import struct
import tempfile
from typing import Any, Callable

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from genrm_jax import checkpoint
from genrm_jax.convert import keymap
from genrm_jax.config import AttentionType, ModelConfig

ARCHITECTURES = ("gemma", "gemma2", "gemma3")
# llama.cpp's 27B models (by layer count) scale queries by (embed_dim / num_heads)**-0.5.
_LAYERS_OF_27B = {"gemma2": 46, "gemma3": 62}
_GEMMA3_LOCAL_ROPE_BASE = 10_000.0
_GEMMA3_GLOBAL_EVERY = 6

# ----------------------------------------------------------------------------- dequantization


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
  """One fp16 scalar per block at byte ``start``, as float32 [blocks, 1]."""
  return np.ascontiguousarray(blocks[:, start:start + 2]).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  return qs & 0xF, qs >> 4


def _q8_0(b):
  return _f16(b, 0) * np.ascontiguousarray(b[:, 2:34]).view(np.int8)


def _q4_0(b):
  lo, hi = _nibbles(b[:, 2:18])
  return _f16(b, 0) * (np.concatenate([lo, hi], axis=1).astype(np.int8) - 8)


def _q4_1(b):
  lo, hi = _nibbles(b[:, 4:20])
  return _f16(b, 0) * np.concatenate([lo, hi], axis=1) + _f16(b, 2)


def _five_bit(qh_u32: np.ndarray, qs: np.ndarray) -> np.ndarray:
  """Q5_0/Q5_1 values 0..31: low nibbles (elements 0-15), high nibbles (16-31), fifth bits in qh."""
  j = np.arange(16, dtype=np.uint32)
  lo, hi = _nibbles(qs)
  x0 = lo | (((qh_u32 >> j) & 1) << 4).astype(np.uint8)
  x1 = hi | (((qh_u32 >> (j + 16)) & 1) << 4).astype(np.uint8)
  return np.concatenate([x0, x1], axis=1)


def _q5_0(b):
  qh = np.ascontiguousarray(b[:, 2:6]).view(np.uint32)
  return _f16(b, 0) * (_five_bit(qh, b[:, 6:22]).astype(np.int8) - 16)


def _q5_1(b):
  qh = np.ascontiguousarray(b[:, 4:8]).view(np.uint32)
  return _f16(b, 0) * _five_bit(qh, b[:, 8:24]) + _f16(b, 2)


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The 8 six-bit scales and mins packed in 12 bytes (Q4_K, Q5_K), as float32 [blocks, 8]."""
  sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
  mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
  return sc.astype(np.float32), mn.astype(np.float32)


def _k_quant(b, q):
  """Q4_K/Q5_K: 8 sub-blocks of 32, value = d * scale * q - dmin * min."""
  sc, mn = _k_scales(b[:, 4:16])
  return (_f16(b, 0) * sc)[..., None] * q - (_f16(b, 2) * mn)[..., None]


def _q4_k(b):
  lo, hi = _nibbles(b[:, 16:144].reshape(-1, 4, 32))  # 4 chunks of 64: low then high nibbles
  return _k_quant(b, np.stack([lo, hi], axis=2).reshape(-1, 8, 32))


def _q5_k(b):
  lo, hi = _nibbles(b[:, 48:176].reshape(-1, 4, 32))
  q = np.stack([lo, hi], axis=2).reshape(-1, 8, 32)
  high = (b[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # bit s: block s
  return _k_quant(b, q | (high << 4))


def _q6_k(b):
  ql, qh = b[:, :128].reshape(-1, 2, 64), b[:, 128:192].reshape(-1, 2, 32)
  scales = np.ascontiguousarray(b[:, 192:208]).view(np.int8).reshape(-1, 2, 8, 1)
  lo, hi = _nibbles(ql)
  q = np.concatenate([lo[..., :32] | ((qh & 3) << 4), lo[..., 32:] | (((qh >> 2) & 3) << 4),
                      hi[..., :32] | (((qh >> 4) & 3) << 4), hi[..., 32:] | (((qh >> 6) & 3) << 4)],
                     axis=-1).astype(np.int8) - 32  # [blocks, 2 halves, 128]
  d = _f16(b, 208)[:, :, None, None]
  return (d * scales) * q.reshape(-1, 2, 8, 16)


def _raw(dtype) -> Callable[[np.ndarray], np.ndarray]:
  return lambda b: np.ascontiguousarray(b).view(dtype).astype(np.float32)


def _bf16(b):
  return (np.ascontiguousarray(b).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


# ggml type id -> (name, elements per block, bytes per block, blocks [n, bytes] -> values)
QUANT_TYPES: dict[int, tuple[str, int, int, Callable[[np.ndarray], np.ndarray]]] = {
    0: ("F32", 1, 4, _raw(np.float32)),
    1: ("F16", 1, 2, _raw(np.float16)),
    30: ("BF16", 1, 2, _bf16),
    2: ("Q4_0", 32, 18, _q4_0),
    3: ("Q4_1", 32, 20, _q4_1),
    6: ("Q5_0", 32, 22, _q5_0),
    7: ("Q5_1", 32, 24, _q5_1),
    8: ("Q8_0", 32, 34, _q8_0),
    12: ("Q4_K", 256, 144, _q4_k),
    13: ("Q5_K", 256, 176, _q5_k),
    14: ("Q6_K", 256, 210, _q6_k),
}


def _unsupported(ggml_type: int, what: str) -> ValueError:
  return ValueError(f"{what} has ggml type {ggml_type}, which is not supported (supported: "
                    f"{', '.join(t[0] for t in QUANT_TYPES.values())})")


def dequantize(raw: np.ndarray, ggml_type: int, count: int, what: str = "tensor") -> np.ndarray:
  """Flat float32 values of ``count`` elements stored as ``raw`` bytes of ``ggml_type``."""
  if ggml_type not in QUANT_TYPES:
    raise _unsupported(ggml_type, what)
  name, per_block, nbytes, fn = QUANT_TYPES[ggml_type]
  raw = np.asarray(raw).reshape(-1).view(np.uint8)
  if count % per_block or raw.size != count // per_block * nbytes:
    raise ValueError(f"{what}: {raw.size} bytes do not hold {count} {name} values")
  return fn(raw.reshape(-1, nbytes)).reshape(-1)


# ----------------------------------------------------------------------------- the file


# GGUF metadata value types: fixed-size scalars by struct format; 8 is a string, 9 an array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}


class GGUFFile:
  """Metadata and tensors of one GGUF file (versions 2 and 3); nothing is dequantized until asked.

  Layout: "GGUF", version u32, tensor count u64, metadata count u64; metadata (key, type, value);
  tensor infos (name, dims fastest first, ggml type, offset); tensor data from the next multiple
  of ``general.alignment`` (default 32).
  """

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"GGUF file {path} does not exist")
    self.path = path
    self._buf = np.memmap(path, dtype=np.uint8, mode="r")
    self._pos = 0
    try:
      self._parse()
    except (struct.error, UnicodeDecodeError, ValueError) as e:
      raise ValueError(f"{path}: not a readable GGUF file ({e})") from e

  def _take(self, fmt: str):
    (value,) = struct.unpack_from(fmt, self._buf, self._pos)
    self._pos += struct.calcsize(fmt)
    return value

  def _string(self) -> str:
    n = self._take("<Q")
    if self._pos + n > self._buf.size:
      raise ValueError(f"a string at byte {self._pos} runs past the end of the file")
    text = bytes(self._buf[self._pos:self._pos + n]).decode("utf-8")
    self._pos += n
    return text

  def _value(self, kind: int) -> Any:
    if kind == 6:  # float32: its shortest decimal (1e-06, not 9.999999974752427e-07)
      return float(str(np.float32(self._take("<f"))))
    if kind in _SCALARS:
      return self._take(_SCALARS[kind])
    if kind == 8:
      return self._string()
    if kind != 9:
      raise ValueError(f"metadata value type {kind} at byte {self._pos} is unknown")
    item, count = self._take("<I"), self._take("<Q")
    if item in _NUMPY:
      dtype = np.dtype(_NUMPY[item]).newbyteorder("<")
      values = np.frombuffer(self._buf, dtype, count, self._pos)
      self._pos += count * dtype.itemsize
      return values.tolist()
    return [self._value(item) for _ in range(count)]

  def _parse(self) -> None:
    if bytes(self._buf[:4]) != b"GGUF":
      raise ValueError("it does not start with the magic bytes 'GGUF'")
    self._pos = 4
    version = self._take("<I")
    if version not in (2, 3):
      raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
    num_tensors, num_fields = self._take("<Q"), self._take("<Q")
    self.fields: dict[str, Any] = {}
    for _ in range(num_fields):
      key = self._string()
      self.fields[key] = self._value(self._take("<I"))
    infos = []
    for _ in range(num_tensors):
      name = self._string()
      dims = [self._take("<Q") for _ in range(self._take("<I"))]
      infos.append((name, self._take("<I"), tuple(reversed(dims)), self._take("<Q")))
    align = int(self.fields.get("general.alignment", 32))
    start = -(-self._pos // align) * align
    # name -> (ggml type, shape as numpy orders it, raw bytes)
    self.tensors: dict[str, tuple[int, tuple[int, ...], np.ndarray]] = {}
    for name, ggml_type, shape, offset in infos:
      count = int(np.prod(shape))
      per_block, nbytes = QUANT_TYPES.get(ggml_type, ("", 1, 0, None))[1:3]
      end = start + offset + count // per_block * nbytes
      if end > self._buf.size:
        raise ValueError(f"tensor {name!r} runs past the end of the file")
      self.tensors[name] = (ggml_type, shape, self._buf[start + offset:end])

  def get(self, key: str, default: Any = None) -> Any:
    return self.fields.get(key, default)

  def need(self, key: str) -> Any:
    if key not in self.fields:
      raise ValueError(f"{self.path}: metadata field {key!r} is missing")
    return self.fields[key]

  def tensor(self, name: str) -> np.ndarray:
    ggml_type, shape, raw = self.tensors[name]
    count = int(np.prod(shape))
    return dequantize(raw, ggml_type, count, f"{self.path}: tensor {name!r}").reshape(shape)


def config_from_gguf(f: GGUFFile) -> ModelConfig:
  """ModelConfig from the file's ``{architecture}.*`` metadata."""
  arch = f.need("general.architecture")
  if arch not in ARCHITECTURES:
    raise ValueError(f"{f.path}: general.architecture={arch!r} is not supported; expected one of "
                     f"{ARCHITECTURES}")
  a = lambda key: f.need(f"{arch}.{key}")  # noqa: E731
  embed, heads, layers = int(a("embedding_length")), int(a("attention.head_count")), int(
      a("block_count"))
  head_dim = int(f.get(f"{arch}.attention.key_length", embed // heads))
  if int(f.get(f"{arch}.attention.value_length", head_dim)) != head_dim:
    raise ValueError(f"{f.path}: {arch}.attention.value_length differs from key_length")
  kw: dict[str, Any] = dict(
      vocab_size=len(f.need("tokenizer.ggml.tokens")), num_layers=layers, embed_dim=embed,
      hidden_dim=int(a("feed_forward_length")), num_heads=heads,
      num_kv_heads=int(f.get(f"{arch}.attention.head_count_kv", heads)), head_dim=head_dim,
      rms_norm_eps=float(a("attention.layer_norm_rms_epsilon")),
      rope_base=float(f.get(f"{arch}.rope.freq_base", 10_000.0)),
      max_seq_len=int(a("context_length")), family=arch)
  if arch in ("gemma2", "gemma3"):
    kw.update(use_post_attn_norm=True, use_post_ffw_norm=True,
              sliding_window_size=int(a("attention.sliding_window")),
              query_pre_attn_scalar=embed // heads if layers == _LAYERS_OF_27B[arch] else head_dim,
              final_logit_soft_cap=f.get(f"{arch}.final_logit_softcapping"))
  if arch == "gemma2":
    kw.update(attention_types=(AttentionType.LOCAL_SLIDING, AttentionType.GLOBAL),
              attn_logits_soft_cap=f.get("gemma2.attn_logit_softcapping"))
  if arch == "gemma3":
    scaling = f.get("gemma3.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
      raise ValueError(f"{f.path}: gemma3.rope.scaling.type={scaling!r} is not supported")
    kw.update(use_qk_norm=True, local_rope_base=_GEMMA3_LOCAL_ROPE_BASE,
              attention_types=((AttentionType.LOCAL_SLIDING,) * (_GEMMA3_GLOBAL_EVERY - 1)
                               + (AttentionType.GLOBAL,)),
              global_rope_scale=(float(f.get("gemma3.rope.scaling.factor", 1.0))
                                 if scaling == "linear" else 1.0))
  for key in ("final_logit_soft_cap", "attn_logits_soft_cap"):
    if kw.get(key) is not None:
      kw[key] = float(kw[key])
  return ModelConfig(**kw)


# ----------------------------------------------------------------------------- vocabulary


def sentencepiece_model(f: GGUFFile) -> bytes:
  """The serialized SentencePiece model of the file's ``tokenizer.ggml.*`` vocabulary.

  Gemma's tokenizer is SentencePiece BPE with byte fallback, no normalization, no dummy prefix,
  whitespace escaped as "▁". GGUF token types use SentencePiece's numbering (1 normal, 2 unknown,
  3 control, 4 user-defined, 5 unused, 6 byte). llama.cpp writes Gemma's user-defined runs of
  spaces as spaces; SentencePiece matches them as "▁" runs.
  """
  if f.need("tokenizer.ggml.model") != "llama":
    raise ValueError(f"{f.path}: tokenizer.ggml.model={f.get('tokenizer.ggml.model')!r}; Gemma "
                     "files hold a SentencePiece ('llama') vocabulary")
  tokens = f.need("tokenizer.ggml.tokens")
  scores = f.need("tokenizer.ggml.scores")
  types = f.need("tokenizer.ggml.token_type")
  if not len(tokens) == len(scores) == len(types):
    raise ValueError(f"{f.path}: {len(tokens)} tokens, {len(scores)} scores and {len(types)} "
                     "token types")
  proto = sp_pb2.ModelProto()
  for token, score, kind in zip(tokens, scores, types):
    if token and set(token) == {" "}:
      token = "▁" * len(token)
    proto.pieces.add(piece=token, score=float(score), type=int(kind))
  trainer = proto.trainer_spec
  trainer.model_type = sp_pb2.TrainerSpec.BPE
  trainer.vocab_size = len(tokens)
  trainer.byte_fallback = 6 in types
  for name in ("unk", "bos", "eos", "pad"):
    key = "unknown" if name == "unk" else "padding" if name == "pad" else name
    idx = f.get(f"tokenizer.ggml.{key}_token_id")
    if idx is None:
      setattr(trainer, f"{name}_id", -1)
      continue
    if not 0 <= idx < len(tokens):
      raise ValueError(f"{f.path}: tokenizer.ggml.{key}_token_id={idx} is outside the vocabulary")
    setattr(trainer, f"{name}_id", int(idx))
    setattr(trainer, f"{name}_piece", proto.pieces[idx].piece)
    if name == "unk":  # llama.cpp marks it control; SentencePiece finds unk by its type
      proto.pieces[idx].type = sp_pb2.ModelProto.SentencePiece.UNKNOWN
  norm = proto.normalizer_spec
  norm.name = "identity"
  norm.add_dummy_prefix = bool(f.get("tokenizer.ggml.add_space_prefix", False))
  norm.remove_extra_whitespaces = False
  norm.escape_whitespaces = True
  charsmap = f.get("tokenizer.ggml.precompiled_charsmap")
  if charsmap:
    norm.precompiled_charsmap = bytes(charsmap)
  data = proto.SerializeToString()
  try:
    spm.SentencePieceProcessor(model_proto=data)
  except RuntimeError as e:
    raise ValueError(f"{f.path}: its vocabulary is not a valid SentencePiece model ({e})") from e
  return data


# ----------------------------------------------------------------------------- import


def _check_tensors(f: GGUFFile, cfg: ModelConfig) -> dict[str, str]:
  """HF name -> GGUF name of every tensor, after checking names, types and shapes."""
  expected = keymap.hf_shapes(cfg)
  names = {hf: keymap.gguf_name(hf, cfg.family) for hf in expected}
  missing = [g for g in names.values() if g not in f.tensors]
  if missing:
    raise ValueError(f"{f.path}: tensor {missing[0]!r} is missing ({len(missing)} missing of "
                     f"{len(names)})")
  extra = sorted(set(f.tensors) - set(names.values()))
  if extra:
    raise ValueError(f"{f.path}: tensor {extra[0]!r} has no place in a {cfg.family} model "
                     f"({len(extra)} unexpected tensors)")
  for hf, g in names.items():
    ggml_type, shape, _ = f.tensors[g]
    if ggml_type not in QUANT_TYPES:
      raise _unsupported(ggml_type, f"{f.path}: tensor {g!r}")
    if shape != expected[hf]:
      raise ValueError(f"{f.path}: tensor {g!r} has shape {shape} but the metadata implies "
                       f"{expected[hf]}")
  return names


def load_gguf(path: str, mesh=None) -> tuple[ModelConfig, Any, bytes]:
  """(config, params, serialized tokenizer.model) of a GGUF file."""
  f = GGUFFile(path)
  cfg = config_from_gguf(f)
  names = _check_tensors(f, cfg)
  tokenizer = sentencepiece_model(f)

  def get_tensor(hf: str) -> np.ndarray:
    x = f.tensor(names[hf])
    # GGUF stores Gemma's RMSNorm weights as the scale 1 + w; ours (and HF's) are w.
    return x - np.float32(1.0) if names[hf].endswith("norm.weight") else x

  params = keymap.params_from_hf(cfg, get_tensor, set(names), mesh=mesh, where=path)
  return cfg, params, tokenizer


def import_gguf(path: str, out: str, mesh=None, overwrite: bool = False) -> str:
  """Writes a genrm-jax model directory (with tokenizer.model) from a GGUF file; returns ``out``."""
  cfg, params, tokenizer = load_gguf(path, mesh)
  with tempfile.TemporaryDirectory() as tmp:
    vocab = os.path.join(tmp, checkpoint.TOKENIZER_FILE)
    with open(vocab, "wb") as fh:
      fh.write(tokenizer)
    return checkpoint.save_model_dir(out, cfg, params, tokenizer_path=vocab,
                                     extra={"source": {"gguf": os.path.abspath(path)}},
                                     overwrite=overwrite)
