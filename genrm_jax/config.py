"""Typed configuration: the real Gemma sizes and tiny test sizes, LoRA, sampling and scoring.

Every architectural number lives here once; the model, the converters, the planner and the gin
files refer to these presets by name. ``SamplerConfig`` (how ``genrm_jax.sampler`` decodes) and
``ScoringConfig`` (how ``genrm_jax.scoring`` reads verifier scores) live here too, so that a
command configures them from gin without importing JAX first.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from genrm_jax import formats


class AttentionType(enum.Enum):
  GLOBAL = "global"
  LOCAL_SLIDING = "local_sliding"


REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "gate_up")
FAMILIES = ("gemma", "gemma2", "gemma3")
# ModelConfig fields that say how weights are computed with or laid out, never what they are:
# weights saved under one value load under any other.
RUNTIME_FIELDS = ("dtype", "remat_policy", "max_seq_len", "scan_layers")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of one Gemma-family decoder."""

  vocab_size: int
  num_layers: int
  embed_dim: int
  hidden_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  # Gemma 1 scales queries by head_dim**-0.5; Gemma 2 by query_pre_attn_scalar**-0.5.
  query_pre_attn_scalar: float | None = None
  attn_logits_soft_cap: float | None = None
  final_logit_soft_cap: float | None = None
  # Gemma 2 alternates local sliding-window and global layers, starting with local.
  attention_types: tuple[AttentionType, ...] = (AttentionType.GLOBAL,)
  sliding_window_size: int | None = None
  use_post_attn_norm: bool = False
  use_post_ffw_norm: bool = False
  # Gemma 3 RMS-normalizes each query and key head (learned scale) before RoPE.
  use_qk_norm: bool = False
  rope_base: float = 10_000.0
  # Gemma 3 rotates local layers with a smaller base (10K) than global ones (1M); None: rope_base.
  local_rope_base: float | None = None
  # Linear RoPE scaling of global layers (Gemma 3 4B-27B: 8): their positions are divided by it.
  global_rope_scale: float = 1.0
  rms_norm_eps: float = 1e-6
  max_seq_len: int = 8192
  family: str = "gemma"  # "gemma", "gemma2" or "gemma3": which transformers class exports it
  # Numerics and memory; these do not change the function the model computes.
  dtype: str = "float32"  # compute dtype of activations and matmuls
  param_dtype: str = "float32"  # master parameter dtype
  scan_layers: bool = False
  remat_policy: str = "none"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"ModelConfig.num_heads={self.num_heads} is not a multiple of "
          f"num_kv_heads={self.num_kv_heads}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
          f"ModelConfig.remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
    if self.family not in FAMILIES:
      raise ValueError(f"ModelConfig.family={self.family!r}; expected one of {FAMILIES}")
    if (AttentionType.LOCAL_SLIDING in self.attention_types
        and not self.sliding_window_size):
      raise ValueError("ModelConfig: local sliding attention needs sliding_window_size")
    if self.global_rope_scale <= 0:
      raise ValueError(f"ModelConfig.global_rope_scale={self.global_rope_scale}; must be > 0")

  @property
  def layer_attention_types(self) -> tuple[AttentionType, ...]:
    pattern = self.attention_types
    return tuple(pattern[i % len(pattern)] for i in range(self.num_layers))

  @property
  def scan_groups(self) -> int:
    """Whole repeats of the attention pattern: what ``scan_layers`` stacks. Layers past them
    (Gemma 3 1B: 26 = 4 x 6 + 2) run unscanned after the scan."""
    return self.num_layers // len(self.attention_types) if self.scan_layers else 0

  def rope(self, kind: AttentionType) -> tuple[float, float]:
    """(base, linear position scale) of RoPE in layers of ``kind``."""
    if kind == AttentionType.LOCAL_SLIDING:
      return (self.local_rope_base or self.rope_base), 1.0
    return self.rope_base, self.global_rope_scale

  @property
  def query_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

  def replace(self, **kw: Any) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["attention_types"] = [t.value for t in self.attention_types]
    return d

  def differences(self, other: "ModelConfig", ignore: tuple[str, ...] = ()) -> str:
    """'field: this there, other here; ...' over the fields not in ``ignore`` ('' if alike)."""
    a, b = self.to_dict(), other.to_dict()
    return "; ".join(f"{k}: {a[k]!r} there, {b[k]!r} here" for k in sorted(a)
                     if k not in ignore and a[k] != b[k])

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    d = dict(d)
    d["attention_types"] = tuple(AttentionType(t) for t in d["attention_types"])
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"ModelConfig: unknown fields {unknown}")
    return cls(**d)


