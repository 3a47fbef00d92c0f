"""Gemma, Gemma 2 and Gemma 3 as one pure Flax module, with a KV cache and logical sharding names.

Shapes in einsums: B batch, T query length, S key length (cache slots), D embed, N query heads,
K kv heads, G = N // K query heads per kv head, H head dim, F MLP hidden, V vocab.

The parameter tree mirrors the official Gemma Flax layout (``embedder/input_embedding``,
``layer_{i}/attn/q_einsum/w`` ...), so official checkpoints map onto it by name. With
``scan_layers`` the layers are stacked under ``layers/block_{j}`` (one block per entry of the
attention pattern, stacked over pattern repeats); layers past the last whole repeat (Gemma 3 1B:
26 = 4 x 6 + 2) stay ``layer_{i}`` and run after the scan. ``unscan_params``/``scan_params`` convert.

With a KV cache (``genrm_jax.kv_cache``), each attention layer writes its new keys and values
there and attends to them.

LoRA (``Transformer.lora``): each targeted projection (``PROJECTIONS``, by transformers' module
names) adds ``scale * (dropout(x) A) B`` from the ``lora`` variable collection, ``{name: {"a",
"b"}}`` in the module that computes it; ``genrm_jax.lora`` creates, trains and merges them. A
frozen base may hold its projection weights quantized (qwix ``QArray``s, QLoRA): they are
dequantized where they are read.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from genrm_jax import kv_cache
from genrm_jax import sharding
from genrm_jax.config import PROJECTION_NAMES, AttentionType, LoraConfig, ModelConfig

# Finite, so that a query with every key masked (a padding row) yields a uniform softmax, not NaN.
_MASK_VALUE = -2.3819763e38


def _dtype(name: str):
  return jnp.dtype(name)


def _param(module: nn.Module, name: str, init, shape, names, cfg: ModelConfig):
  if module.has_variable("params", name):
    stored = module.get_variable("params", name)
    if hasattr(stored, "qvalue"):  # a frozen base stored quantized (QLoRA)
      import qwix  # pylint: disable=g-import-not-at-top
      return qwix.dequantize(stored)
  return module.param(name, nn.with_logical_partitioning(init, names), shape,
                      _dtype(cfg.param_dtype))


class _Weight(nn.Module):
  """A bare ``w`` parameter, so the tree reads ``q_einsum/w`` as in official checkpoints."""
  cfg: ModelConfig
  shape: tuple[int, ...]
  names: tuple[str, ...]
  stddev: float

  @nn.compact
  def __call__(self):
    return _param(self, "w", nn.initializers.normal(stddev=self.stddev), self.shape, self.names,
                  self.cfg)


class Embedder(nn.Module):
  cfg: ModelConfig

  def setup(self):
    # Unit-scale inputs after the sqrt(D) multiplier, and O(1) logits through the tied output.
    self.input_embedding = _param(self, "input_embedding",
                                  nn.initializers.normal(stddev=self.cfg.embed_dim ** -0.5),
                                  (self.cfg.vocab_size, self.cfg.embed_dim),
                                  ("vocab", "embed"), self.cfg)


class RMSNorm(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    # Stored as an offset from one, as in Gemma: zeros are the identity scale.
    scale = _param(self, "scale", nn.initializers.zeros_init(), (x.shape[-1],), ("norm",),
                   self.cfg)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.rms_norm_eps)
    return (y * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


def _dot_order(s1: str, s2: str, out: str) -> str:
  """The output order of XLA's dot of operands with axes s1, s2: batch, s1's free, s2's free."""
  return "".join([a for a in s1 if a in s2 and a in out] + [a for a in s1 if a not in s2]
                 + [a for a in s2 if a not in s1])


