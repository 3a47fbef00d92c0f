"""A 2x4 (fsdp, tensor) mesh on 8 simulated CPU devices: real shards, same function."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from genrm_jax import config, sharding
from genrm_jax import model as model_lib


def _cfg(**kw):
  base = dict(vocab_size=64, num_layers=2, embed_dim=32, hidden_dim=64, num_heads=4,
              num_kv_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window_size=3,
              max_seq_len=32)
  base.update(kw)
  return config.gemma2_2b().replace(**base)


@pytest.fixture(scope="module")
def mesh():
  if len(jax.devices()) < 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py)")
  return sharding.make_mesh(data=1, fsdp=2, tensor=4, devices=jax.devices()[:8])


@pytest.mark.parametrize("scan_layers", [False, True])
def test_sharded_forward_equals_single_device(mesh, scan_layers):
  cfg = _cfg(scan_layers=scan_layers)
  params = model_lib.init_params(cfg, jax.random.key(0), mesh=mesh)

  # Parameters are created in their shards, following LOGICAL_RULES.
  layer = params["layers"]["block_0"] if scan_layers else params["layer_0"]
  lead = (None,) if scan_layers else ()
  expect = {
      "embedding": (params["embedder"]["input_embedding"], P("tensor", "fsdp")),
      "q_einsum": (layer["attn"]["q_einsum"]["w"], P(*lead, "tensor", "fsdp", None)),
      # Two KV heads do not divide the 4-way tensor axis: replicated over it, not an error.
      "kv_einsum": (layer["attn"]["kv_einsum"]["w"], P(*lead, None, None, "fsdp", None)),
      "gating": (layer["mlp"]["gating_einsum"], P(*lead, None, "tensor", "fsdp")),
      "linear": (layer["mlp"]["linear"], P(*lead, "tensor", "fsdp")),
  }
  for name, (arr, spec) in expect.items():
    assert arr.sharding.spec == spec, (name, arr.sharding.spec)
    assert len(arr.sharding.device_set) == 8
  q = expect["q_einsum"][0]
  assert q.addressable_shards[0].data.shape == q.shape[:-3] + (1, 16, 8)

  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 10)), jnp.int32)
  host_params = jax.device_get(params)
  single = jax.jit(model_lib.forward, static_argnums=0)(cfg, host_params, tokens)

  with sharding.use_mesh(mesh):
    fwd = jax.jit(model_lib.forward, static_argnums=0)
    logits = fwd(cfg, params, jax.device_put(tokens, sharding.batch_sharding(mesh)))
  assert logits.sharding.spec == P("fsdp", None, "tensor")
  np.testing.assert_allclose(np.asarray(logits), np.asarray(single), rtol=1e-5, atol=1e-5)


def test_param_shardings_cover_every_parameter(mesh):
  cfg = _cfg()
  shapes = sharding.unbox(model_lib.abstract_params(cfg))
  shards = model_lib.param_shardings(cfg, mesh)
  assert jax.tree.structure(shapes) == jax.tree.structure(shards)
  for s, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shards)):
    for dim, axes in zip(s.shape, sh.spec):
      names = (axes,) if isinstance(axes, str) else axes or ()
      assert dim % int(np.prod([mesh.shape[a] for a in names])) == 0


def test_hf_import_streams_into_shards(mesh, tmp_path):
  """A HF folder loads tensor by tensor straight into the 2x4 mesh, to the same values."""
  from genrm_jax.convert import export_hf, import_model  # pylint: disable=g-import-not-at-top
  cfg = _cfg()
  params = model_lib.init_params(cfg, jax.random.key(1))
  export_hf.write_hf_dir(cfg, params, str(tmp_path / "hf"), max_shard_bytes=20_000)
  got_cfg, got = import_model.load_hf(str(tmp_path / "hf"), mesh=mesh)
  assert got_cfg == cfg
  want = model_lib.param_shardings(cfg, mesh)
  jax.tree.map(lambda a, s: np.testing.assert_equal(a.sharding.spec, s.spec), got, want)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), jax.device_get(params))