_GEMMA2_PATTERN = (AttentionType.LOCAL_SLIDING, AttentionType.GLOBAL)
GEMMA_VOCAB = 256_128
GEMMA2_VOCAB = 256_000


def gemma_2b(**kw) -> ModelConfig:
  return ModelConfig(vocab_size=GEMMA_VOCAB, num_layers=18, embed_dim=2048, hidden_dim=16384,
                     num_heads=8, num_kv_heads=1, head_dim=256, family="gemma").replace(**kw)


def gemma_7b(**kw) -> ModelConfig:
  return ModelConfig(vocab_size=GEMMA_VOCAB, num_layers=28, embed_dim=3072, hidden_dim=24576,
                     num_heads=16, num_kv_heads=16, head_dim=256, family="gemma").replace(**kw)


def _gemma2(**kw) -> ModelConfig:
  base = dict(vocab_size=GEMMA2_VOCAB, attn_logits_soft_cap=50.0, final_logit_soft_cap=30.0,
              attention_types=_GEMMA2_PATTERN, sliding_window_size=4096,
              use_post_attn_norm=True, use_post_ffw_norm=True, family="gemma2")
  base.update(kw)
  return ModelConfig(**base)


def gemma2_2b(**kw) -> ModelConfig:
  return _gemma2(num_layers=26, embed_dim=2304, hidden_dim=9216, num_heads=8, num_kv_heads=4,
                 head_dim=256, query_pre_attn_scalar=256).replace(**kw)


def gemma2_9b(**kw) -> ModelConfig:
  return _gemma2(num_layers=42, embed_dim=3584, hidden_dim=14336, num_heads=16, num_kv_heads=8,
                 head_dim=256, query_pre_attn_scalar=256).replace(**kw)


def gemma2_27b(**kw) -> ModelConfig:
  # Gemma-2 27B scales queries by (embed_dim / num_heads)**-0.5 = 144**-0.5, not head_dim.
  return _gemma2(num_layers=46, embed_dim=4608, hidden_dim=36864, num_heads=32, num_kv_heads=16,
                 head_dim=128, query_pre_attn_scalar=144).replace(**kw)


# Five sliding-window layers to one global layer; a model's layer count need not be a multiple.
GEMMA3_PATTERN = (AttentionType.LOCAL_SLIDING,) * 5 + (AttentionType.GLOBAL,)
GEMMA3_VOCAB = 262_144


def _gemma3(**kw) -> ModelConfig:
  # Shapes as in the gemma library's Gemma3_* configs (the official Flax checkpoints). Their HF
  # releases of 4B-27B pad the embedding to 262_208 rows (image soft tokens): import keeps them.
  base = dict(vocab_size=GEMMA3_VOCAB, attention_types=GEMMA3_PATTERN, use_post_attn_norm=True,
              use_post_ffw_norm=True, use_qk_norm=True, rope_base=1_000_000.0,
              local_rope_base=10_000.0, max_seq_len=131_072, family="gemma3")
  base.update(kw)
  return ModelConfig(**base)


def gemma3_270m(**kw) -> ModelConfig:
  return _gemma3(num_layers=18, embed_dim=640, hidden_dim=2048, num_heads=4, num_kv_heads=1,
                 head_dim=256, query_pre_attn_scalar=256, sliding_window_size=512,
                 max_seq_len=32_768).replace(**kw)


def gemma3_1b(**kw) -> ModelConfig:
  return _gemma3(num_layers=26, embed_dim=1152, hidden_dim=6912, num_heads=4, num_kv_heads=1,
                 head_dim=256, query_pre_attn_scalar=256, sliding_window_size=512,
                 max_seq_len=32_768).replace(**kw)


def gemma3_4b(**kw) -> ModelConfig:
  return _gemma3(num_layers=34, embed_dim=2560, hidden_dim=10240, num_heads=8, num_kv_heads=4,
                 head_dim=256, query_pre_attn_scalar=256, sliding_window_size=1024,
                 global_rope_scale=8.0).replace(**kw)