def _einsum(s1: str, s2: str, out: str, a: jax.Array, b: jax.Array, barrier: bool = False):
  """``jnp.einsum`` with ``a`` as the dot's left operand, then a separate transpose to ``out``.

  Asked for another output order, ``jnp.einsum`` may swap the operands, and XLA's CPU dot then
  reads the larger one (e.g. attention probabilities) through a transposed copy. The barrier
  keeps XLA from folding the transpose back into the dot, which swaps them the same way.
  """
  order = _dot_order(s1, s2, out)
  y = jnp.einsum(f"{s1},{s2}->{order}", a, b)
  if barrier:
    y = jax.lax.optimization_barrier(y)
  return y if order == out else jnp.einsum(f"{order}->{out}", y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def dense(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
  """``jnp.einsum(spec, x, w)`` with dots that XLA's CPU backend runs without big transposes.

  ``w`` is a weight, or the keys / values of attention. Its gradient contracts over the axes
  that ``x`` and the output gradient ``g`` share (tokens), so its dot needs one of them
  transposed; left to itself, XLA on CPU transposes the wider one: the [B, T, F] MLP gradient
  (4x the [B, T, D] input), the [B, K, T, G, S] attention probabilities. Here the operand with
  fewer free elements goes first and is the one transposed. Same values.
  """
  (xs, ws), out = spec.split("->")[0].split(","), spec.split("->")[1]
  return _einsum(xs, ws, out, x, w)


def _dense_fwd(spec, x, w):
  # Which operands need a gradient rides in the residuals' structure (None or ()): a frozen
  # weight (LoRA's base) gets no weight-gradient dot, and an input that depends on nothing
  # trained (the first layer's, under a frozen embedding) no input-gradient one.
  flags = tuple(() if a.perturbed else None for a in (x, w))
  return dense(spec, x.value, w.value), (x.value, w.value, flags)


def _dense_bwd(spec, res, g):
  x, w, (need_dx, need_dw) = res
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return None, None
  (xs, ws), out = spec.split("->")[0].split(","), spec.split("->")[1]
  dx = None if need_dx is None else _einsum(out, ws, xs, g, w).astype(x.dtype)
  if need_dw is None:
    return dx, None
  free = lambda s, shape, other: math.prod(  # noqa: E731
      n for a, n in zip(s, shape) if a in ws and a not in other)
  if free(xs, x.shape, out) < free(out, g.shape, xs):
    narrow_first = lambda: _einsum(xs, out, ws, x, g, barrier=True)  # noqa: E731
  else:
    narrow_first = lambda: _einsum(out, xs, ws, g, x, barrier=True)  # noqa: E731
  # TPU and GPU compilers pick dot layouts themselves; only CPU gets the fixed order.
  dw = jax.lax.platform_dependent(
      cpu=narrow_first, default=lambda: jnp.einsum(f"{xs},{out}->{ws}", x, g))
  return dx, dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd, symbolic_zeros=True)


# ----------------------------------------------------------------------------- projections


@dataclasses.dataclass(frozen=True)
class Projection:
  """Where a projection's weight lives in a layer, and its einsum (x, weight -> output)."""
  module: str  # "attn" or "mlp"
  weight: str  # the weight's path in that module
  slot: int | None  # its index in a stacked weight (k and v, gate and up), or None
  spec: str

  @property
  def letters(self) -> tuple[str, str, str]:
    """(contracted, free) letters of the weight slot in its axis order, and the input's
    letters that remain (batch and length)."""
    (xs, ws), out = self.spec.split("->")[0].split(","), self.spec.split("->")[1]
    contracted = "".join(a for a in ws if a in xs and a not in out)
    return contracted, "".join(a for a in ws if a not in contracted), \
        "".join(a for a in xs if a not in contracted)


PROJECTIONS = {
    "q_proj": Projection("attn", "q_einsum/w", None, "BTD,NDH->BTNH"),
    "k_proj": Projection("attn", "kv_einsum/w", 0, "BTD,KDH->BTKH"),
    "v_proj": Projection("attn", "kv_einsum/w", 1, "BTD,KDH->BTKH"),
    "o_proj": Projection("attn", "attn_vec_einsum/w", None, "BTNH,NHD->BTD"),
    "gate_proj": Projection("mlp", "gating_einsum", 0, "BTD,FD->BTF"),
    "up_proj": Projection("mlp", "gating_einsum", 1, "BTD,FD->BTF"),
    "down_proj": Projection("mlp", "linear", None, "BTF,FD->BTD"),
}
assert tuple(PROJECTIONS) == PROJECTION_NAMES
LORA = "lora"  # the variable collection of LoRA adapters
# Names of dot outputs the remat policies keep (``jax.ad_checkpoint.checkpoint_name``): the MLP's
# gate and up outputs are most of a layer's matmul FLOPs, so "gate_up" keeps only them.
PROJECTION, GATE_UP, ATTENTION = "projection", "gate_up", "attention"
_SAVED_AS = {"gate_proj": GATE_UP, "up_proj": GATE_UP}
LORA_DROPOUT = "lora_dropout"  # the rng stream of their dropout


def _adapter_init(shape, fan_in: int):
  """A: uniform in +-1/sqrt(fan_in) (PEFT's Kaiming-uniform with a = sqrt 5); B: zeros."""
  def init(rng, _shape, dtype):
    if fan_in:
      return jax.random.uniform(rng, shape, dtype, -fan_in ** -0.5, fan_in ** -0.5)
    return jnp.zeros(shape, dtype)
  return init


def _project(module: nn.Module, lora: LoraConfig | None, name: str, x: jax.Array,
             w: jax.Array, w_names: tuple[str, ...], cfg: ModelConfig) -> jax.Array:
  """Projection ``name`` of ``x`` by weight (slot) ``w``, plus its LoRA adapter if targeted;
  named for the remat policies."""
  return checkpoint_name(_adapted(module, lora, name, x, w, w_names, cfg),
                         _SAVED_AS.get(name, PROJECTION))


def _adapted(module: nn.Module, lora: LoraConfig | None, name: str, x: jax.Array, w: jax.Array,
             w_names: tuple[str, ...], cfg: ModelConfig) -> jax.Array:
  proj = PROJECTIONS[name]
  if lora is None or name not in lora.targets:
    return dense(proj.spec, x, w)
  contracted, free, rest = proj.letters
  ws = proj.spec.split("->")[0].split(",")[1]
  dims = dict(zip(ws, w.shape))
  axis = dict(zip(ws, w_names))
  a_shape = tuple(dims[c] for c in contracted) + (lora.rank,)
  b_shape = (lora.rank,) + tuple(dims[c] for c in free)
  pdt = _dtype(cfg.param_dtype)
  a = module.variable(LORA, f"{name}_a", lambda: nn.with_logical_partitioning(
      _adapter_init(a_shape, math.prod(a_shape[:-1])),
      tuple(axis[c] for c in contracted) + ("lora_rank",))(
          module.make_rng("params"), a_shape, pdt)).value
  b = module.variable(LORA, f"{name}_b", lambda: nn.with_logical_partitioning(
      _adapter_init(b_shape, 0), ("lora_rank",) + tuple(axis[c] for c in free))(
          module.make_rng("params"), b_shape, pdt)).value
  a, b = nn.meta.unbox(a).astype(x.dtype), nn.meta.unbox(b).astype(x.dtype)
  if not lora.dropout:
    return lora_dense(proj.spec, lora.scale, x, w, a, b)
  keep = jax.random.bernoulli(module.make_rng(LORA_DROPOUT), 1.0 - lora.dropout, x.shape)
  xd = jnp.where(keep, x / (1.0 - lora.dropout), 0).astype(x.dtype)
  xa = dense(f"{proj.spec.split(',')[0]},{contracted}R->{rest}R", xd, a)
  delta = dense(f"{rest}R,R{free}->{proj.spec.split('->')[1]}", xa, b)
  return dense(proj.spec, x, w) + delta * jnp.asarray(lora.scale, x.dtype)


def _lora_letters(spec: str):
  (xs, ws), out = spec.split("->")[0].split(","), spec.split("->")[1]
  contracted = "".join(a for a in ws if a in xs and a not in out)
  free = "".join(a for a in ws if a not in contracted)
  rest = "".join(a for a in xs if a not in contracted)
  return xs, ws, out, contracted, free, rest


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def lora_dense(spec: str, scale: float, x, w, a, b):
  """``x W + scale * (x A) B`` for the projection einsum ``spec``, as one dot of x with
  W + scale * A B (a rank-r product the size of W, once per call): the adapter's own [T, out]
  product and its sum with the projection's cost the CPU step more than that. The gradient
  reads the frozen W only for the input's gradient and gives the adapters theirs exactly:
  dA = scale * x^T (g B^T), dB = scale * (x A)^T g; no weight gradient of W unless W is
  differentiated."""
  xs, ws, out, contracted, free, _ = _lora_letters(spec)
  merged = w + jnp.einsum(f"{contracted}R,R{free}->{ws}", a, b) * jnp.asarray(scale, w.dtype)
  return _einsum(xs, ws, out, x, merged)


def _lora_dense_fwd(spec, scale, x, w, a, b):
  y = lora_dense(spec, scale, x.value, w.value, a.value, b.value)
  flags = tuple(() if v.perturbed else None for v in (x, w))
  return y, (x.value, w.value, a.value, b.value, flags)


def _lora_dense_bwd(spec, scale, res, g):
  x, w, a, b, (need_dx, need_dw) = res
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return None, None, None, None
  xs, ws, out, contracted, free, rest = _lora_letters(spec)
  s = jnp.asarray(scale, g.dtype)
  dx = None
  if need_dx is not None:  # not the first layer's input under a frozen embedding
    merged = w + jnp.einsum(f"{contracted}R,R{free}->{ws}", a, b) * s
    dx = _einsum(out, ws, xs, g, merged).astype(x.dtype)
  gb = jnp.einsum(f"{out},R{free}->{rest}R", g, b)  # g B^T
  da = jnp.einsum(f"{xs},{rest}R->{contracted}R", x, gb) * s
  xa = jnp.einsum(f"{xs},{contracted}R->{rest}R", x, a)
  db = jnp.einsum(f"{rest}R,{out}->R{free}", xa, g) * s
  dw = None if need_dw is None else jnp.einsum(f"{xs},{out}->{ws}", x, g).astype(w.dtype)
  return dx, dw, da.astype(a.dtype), db.astype(b.dtype)


lora_dense.defvjp(_lora_dense_fwd, _lora_dense_bwd, symbolic_zeros=True)


def rope_tables(cfg: ModelConfig, positions: jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
  """(sin, cos) [B, T, 1, H/2] of the rotary angles, per attention kind of ``cfg``.

  Computed once per forward and shared by every layer: inside each layer's rotation, XLA's CPU
  fusions recomputed them for every head, for q and k, forward and backward (4.5% of a
  ``bench_10m`` train step went to those sines and cosines). A rope ``scale`` > 1 is linear
  position interpolation (Gemma 3's global layers): positions / scale.
  """
  h = cfg.head_dim
  fraction = 2 * jnp.arange(h // 2, dtype=jnp.float32) / h
  tables = {}
  for kind in dict.fromkeys(cfg.attention_types):
    base, scale = cfg.rope(kind)
    angle = positions[..., None].astype(jnp.float32) / (base ** fraction * scale)  # [B, T, H/2]
    tables[kind.value] = (jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :])
  return tables


def apply_rope(x: jax.Array, sin_cos: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Rotary embedding on [B, T, heads, H], rotating the two halves of H (Gemma's layout)."""
  sin, cos = sin_cos
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def soft_cap(x: jax.Array, cap: float | None) -> jax.Array:
  return x if cap is None else jnp.tanh(x / cap) * cap


class Attention(nn.Module):
  cfg: ModelConfig
  attention_type: AttentionType
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, x, rope, mask, cache, layer, write):
    cfg = self.cfg
    n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim
    dt = _dtype(cfg.dtype)
    q_names, kv_names, o_names = (("heads", "embed", "head_dim"),
                                  ("kv_heads", "embed", "head_dim"), ("heads", "head_dim", "embed"))
    wq = _Weight(cfg, (n, d, h), q_names, d ** -0.5, name="q_einsum")()
    wkv = _Weight(cfg, (2, k, d, h), ("stack",) + kv_names, d ** -0.5, name="kv_einsum")()
    wo = _Weight(cfg, (n, h, d), o_names, (n * h) ** -0.5, name="attn_vec_einsum")()
    proj = functools.partial(_project, self, self.lora, cfg=cfg)

    if self.has_variable("decode", "qkv"):
      # A decode loop's weights, prepared once (``decode_weights``): one dot for q, k and v.
      qkv = dense("BTD,XD->BTX", x, self.get_variable("decode", "qkv").astype(dt))
      q, kk, vv = jnp.split(qkv, [n * h, (n + k) * h], axis=-1)
      q, kk, vv = (y.reshape(*x.shape[:2], -1, h) for y in (q, kk, vv))
    else:
      q = proj("q_proj", x, wq.astype(dt), q_names)
      # One einsum per stacked weight, each in the dot's natural output order: a stacked
      # "CBTKH" output is a transpose of the activations, and slicing it makes the backward pad
      # and add (the profile of a CPU train step showed both).
      kk = proj("k_proj", x, wkv[0].astype(dt), kv_names)
      vv = proj("v_proj", x, wkv[1].astype(dt), kv_names)
    if cfg.use_qk_norm:
      q = RMSNorm(cfg, name="_query_norm")(q)
      kk = RMSNorm(cfg, name="_key_norm")(kk)
    q = apply_rope(q, rope) * jnp.asarray(cfg.query_scale, dt)
    kk = apply_rope(kk, rope)
    q = sharding.constrain(q, ("batch", "length", "act_heads", None))
    kk = sharding.constrain(kk, ("batch", "length", "act_kv_heads", None))

    # Keys as [B, K, H, S]: the layout in which XLA's CPU batched q.k dot reads them without a
    # transposed copy (a copy of a whole cache at every decode step). Values are read as
    # [B, S, K, H] when all queries are here (training, where XLA then reads the probabilities
    # untransposed too) and from the cache as [B, K, H, S] (a decode step's probabilities are
    # few, and XLA transposes those instead of the values).
    kt = kk.transpose(0, 2, 3, 1)
    values, v_axes = vv, "BSKH"
    if cache is not None:
      kt, values, cache = _cache_update(cache, self.attention_type, kk, vv, layer, write,
                                        mask.shape[-1], dt)
      v_axes = "BKHS"

    b, t = q.shape[:2]
    g = n // k
    qg = q.reshape(b, t, k, g, h)
    # [B, K, T, G, S] is the batched dot's own output order (batch, lhs free, rhs free): no
    # transpose of the largest activation, forward or backward.
    logits = checkpoint_name(dense("BTKGH,BKHS->BKTGS", qg, kt), ATTENTION).astype(jnp.float32)
    shared = None if cache is None else cache.get("shared")
    if shared is not None:
      # Rows p*R ... p*R + R-1 continue shared row p (``kv_cache.with_shared``): its keys are
      # read once for the R rows' queries, a matrix product instead of R matrix-vector ones,
      # and their logits go before the rows' own.
      kp, vp = (kv_cache.layer_buffer(shared[name], layer).astype(dt) for name in ("k", "v"))
      p = kp.shape[0]
      qp = qg.reshape(p, b // p, t, k, g, h)
      lp = dense("PRTKGH,PKHS->PRKTGS", qp, kp).reshape(b, k, t, g, kp.shape[-1])
      logits = jnp.concatenate([lp.astype(jnp.float32), logits], axis=-1)
    logits = soft_cap(logits, cfg.attn_logits_soft_cap)
    logits = jnp.where(mask[:, None, :, None, :], logits, _MASK_VALUE)
    # A softmax whose division comes after the value dot, on [B, T, K, G, H] rather than on the
    # [B, K, T, G, S] probabilities: XLA's CPU fusions materialised the broadcast sum over those,
    # forward and backward (docs/performance.md, "Performance: where the CPU train step ..."). The
    # max is a constant shift for the gradient, as in jax.nn.softmax.
    probs = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
    total = jnp.sum(probs, axis=-1)  # [B, K, T, G]
    probs = probs.astype(dt)
    if shared is not None:
      sp = kp.shape[-1]
      pp = probs[..., :sp].reshape(p, b // p, k, t, g, sp)
      probs = probs[..., sp:]
      enc_shared = dense("PRKTGS,PKHS->PRTKGH", pp, vp).reshape(b, t, k, g, h)
    enc = checkpoint_name(dense(f"BKTGS,{v_axes}->BTKGH", probs, values), ATTENTION)
    if shared is not None:
      enc = enc + enc_shared
    enc = (enc / total.transpose(0, 2, 1, 3)[..., None]).astype(dt)
    if self.has_variable("decode", "o"):
      out = dense("BTX,DX->BTD", enc.reshape(b, t, n * h),
                  self.get_variable("decode", "o").astype(dt))
    else:
      out = proj("o_proj", enc.reshape(b, t, n, h), wo.astype(dt), o_names)
    return out, cache


def _cache_update(cache, kind, kk, vv, layer, write, num_keys, dt):
  """Writes one layer's new keys/values [B, T, K, H] into the cache; returns the keys and values
  it attends to, [B, K, H, S] each, and the new cache.

  Each buffer is [n, B, K, H, S] (see ``kv_cache.init_cache``): the stack of all layers of ``kind``
  (``layer`` indexes it) or, in a tuple, the one buffer of layer ``layer``. The new entries are
  written in place and read back: updating a slice and stacking it back makes XLA copy the whole
  cache at every decode step. Global layers write at cache index ``write['index']`` on; local
  layers at ``write['local_slots']`` (position mod window, per row). Once local layers' cache is
  a ring shorter than the cache (``num_keys``, the local mask's key count, then exceeds it), new
  tokens may overwrite keys that earlier queries of this call still see, so they attend to the
  ring as it was followed by the new tokens.
  """
  names = kv_cache.CACHE_NAMES[kind]
  stacked = not isinstance(cache[names[0]], tuple)
  at = layer if stacked else 0
  new, read = {}, []
  for name, x in zip(names, (kk, vv)):
    buf = cache[name] if stacked else cache[name][layer]
    xt = x.transpose(0, 2, 3, 1)  # [B, K, H, T]
    if kind == AttentionType.GLOBAL:
      upd = jax.lax.dynamic_update_slice(buf, xt[None].astype(buf.dtype),
                                         (at, 0, 0, 0, write["index"]))
    else:
      # Row and slot index pairs [B, T] around the head axes: the update is [B, T, K, H].
      rows = jnp.arange(x.shape[0])[:, None]
      upd = buf.at[at, rows, :, :, write["local_slots"]].set(x.astype(buf.dtype), mode="drop")
    ring = kind == AttentionType.LOCAL_SLIDING and num_keys != buf.shape[-1]
    stored = jax.lax.dynamic_index_in_dim(buf if ring else upd, at, keepdims=False).astype(dt)
    read.append(jnp.concatenate([stored, xt], axis=-1) if ring else stored)
    new[name] = upd if stacked else cache[name][:layer] + (upd,) + cache[name][layer + 1:]
  return read[0], read[1], {**cache, **new}


class MLP(nn.Module):
  cfg: ModelConfig
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dt = _dtype(cfg.dtype)
    names = ("hidden", "embed")
    wg = _param(self, "gating_einsum", nn.initializers.normal(stddev=cfg.embed_dim ** -0.5),
                (2, cfg.hidden_dim, cfg.embed_dim), ("stack",) + names, cfg)
    wl = _param(self, "linear", nn.initializers.normal(stddev=cfg.hidden_dim ** -0.5),
                (cfg.hidden_dim, cfg.embed_dim), names, cfg)
    proj = functools.partial(_project, self, self.lora, cfg=cfg)
    if self.has_variable("decode", "gate_up"):
      both = dense("BTD,XD->BTX", x, self.get_variable("decode", "gate_up").astype(dt))
      gate, up = jnp.split(both, 2, axis=-1)
    else:
      # Two einsums rather than one "CBTF" output: see the k/v projections in Attention.
      gate = proj("gate_proj", x, wg[0].astype(dt), names)
      up = proj("up_proj", x, wg[1].astype(dt), names)
    hid = jax.nn.gelu(gate, approximate=True) * up
    hid = sharding.constrain(hid, ("batch", "length", "act_hidden"))
    return proj("down_proj", hid, wl.astype(dt), names)


class Block(nn.Module):
  cfg: ModelConfig
  attention_type: AttentionType
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, x, ropes, masks, cache, layer, write):
    cfg = self.cfg
    mask = masks[self.attention_type.value]
    y = RMSNorm(cfg, name="pre_attention_norm")(x)
    y, cache = Attention(cfg, self.attention_type, self.lora, name="attn")(
        y, ropes[self.attention_type.value], mask, cache, layer, write)
    if cfg.use_post_attn_norm:
      y = RMSNorm(cfg, name="post_attention_norm")(y)
    x = x + y
    y = RMSNorm(cfg, name="pre_ffw_norm")(x)
    y = MLP(cfg, self.lora, name="mlp")(y)
    if cfg.use_post_ffw_norm:
      y = RMSNorm(cfg, name="post_ffw_norm")(y)
    x = sharding.constrain(x + y, ("batch", "length", "act_embed"))
    return x, cache


_policies = jax.checkpoint_policies
# ``dense`` and ``lora_dense`` are custom-gradient calls, whose dots checkpoint_dots does not see:
# their outputs are named (projections, and attention's products, which have batch axes).
_REMAT = {
    "full": None,
    "dots": _policies.save_from_both_policies(
        _policies.checkpoint_dots,
        _policies.save_only_these_names(PROJECTION, GATE_UP, ATTENTION)),
    "dots_no_batch": _policies.save_from_both_policies(
        _policies.checkpoint_dots_with_no_batch_dims,
        _policies.save_only_these_names(PROJECTION, GATE_UP)),
    "gate_up": _policies.save_only_these_names(GATE_UP),
}


def _block_class(cfg: ModelConfig):
  if cfg.remat_policy == "none":
    return Block
  return nn.remat(Block, policy=_REMAT[cfg.remat_policy], prevent_cse=not cfg.scan_layers)


class _PatternGroup(nn.Module):
  """One repeat of the attention pattern; the unit that ``scan_layers`` stacks.

  The cache of all layers rides in the scan carry, updated in place at this group's layers.
  """
  cfg: ModelConfig
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, carry, group, ropes, masks, write):
    x, cache = carry
    block = _block_class(self.cfg)
    pattern = self.cfg.attention_types
    for j, kind in enumerate(pattern):
      # This layer's index in the cache stack of its kind.
      index = group * pattern.count(kind) + pattern[:j].count(kind)
      x, cache = block(self.cfg, kind, self.lora, name=f"block_{j}")(x, ropes, masks, cache,
                                                                      index, write)
    return (x, cache), None


def _stack_index(cfg: ModelConfig, i: int) -> int:
  """Layer i's index in the cache stack of its attention kind."""
  kinds = cfg.layer_attention_types
  return kinds[:i].count(kinds[i])


class Transformer(nn.Module):
  """Gemma decoder. ``__call__`` runs a full forward or, given a cache, prefill/decode.

  tokens, positions: int [B, T]. segment_ids: int [B, T], 0 marks padding; packed examples get
  distinct ids and never attend to each other. Without a cache, keys are the tokens themselves;
  with a cache (from ``kv_cache.init_cache``) the T new keys are written at slots
  ``cache['end']`` onward and queries attend to every filled slot at an earlier or equal position.
  Returns (logits float32 [B, T, V], new cache or None), plus the final hidden states
  [B, T, D] when ``return_hidden``. ``hidden_states`` stops before the unembedding, for callers
  that need the logits of a few positions only (``genrm_jax.logits``). ``lora``: the targeted
  projections add their adapters (see the module docstring).
  """

  cfg: ModelConfig
  lora: LoraConfig | None = None

  def setup(self):
    cfg = self.cfg
    self.embedder = Embedder(cfg)
    self.final_norm = RMSNorm(cfg)
    if cfg.scan_groups:
      self.layers = nn.scan(
          _PatternGroup, variable_axes={"params": 0, LORA: 0},
          split_rngs={"params": True, LORA_DROPOUT: True},
          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.scan_groups,
          metadata_params={nn.PARTITION_NAME: "layers"})(cfg, self.lora)
    block = _block_class(cfg)
    first = cfg.scan_groups * len(cfg.attention_types)
    self.blocks = [block(cfg, kind, self.lora, name=f"layer_{i}")
                   for i, kind in enumerate(cfg.layer_attention_types) if i >= first]

  def embed(self, tokens):
    cfg = self.cfg
    dt = _dtype(cfg.dtype)
    x = jnp.take(self.embedder.input_embedding, tokens, axis=0).astype(dt)
    x = x * jnp.asarray(math.sqrt(cfg.embed_dim), dt)
    return sharding.constrain(x, ("batch", "length", "act_embed"))

  def unembed(self, hidden):
    return unembed(self.cfg, self.embedder.input_embedding, hidden)

  def __call__(self, tokens, positions, segment_ids=None, cache: kv_cache.Cache | None = None,
               return_hidden: bool = False):
    hidden, new_cache = self.hidden_states(tokens, positions, segment_ids, cache)
    logits = self.unembed(hidden)
    if return_hidden:
      return logits, new_cache, hidden
    return logits, new_cache

  def hidden_states(self, tokens, positions, segment_ids=None,
                    cache: kv_cache.Cache | None = None):
    """(final-norm hidden states [B, T, D], new cache or None): ``__call__`` without logits."""
    cfg = self.cfg
    if segment_ids is None:
      segment_ids = jnp.ones_like(tokens)
    valid = segment_ids != 0
    kv = write = local_k_pos = None
    if cache is None:
      k_pos, k_valid, k_seg = positions, valid, segment_ids
      mask_pos = k_pos
    else:
      new_pos = jnp.where(valid, positions, -1)
      write = {"index": cache["end"]}
      k_pos = jax.lax.dynamic_update_slice(cache["pos"], new_pos, (0, cache["end"]))
      k_seg = None
      kv = {k: v for k, v in cache.items() if k.startswith(("k", "v"))}
      if "pos_local" in cache:
        write["local_slots"], pos_local, local_k_pos = kv_cache.local_writes(cfg, cache, new_pos)
      mask_pos = k_pos
      if "shared" in cache:
        kv["shared"] = cache["shared"]
        # [B, S_shared + S]: every key a row sees, its prompt's then its own.
        mask_pos = jnp.concatenate([cache["shared"]["pos"], k_pos], axis=1)
      k_valid = mask_pos >= 0
    masks = attention_masks(cfg, positions, segment_ids, mask_pos, k_valid, k_seg, local_k_pos)

    x = self.embed(tokens)
    ropes = rope_tables(cfg, positions)
    if cfg.scan_groups:
      groups = jnp.arange(cfg.scan_groups)
      (x, kv), _ = self.layers((x, kv), groups, ropes, masks, write)
    first = cfg.scan_groups * len(cfg.attention_types)
    for i, block in enumerate(self.blocks, start=first):
      x, kv = block(x, ropes, masks, kv, _stack_index(cfg, i), write)

    new_cache = None
    if cache is not None:
      new_cache = dict(kv, pos=k_pos, end=cache["end"] + tokens.shape[1])
      if "pos_local" in cache:
        new_cache["pos_local"] = pos_local
    return self.final_norm(x), new_cache


def unembed(cfg: ModelConfig, embedding: jax.Array, hidden: jax.Array) -> jax.Array:
  """float32 logits [B, T, V] of hidden states [B, T, D] through the tied embedding [V, D]."""
  logits = dense("BTD,VD->BTV", hidden, embedding.astype(hidden.dtype))
  logits = soft_cap(logits.astype(jnp.float32), cfg.final_logit_soft_cap)
  return sharding.constrain(logits, ("batch", "length", "act_vocab"))


def attention_masks(cfg: ModelConfig, q_pos, q_seg, k_pos, k_valid, k_seg, local_k_pos=None):
  """Boolean [B, T, S] masks for global and local-sliding layers.

  Causality is by position, so it holds for packed segments (positions restart per segment) and
  for left-padded prompts in a cache (padding slots carry position -1). ``local_k_pos`` are the
  key positions of local layers when their cache differs from the global one (-1: empty).
  """
  allowed = k_valid[:, None, :] & (k_pos[:, None, :] <= q_pos[:, :, None])
  if k_seg is not None:
    allowed &= k_seg[:, None, :] == q_seg[:, :, None]
  masks = {AttentionType.GLOBAL.value: allowed}
  if AttentionType.LOCAL_SLIDING in cfg.attention_types:
    local = allowed
    if local_k_pos is not None:
      k_pos = local_k_pos
      local = (k_pos[:, None, :] >= 0) & (k_pos[:, None, :] <= q_pos[:, :, None])
    near = (q_pos[:, :, None] - k_pos[:, None, :]) < cfg.sliding_window_size
    masks[AttentionType.LOCAL_SLIDING.value] = local & near
  return masks


# ----------------------------------------------------------------------------- parameters


def _dummy_inputs():
  return jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32)


def abstract_params(cfg: ModelConfig) -> Any:
  """Boxed (nn.Partitioned) ShapeDtypeStructs of the parameters; allocates nothing."""
  model = Transformer(cfg)
  return jax.eval_shape(lambda r: model.init(r, *_dummy_inputs()),
                        jax.random.key(0))["params"]


def param_shardings(cfg: ModelConfig, mesh) -> Any:
  """NamedShardings (unboxed tree) for the parameters on ``mesh``."""
  return sharding.tree_shardings(abstract_params(cfg), mesh)


def init_params(cfg: ModelConfig, rng: jax.Array, mesh=None) -> Any:
  """Random parameters, created directly in their shards when ``mesh`` is given."""
  model = Transformer(cfg)

  def init(r):
    return sharding.unbox(model.init(r, *_dummy_inputs())["params"])

  if mesh is None:
    return jax.jit(init)(rng)
  with sharding.use_mesh(mesh):
    return jax.jit(init, out_shardings=param_shardings(cfg, mesh))(rng)


def count_params(cfg: ModelConfig) -> int:
  shapes = sharding.unbox(abstract_params(cfg))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def flops_per_token(cfg: ModelConfig, seq_len: int, training: bool = True) -> float:
  """Matmul FLOPs per token (forward x3 for training), including attention over ``seq_len``.

  The standard 6N + attention estimate used for MFU; embedding lookups are free, the tied
  unembedding is counted.
  """
  d, h, f = cfg.embed_dim, cfg.head_dim, cfg.hidden_dim
  n, k = cfg.num_heads, cfg.num_kv_heads
  per_layer = 2 * d * h * (n + 2 * k) + 2 * n * h * d + 2 * 3 * d * f
  attn = 0.0
  for kind in cfg.layer_attention_types:
    span = seq_len
    if kind == AttentionType.LOCAL_SLIDING:
      span = min(seq_len, cfg.sliding_window_size)
    attn += 2 * 2 * n * h * span / 2  # QK^T and PV, causal: half the keys on average
  fwd = cfg.num_layers * per_layer + attn + 2 * d * cfg.vocab_size
  return float(fwd * (3 if training else 1))


def _layer_keys(cfg: ModelConfig):
  """(unscanned name, group, block) of every layer inside the scan."""
  p = len(cfg.attention_types)
  return [(f"layer_{i}", i // p, f"block_{i % p}") for i in range(cfg.num_layers // p * p)]


def unscan_params(params: dict, cfg: ModelConfig) -> dict:
  """Stacked (scan) layout -> per-layer ``layer_{i}`` layout; identity when not scanned."""
  if "layers" not in params:
    return params
  out = {k: v for k, v in params.items() if k != "layers"}
  for name, g, block in _layer_keys(cfg):
    out[name] = jax.tree.map(lambda a, g=g: a[g], params["layers"][block])
  return out


def scan_params(params: dict, cfg: ModelConfig) -> dict:
  """Per-layer layout -> the stacked layout ``scan_layers`` models use."""
  if "layers" in params or not cfg.scan_groups:
    return params
  keys = _layer_keys(cfg)
  scanned = {name for name, _, _ in keys}
  out = {k: v for k, v in params.items() if k not in scanned}
  blocks: dict[str, list] = {}
  for name, _, block in keys:
    blocks.setdefault(block, []).append(params[name])
  out["layers"] = {b: jax.tree.map(lambda *a: jnp.stack(a), *ls) for b, ls in blocks.items()}
  return out


@flax.struct.dataclass
class Adapted:
  """A frozen model with LoRA adapters applied at run time: what a loss reads in place of a
  parameter tree when only the adapters train (``genrm_jax.step``)."""
  base: Any  # the model's parameters (projection weights may be quantized)
  adapters: Any  # the ``lora`` collection
  rng: jax.Array | None = None  # the adapters' dropout key; None without dropout
  lora: LoraConfig | None = flax.struct.field(pytree_node=False, default=None)


def bind(cfg: ModelConfig, model_params) -> tuple[Transformer, dict, dict]:
  """(module, variables, rngs) that run ``model_params``: a parameter tree or ``Adapted``."""
  if isinstance(model_params, Adapted):
    rngs = {} if model_params.rng is None else {LORA_DROPOUT: model_params.rng}
    return (Transformer(cfg, model_params.lora),
            {"params": model_params.base, LORA: model_params.adapters}, rngs)
  return Transformer(cfg), {"params": model_params}, {}


def embedding(model_params) -> jax.Array:
  """The tied [V, D] embedding of a parameter tree or ``Adapted``."""
  tree = model_params.base if isinstance(model_params, Adapted) else model_params
  return tree["embedder"]["input_embedding"]


def forward(cfg: ModelConfig, params, tokens, positions=None, segment_ids=None):
  """Full causal forward of unpadded [B, T] tokens (``params``: a tree or ``Adapted``);
  convenience for tests and scoring."""
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  module, variables, rngs = bind(cfg, params)
  logits, _ = module.apply(variables, tokens, positions, segment_ids, rngs=rngs)
  return logits


def decode_weights(cfg: ModelConfig, params) -> dict:
  """The ``decode`` collection of an unscanned model: each layer's projections as [out, in]
  matrices, q, k and v stacked into one, gate and up into another.

  For a CPU decode loop, computed once before it. XLA's CPU dots read a weight whose contracted
  axis is last in place, but Gemma's layouts (q [N, D, H], k/v [2, K, D, H], output [N, H, D],
  slices of the stacked gate/up [2, F, D]) were copied into that order at every step, inside the
  loop (layout assignment runs after loop-invariant code motion): six slices or transposed
  copies of weights among the ~40 operations of a layer's step. With these, a step runs 4 dots a
  layer instead of 7 and copies no weight (a `bench_10m` greedy step 12% shorter at batch 32,
  20% at 8). The barrier keeps XLA from folding the rearrangement back into the loop.
  """
  if cfg.scan_groups:
    raise ValueError("decode_weights takes an unscanned model (scan_layers=False)")
  out = {}
  for name, layer in params.items():
    if not name.startswith("layer_"):
      continue
    attn, mlp = layer["attn"], layer["mlp"]
    wq, wkv, wo = (attn[w]["w"] for w in ("q_einsum", "kv_einsum", "attn_vec_einsum"))
    n, d, h = wq.shape
    rows = lambda w: w.transpose(0, 2, 1).reshape(-1, d)  # noqa: E731  [., D, H] -> [. * H, D]
    out[name] = jax.lax.optimization_barrier({
        "attn": {"qkv": jnp.concatenate([rows(wq), rows(wkv[0]), rows(wkv[1])]),
                 "o": wo.reshape(n * h, d).T},
        "mlp": {"gate_up": mlp["gating_einsum"].reshape(-1, d)}})
  return out
