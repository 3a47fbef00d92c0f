"""The Flax Gemma: real sizes, KV cache against the full forward, numerics and memory options."""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrm_jax import config
from genrm_jax import kv_cache
from genrm_jax import model as model_lib

# Published parameter counts (Hugging Face model cards; equal to transformers' meta-device counts
# for the same configs). Gemma 1 on HF has a 256000-row embedding; the official Flax release pads
# it to 256128 rows, which is what the gemma_2b / gemma_7b presets hold.
PUBLISHED = {
    "gemma_2b": 2_506_172_416,
    "gemma_7b": 8_537_680_896,
    "gemma2_2b": 2_614_341_888,
    "gemma2_9b": 9_241_705_984,
    "gemma2_27b": 27_227_128_320,
}


# Gemma 3 text towers with the tokenizer's 262,144 rows: 270M as on its model card; the others are
# the Gemma 3 report's non-embedding counts (698M, 3,209M, 10,759M, 25,600M) plus the embedding,
# and equal transformers' Gemma3ForCausalLM meta-device counts.
PUBLISHED_GEMMA3 = {
    "gemma3_270m": 268_098_176,
    "gemma3_1b": 999_885_952,
    "gemma3_4b": 3_880_099_328,
    "gemma3_12b": 11_765_788_416,
    "gemma3_27b": 27_009_002_240,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_GEMMA3))