def gemma3_12b(**kw) -> ModelConfig:
  return _gemma3(num_layers=48, embed_dim=3840, hidden_dim=15360, num_heads=16, num_kv_heads=8,
                 head_dim=256, query_pre_attn_scalar=256, sliding_window_size=1024,
                 global_rope_scale=8.0).replace(**kw)


def gemma3_27b(**kw) -> ModelConfig:
  # Like Gemma-2 27B, queries are scaled by (embed_dim / num_heads)**-0.5 = 168**-0.5.
  return _gemma3(num_layers=62, embed_dim=5376, hidden_dim=21504, num_heads=32, num_kv_heads=16,
                 head_dim=128, query_pre_attn_scalar=168, sliding_window_size=1024,
                 global_rope_scale=8.0).replace(**kw)


def tiny(**kw) -> ModelConfig:
  """A Gemma-2-style model small enough to train on two CPU cores in minutes."""
  base = dict(vocab_size=64, num_layers=3, embed_dim=128, hidden_dim=512, num_heads=4,
              num_kv_heads=1, head_dim=32, attention_types=(AttentionType.GLOBAL,),
              max_seq_len=512, family="gemma")
  base.update(kw)
  return ModelConfig(**base)


def tiny_gemma3(**kw) -> ModelConfig:
  """Gemma 3 in miniature for tests: GQA, QK-norm, window 4, one 6-layer pattern plus 2 layers."""
  return _gemma3(vocab_size=64, num_layers=8, embed_dim=64, hidden_dim=128, num_heads=4,
                 num_kv_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window_size=4,
                 global_rope_scale=8.0, max_seq_len=512).replace(**kw)


def bench_10m(**kw) -> ModelConfig:
  """The ~10M-parameter config the benchmarks compare against transformers/torch."""
  base = dict(vocab_size=1000, num_layers=10, embed_dim=256, hidden_dim=1024, num_heads=4,
              num_kv_heads=1, head_dim=64, max_seq_len=1024, family="gemma")
  base.update(kw)
  return ModelConfig(**base)


PRESETS = {
    "gemma_2b": gemma_2b,
    "gemma_7b": gemma_7b,
    "gemma2_2b": gemma2_2b,
    "gemma2_9b": gemma2_9b,
    "gemma2_27b": gemma2_27b,
    "gemma3_270m": gemma3_270m,
    "gemma3_1b": gemma3_1b,
    "gemma3_4b": gemma3_4b,
    "gemma3_12b": gemma3_12b,
    "gemma3_27b": gemma3_27b,
    "tiny": tiny,
    "tiny_gemma3": tiny_gemma3,
    "bench_10m": bench_10m,
}


# The projections of a Gemma layer by their transformers (and PEFT) module names: what LoRA
# adapters attach to (``model.PROJECTIONS`` says where each weight lives and its einsum).
PROJECTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# QLoRA's storage types of the frozen base (through qwix): "none" keeps param_dtype.
BASE_QUANTIZATIONS = ("none", "int8", "int4", "nf4")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Low-rank adapters (LoRA) on a frozen base model, and QLoRA's quantized base.

  ``rank`` None is full fine-tuning (the default). With a rank, each projection in ``targets``
  computes ``x W + scale * (dropout(x) A) B`` with ``scale = alpha / rank`` (PEFT's and qwix's
  convention): A [in, rank] starts uniform in +-1/sqrt(in) (PEFT's Kaiming init), B [rank, out]
  at zero, so training starts from the base model's function. Only A and B (and an objective's
  own head) train; the base is frozen, and with ``base_quantization`` stored as int8, int4 or
  nf4 in blocks of ``quantization_block`` inputs (qwix).
  """

  rank: int | None = None
  alpha: float = 16.0
  dropout: float = 0.0
  # Gemma's attention and MLP projections, as the field's LoRA recipes (MaxText, QLoRA) target.
  targets: tuple[str, ...] = PROJECTION_NAMES
  base_quantization: str = "none"
  # Inputs per quantization scale (QLoRA's blocks of 64); 0: one scale per output channel.
  quantization_block: int = 64

  def __post_init__(self):
    if self.rank is not None and self.rank < 1:
      raise ValueError(f"LoraConfig.rank = {self.rank}: must be >= 1 (None: full fine-tuning)")
    if self.alpha <= 0:
      raise ValueError(f"LoraConfig.alpha = {self.alpha}: must be > 0")
    if not 0 <= self.dropout < 1:
      raise ValueError(f"LoraConfig.dropout = {self.dropout}: must be in [0, 1)")
    if not self.targets:
      raise ValueError("LoraConfig.targets is empty: name at least one of "
                       f"{PROJECTION_NAMES}")
    unknown = [t for t in self.targets if t not in PROJECTION_NAMES]
    if unknown:
      raise ValueError(f"LoraConfig.targets: {unknown[0]!r} matches no weight of a Gemma layer; "
                       f"expected names among {PROJECTION_NAMES}")
    if len(set(self.targets)) != len(self.targets):
      raise ValueError(f"LoraConfig.targets = {self.targets}: a name appears twice")
    if self.base_quantization not in BASE_QUANTIZATIONS:
      raise ValueError(f"LoraConfig.base_quantization = {self.base_quantization!r}; expected "
                       f"one of {BASE_QUANTIZATIONS}")
    if self.base_quantization != "none" and self.rank is None:
      raise ValueError(f"LoraConfig.base_quantization = {self.base_quantization!r} needs "
                       "LoraConfig.rank: only a frozen base can be stored quantized")
    if self.quantization_block < 0:
      raise ValueError(f"LoraConfig.quantization_block = {self.quantization_block}: must be "
                       ">= 0")

  @property
  def enabled(self) -> bool:
    return self.rank is not None

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["targets"] = list(self.targets)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "LoraConfig":
    return cls(**{**d, "targets": tuple(d["targets"])})


def preset(name: str, **kw) -> ModelConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name](**kw)


# ----------------------------------------------------------------------------- sampling, scoring

_POW2 = tuple(2 ** i for i in range(14))


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Static sampling settings; each distinct value compiles its own decode loop."""

  max_new_tokens: int = 256
  temperature: float = 1.0  # 0 = greedy (argmax)
  top_k: int = 0  # 0 = no top-k filter
  top_p: float = 1.0  # 1 = no nucleus filter
  stop_token_ids: tuple[int, ...] = ()  # besides the vocabulary's EOS, which always stops
  stop_strings: tuple[str, ...] = ()  # cut from the text (excluded, like EOS)
  batch_buckets: tuple[int, ...] = _POW2
  length_buckets: tuple[int, ...] = tuple(b for b in _POW2 if b >= 16)

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"SamplerConfig.max_new_tokens={self.max_new_tokens}; must be >= 1")
    if self.temperature < 0:
      raise ValueError(f"SamplerConfig.temperature={self.temperature}; must be >= 0")
    if self.top_k < 0:
      raise ValueError(f"SamplerConfig.top_k={self.top_k}; must be >= 0")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"SamplerConfig.top_p={self.top_p}; must be in (0, 1]")
    for name in ("batch_buckets", "length_buckets"):
      b = getattr(self, name)
      if not b or list(b) != sorted(set(b)) or b[0] < 1:
        raise ValueError(f"SamplerConfig.{name}={b}; must be increasing positive integers")


SCORE_KINDS = ("p_yes", "normalized")


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
  """How verifiers score: the task's instruction, the score read, CoT's rationales, batch rows."""

  instruction: str = formats.GSM8K_INSTRUCTION
  score: str = "p_yes"  # or "normalized": p(Yes) / (p(Yes) + p(No))
  num_rationales: int = 32  # K, for the CoT methods
  rationale: SamplerConfig = SamplerConfig(
      max_new_tokens=512, temperature=0.7, stop_strings=(formats.VERDICT_PREFIX,))
  share_prefix: bool = True
  max_rows: int = 64  # rows per forward / decode batch (CoT: solutions x K)

  def __post_init__(self):
    if self.score not in SCORE_KINDS:
      raise ValueError(f"ScoringConfig.score={self.score!r}; expected one of {SCORE_KINDS}")
    if self.num_rationales < 1 or self.max_rows < 1:
      raise ValueError("ScoringConfig: num_rationales and max_rows must be >= 1")