def test_gemma3_parameter_counts(name):
  cfg = config.preset(name)
  assert model_lib.count_params(cfg) == PUBLISHED_GEMMA3[name]
  # Scanning stacks whole 6-layer patterns; the rest (1B: 2 layers) stays unscanned.
  scanned = model_lib.sharding.unbox(model_lib.abstract_params(cfg.replace(scan_layers=True)))
  tail = cfg.num_layers % 6
  assert sorted(k for k in scanned if k.startswith("layer_")) == sorted(
      f"layer_{i}" for i in range(cfg.num_layers - tail, cfg.num_layers))
  assert scanned["layers"]["block_5"]["attn"]["_key_norm"]["scale"].shape == (
      cfg.num_layers // 6, cfg.head_dim)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name):
  cfg = config.preset(name, vocab_size=256_000)
  assert model_lib.count_params(cfg) == PUBLISHED[name]
  padding = config.preset(name).vocab_size - 256_000
  assert model_lib.count_params(config.preset(name)) == PUBLISHED[name] + padding * cfg.embed_dim


def small_gemma2(**kw) -> config.ModelConfig:
  """GQA, soft-capping on, a sliding window (4) shorter than the sequences used below."""
  base = dict(vocab_size=50, num_layers=4, embed_dim=32, hidden_dim=64, num_heads=4,
              num_kv_heads=2, head_dim=8, query_pre_attn_scalar=12, sliding_window_size=4,
              attn_logits_soft_cap=3.0, final_logit_soft_cap=5.0, max_seq_len=64)
  base.update(kw)
  return config.gemma2_2b().replace(**base)


# Jitted: op-by-op dispatch of the whole model costs more CPU than compiling it.
forward = jax.jit(model_lib.forward, static_argnums=0)


@functools.lru_cache(maxsize=None)
def _params(cfg: config.ModelConfig):
  return model_lib.init_params(cfg.replace(scan_layers=False, remat_policy="none"),
                               jax.random.key(0))


def _perturbed_norms(params):
  """Random norm offsets, so tests see non-identity norms."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  rng = np.random.default_rng(0)
  out = [v + 0.3 * rng.standard_normal(v.shape).astype(np.float32)
         if "scale" in str(path[-1]) else v for path, v in leaves]
  return jax.tree_util.tree_unflatten(treedef, out)


def small_gemma3(**kw) -> config.ModelConfig:
  """GQA, QK-norm, window 4 shorter than the sequences, 8 layers = one 5:1 pattern + 2 local."""
  return config.tiny_gemma3(**dict(dict(vocab_size=50, embed_dim=32, hidden_dim=64, head_dim=8,
                                        max_seq_len=64), **kw))


# Compiling dominates; Gemma 3 runs scanned (the unscanned path is the sampler tests').
@pytest.mark.parametrize("make_cfg,scan_layers", [(small_gemma2, False), (small_gemma2, True),
                                                  (small_gemma3, True)])
def test_prefill_then_decode_matches_full_forward(make_cfg, scan_layers):
  """Every position's logits, with one left-padded prompt in the batch; positions run past the
  window, and the 5-token prefill is longer than the 4-slot ring of local layers."""
  cfg = make_cfg()
  params = _perturbed_norms(_params(cfg))
  run_cfg = cfg.replace(scan_layers=scan_layers)
  run_params = model_lib.scan_params(params, run_cfg)
  model = model_lib.Transformer(run_cfg)
  t, pad, prefill = 11, 3, 5
  rng = np.random.default_rng(1)
  seqs = [rng.integers(0, cfg.vocab_size, t), rng.integers(0, cfg.vocab_size, t - pad)]
  refs = [np.asarray(forward(cfg, params, jnp.asarray(s[None])))[0] for s in seqs]

  # Column c of the batch holds position c of row 0 and position c - pad of row 1.
  tokens = np.stack([seqs[0], np.concatenate([np.zeros(pad, int), seqs[1]])]).astype(np.int32)
  positions = np.stack([np.arange(t), np.maximum(np.arange(t) - pad, 0)]).astype(np.int32)
  segments = np.stack([np.ones(t), np.arange(t) >= pad]).astype(np.int32)

  step = jax.jit(lambda p, tok, pos, seg, c: model.apply({"params": p}, tok, pos, seg, c))
  cache = kv_cache.init_cache(run_cfg, 2, t)
  logits, cache = step(run_params, tokens[:, :prefill], positions[:, :prefill],
                       segments[:, :prefill], cache)
  got = [np.asarray(logits)]
  for c in range(prefill, t):
    logits, cache = step(run_params, tokens[:, c:c + 1], positions[:, c:c + 1],
                         segments[:, c:c + 1], cache)
    got.append(np.asarray(logits))
  got = np.concatenate(got, axis=1)
  np.testing.assert_allclose(got[0], refs[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[1, pad:], refs[1], rtol=1e-5, atol=1e-5)
  assert int(cache["end"]) == t
  assert (np.asarray(cache["pos"])[1, :pad] == -1).all()
  # Local layers keep the last `window` positions of each row, no more.
  assert {b.shape[-1] for b in jax.tree.leaves(cache["k_local"])} == {cfg.sliding_window_size}
  np.testing.assert_array_equal(np.sort(np.asarray(cache["pos_local"]), axis=1),
                                [np.arange(t - 4, t), np.arange(t - pad - 4, t - pad)])


@pytest.mark.parametrize("make_cfg", [small_gemma2, small_gemma3])
def test_decode_weights_compute_the_same_function(make_cfg):
  """The ``decode`` collection (each layer's weights rearranged once for a CPU decode loop) gives
  the official layouts' logits, through GQA, QK-norm, soft caps and local layers; and the model
  does read it (changed, it changes the logits)."""
  cfg = make_cfg()
  params = _perturbed_norms(_params(cfg))
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 9)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(9), tokens.shape)
  ref = np.asarray(forward(cfg, params, tokens))
  decode = model_lib.decode_weights(cfg, params)
  run = jax.jit(lambda d: model_lib.Transformer(cfg).apply({"params": params, "decode": d},
                                                           tokens, positions)[0])
  np.testing.assert_allclose(np.asarray(run(decode)), ref, rtol=1e-5, atol=1e-5)
  for name in ("qkv", "o", "gate_up"):
    changed = jax.tree_util.tree_map_with_path(
        lambda path, w, name=name: w + 0.1 if name in jax.tree_util.keystr(path) else w, decode)
    assert not np.allclose(np.asarray(run(changed)), ref, atol=1e-3), name
  scanned = cfg.replace(scan_layers=True)
  with pytest.raises(ValueError, match="unscanned"):
    model_lib.decode_weights(scanned, model_lib.scan_params(params, scanned))


def test_packed_segments_do_not_attend_across():
  cfg = small_gemma2(sliding_window_size=16)
  params = _params(cfg)
  rng = np.random.default_rng(2)
  a, b = rng.integers(0, cfg.vocab_size, 5), rng.integers(0, cfg.vocab_size, 7)
  tokens = jnp.asarray(np.concatenate([a, b])[None], jnp.int32)
  positions = jnp.asarray(np.concatenate([np.arange(5), np.arange(7)])[None], jnp.int32)
  segments = jnp.asarray(np.array([1] * 5 + [2] * 7)[None], jnp.int32)
  packed = forward(cfg, params, tokens, positions, segments)
  np.testing.assert_allclose(packed[0, :5], forward(cfg, params, a[None])[0],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[0, 5:], forward(cfg, params, b[None])[0],
                             rtol=1e-5, atol=1e-5)


def _loss_and_grads(cfg, params, tokens):
  def loss(p):
    logits = model_lib.forward(cfg, p, tokens)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("make_cfg,variant", [
    (small_gemma2, dict(scan_layers=True)), (small_gemma2, dict(remat_policy="full")),
    (small_gemma2, dict(scan_layers=True, remat_policy="dots")),
    (small_gemma3, dict(scan_layers=True, remat_policy="dots")),
    (small_gemma3, dict(scan_layers=True, remat_policy="gate_up"))])
def test_scan_and_remat_give_the_same_function(make_cfg, variant):
  cfg = make_cfg()
  params = _params(cfg)
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 9)), jnp.int32)
  other = cfg.replace(**variant)
  other_params = model_lib.scan_params(params, other)
  np.testing.assert_allclose(forward(other, other_params, tokens),
                             forward(cfg, params, tokens), rtol=1e-5, atol=1e-5)
  loss, grads = _loss_and_grads(cfg, params, tokens)
  loss2, grads2 = _loss_and_grads(other, other_params, tokens)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  grads2 = model_lib.unscan_params(grads2, other)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), grads2, grads)


def test_bf16_compute_is_close_to_fp32():
  cfg = small_gemma2()
  params = _params(cfg)
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 9)), jnp.int32)
  ref = np.asarray(forward(cfg, params, tokens))
  bf16 = np.asarray(forward(cfg.replace(dtype="bfloat16"), params, tokens))
  assert bf16.dtype == np.float32  # logits are always returned in fp32
  err = np.max(np.abs(bf16 - ref)) / np.max(np.abs(ref))
  assert 0 < err < 3e-2


def test_flops_per_token_counts_the_matmuls():
  cfg = small_gemma2(num_layers=2, attention_types=(config.AttentionType.GLOBAL,))
  n_matmul = model_lib.count_params(cfg) - cfg.num_layers * 4 * cfg.embed_dim - cfg.embed_dim
  attn = cfg.num_layers * 2 * cfg.num_heads * cfg.head_dim * 16
  assert model_lib.flops_per_token(cfg, 16, training=False) == 2 * n_matmul + attn


@pytest.mark.parametrize("spec", ["BTD,NDH->BTNH", "BTNH,NHD->BTD", "BTD,FD->BTF"])
def test_lora_dense_is_the_projection_plus_its_adapter_in_value_and_gradient(spec):
  """``model.lora_dense`` (one dot with W + scale A B, a custom gradient) against autodiff of
  x W + scale (x A) B, for every input, the weight included."""
  rng = np.random.default_rng(0)
  _, ws, _, contracted, free, rest = model_lib._lora_letters(spec)  # pylint: disable=protected-access
  dims = dict(B=2, T=5, D=8, N=3, H=4, F=6)
  xs = spec.split(",")[0]
  x, w = (jnp.asarray(rng.normal(size=[dims[c] for c in s]), jnp.float32) for s in (xs, ws))
  a = jnp.asarray(rng.normal(size=[dims[c] for c in contracted] + [2]), jnp.float32)
  b = jnp.asarray(rng.normal(size=[2] + [dims[c] for c in free]), jnp.float32)
  out = spec.split("->")[1]

  def reference(x, w, a, b):
    xa = jnp.einsum(f"{xs},{contracted}R->{rest}R", x, a)
    return jnp.einsum(spec, x, w) + 1.5 * jnp.einsum(f"{rest}R,R{free}->{out}", xa, b)

  fused = lambda *args: model_lib.lora_dense(spec, 1.5, *args)  # noqa: E731
  g = jnp.asarray(rng.normal(size=reference(x, w, a, b).shape), jnp.float32)
  (want, want_vjp), (got, got_vjp) = (jax.vjp(fn, x, w, a, b) for fn in (reference, fused))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for gg, gw in zip(got_vjp(g), want_vjp(g)):
    np.testing.assert_allclose(gg, gw, rtol=1e-5, atol=1e-4)


def test_remat_policies_keep_what_they_name():
  """``dense`` is a custom-gradient call, invisible to ``checkpoint_dots``: "dots" must still keep
  the projections and attention's products, "dots_no_batch" the projections only, "gate_up" the
  MLP's gate and up outputs, "full" none."""
  from jax._src.ad_checkpoint import saved_residuals  # pylint: disable=g-import-not-at-top
  cfg = config.tiny().replace(num_layers=2)
  params = model_lib.init_params(cfg, jax.random.key(0))
  tokens = jnp.zeros((2, 8), jnp.int32)

  def kept(policy):
    c = cfg.replace(remat_policy=policy)
    res = saved_residuals(lambda p: model_lib.forward(c, p, tokens).sum(), params)
    return collections.Counter(d.split("'")[1] for _, d in res if d.startswith("named"))

  # Of each layer's seven projections, those the backward pass reads (a projection added to the
  # residual stream is not); attention's logits and encoding.
  dots = kept("dots")
  assert dots["projection"] >= 2 * 3 and dots["gate_up"] == 2 * 2 and dots["attention"] == 2 * 2
  assert kept("dots_no_batch") == {"projection": dots["projection"], "gate_up": 2 * 2}
  assert kept("gate_up") == {"gate_up": 2 * 2}
  assert kept("full") == {}
