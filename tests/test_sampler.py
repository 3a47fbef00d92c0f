"""The sampler against full-forward greedy decoding, its filters, seeds, buckets and the mesh."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from genrm_jax import kv_cache
from genrm_jax import model as model_lib
from genrm_jax import sampler, sharding, vocab as vocab_lib
from genrm_jax.config import SamplerConfig
from tests import tiny_lm

PROMPTS = [[2, 5, 6, 7], [2, 8, 9, 10, 11, 12, 13, 14, 15, 16], [2]]
SAMPLED = SamplerConfig(10, temperature=1.0, top_k=20, top_p=0.95)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  return vocab_lib.train_char_vocab(["the cat sat on the mat. Yes No"],
                                    str(tmp_path_factory.mktemp("vocab") / "v.model"))


# Every test uses this one config so that the jitted programs are shared (compiling dominates).
@pytest.fixture(scope="module")
def lm(vocab):
  cfg = tiny_lm.small_cfg(vocab_size=vocab.vocab_size)
  return cfg, tiny_lm.lively_params(cfg)


def _decode_ids(cfg, params, prompts, sc, seed=0, num_samples=1, mesh=None, codec=None,
                rows=None):
  codec = codec or tiny_lm.char_codec()
  prefix, _ = sampler.extend(cfg, params, None, [0] * len(prompts), prompts, mesh=mesh)
  parent = np.repeat(rows or np.arange(len(prompts)), num_samples).tolist()
  return sampler.decode(cfg, params, prefix, parent, codec, sc, seed, mesh=mesh), prefix


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_greedy_equals_full_forward_left_padded_batch(lm, family):
  """Gemma 2: local layers and soft-capping; Gemma 3: local layers' cache a ring of 5 slots."""
  cfg = tiny_lm.small_cfg(vocab_size=lm[0].vocab_size, gemma2=family == "gemma2",
                          gemma3=family == "gemma3")
  params = tiny_lm.lively_params(cfg, seed=1)
  stop = 1
  sc = SamplerConfig(max_new_tokens=14, temperature=0.0)
  comps, _ = _decode_ids(cfg, params, PROMPTS, sc)
  for prompt, c in zip(PROMPTS, comps):
    ref = tiny_lm.greedy_reference(cfg, params, prompt, 14, stop_ids=(stop,))
    assert c.token_ids == ref
    assert c.finish_reason == ("stop" if ref[-1] == stop else "length")
    ref_lp = [float(jax.nn.log_softmax(tiny_lm.full_logits(cfg, params, prompt + ref[:i])[-1])[t])
              for i, t in enumerate(ref)]
    np.testing.assert_allclose(c.logprobs, ref_lp, atol=2e-4)


def test_gemma3_extensions_with_padding_gaps_equal_full_forward(lm):
  """Right-padded blocks leave gaps between a row's positions and cache slots: local layers must
  still see exactly the last `window` positions, before and after their cache becomes a ring."""
  cfg = tiny_lm.small_cfg(vocab_size=lm[0].vocab_size, gemma3=True)
  params = tiny_lm.lively_params(cfg, seed=2)
  rng = np.random.default_rng(0)
  blocks = [[rng.integers(3, cfg.vocab_size, n).tolist() for n in lens]
            for lens in ([3, 9, 2], [2, 1, 7], [4, 4, 1])]  # row x block
  prefix = None
  for j in range(3):
    seqs = [row[j] for row in blocks]
    parent = [0, 0, 0] if prefix is None else [0, 1, 2]
    # Block 0 fits a 4-slot cache (no ring yet); the later ones grow it past the window.
    prefix, out = sampler.extend(cfg, params, prefix, parent, seqs, token_logprobs=True,
                                 length_buckets=(4, 16))
    for row, lp in zip(blocks, out["token_logprobs"]):
      seen = sum(row[:j], [])
      ref = jax.nn.log_softmax(tiny_lm.full_logits(cfg, params, seen + row[j]))
      want = [float(ref[len(seen) + t, row[j][t + 1]]) for t in range(len(row[j]) - 1)]
      np.testing.assert_allclose(lp, want, atol=2e-4)
  slots = lambda name: {b.shape[-1] for b in jax.tree.leaves(prefix.cache[name])}  # noqa: E731
  assert slots("k_local") == {5} and min(slots("k")) > 5
  sc = SamplerConfig(max_new_tokens=8, temperature=0.0)
  comps = sampler.decode(cfg, params, prefix, [2, 0, 1], tiny_lm.char_codec(eos_id=-1), sc, 0)
  for r, c in zip([2, 0, 1], comps):
    assert c.token_ids == tiny_lm.greedy_reference(cfg, params, sum(blocks[r], []), 8)


def test_top_k_1_equals_greedy(lm):
  cfg, params = lm
  greedy, _ = _decode_ids(cfg, params, PROMPTS, SamplerConfig(14, temperature=0.0))
  got, _ = _decode_ids(cfg, params, PROMPTS, SamplerConfig(14, temperature=1.5, top_k=1),
                       seed=3)
  assert [c.token_ids for c in got] == [c.token_ids for c in greedy]


def test_filter_logits_keeps_top_k_and_nucleus():
  probs = np.array([[0.05, 0.5, 0.15, 0.3]], np.float32)
  logits = np.log(probs)

  def kept(**kw):
    spec = sampler._DecodeSpec(4, kw.pop("temperature", 1.0), kw.get("top_k", 0),
                               kw.get("top_p", 1.0), (), ())
    return np.isfinite(np.asarray(sampler._filter_logits(logits, spec)))[0].tolist()

  assert kept(top_k=2) == [False, True, False, True]
  assert kept(top_p=0.7) == [False, True, False, True]  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
  assert kept(top_p=0.85) == [False, True, True, True]
  assert kept(top_p=0.5) == [False, True, False, False]
  assert kept(top_k=3, top_p=0.9) == [False, True, True, True]


def test_seeds_reproducible_and_samples_reuse_prompt_cache(lm):
  cfg, params = lm
  sc = SAMPLED
  a, _ = _decode_ids(cfg, params, PROMPTS, sc, seed=7, num_samples=2)
  b, _ = _decode_ids(cfg, params, PROMPTS, sc, seed=7, num_samples=2)
  c, _ = _decode_ids(cfg, params, PROMPTS, sc, seed=8, num_samples=2)
  ids = lambda cs: [x.token_ids for x in cs]  # noqa: E731
  assert ids(a) == ids(b)
  assert ids(a) != ids(c)
  assert len({tuple(x) for x in ids(a)}) == 6  # the samples of one prompt differ too
  # Sharing one prefilled prompt across its samples = prefilling the prompt once per sample.
  repeated = [p for p in PROMPTS for _ in range(2)]
  d, _ = _decode_ids(cfg, params, repeated, sc, seed=7)
  assert ids(d) == ids(a)



def test_row_seeds_make_a_sample_independent_of_its_batch(lm):
  cfg, params = lm
  codec = tiny_lm.char_codec()
  prefix, _ = sampler.extend(cfg, params, None, [0] * len(PROMPTS), PROMPTS)
  ids = lambda cs: [x.token_ids for x in cs]  # noqa: E731
  # Rows (prompt, seed): the whole batch, then each row alone, then the batch reversed.
  rows, seeds = [0, 1, 2, 1], [11, 12, 13, 14]
  batch = ids(sampler.decode(cfg, params, prefix, rows, codec, SAMPLED, 5, row_seeds=seeds))
  alone = [ids(sampler.decode(cfg, params, prefix, [r], codec, SAMPLED, 5, row_seeds=[s]))[0]
           for r, s in zip(rows, seeds)]
  reverse = ids(sampler.decode(cfg, params, prefix, rows[::-1], codec, SAMPLED, 5,
                               row_seeds=seeds[::-1]))
  assert batch == alone == reverse[::-1]
  assert batch[1] != batch[3]  # one prompt, two seeds: two samples
  other = ids(sampler.decode(cfg, params, prefix, rows, codec, SAMPLED, 6, row_seeds=seeds))
  assert other != batch
  with pytest.raises(ValueError, match="2 row seeds for 4 rows"):
    sampler.decode(cfg, params, prefix, rows, codec, SAMPLED, 5, row_seeds=[1, 2])

def test_stop_token_and_stop_string(lm):
  cfg, params = lm
  codec = tiny_lm.char_codec(eos_id=1)
  ref = tiny_lm.greedy_reference(cfg, params, PROMPTS[1], 12)
  assert 1 not in ref and len(set(ref[:6])) > 2, ref  # the test needs a varied greedy path
  k = next(i for i in range(1, 12) if ref[i] not in ref[:i])
  sc = SamplerConfig(12, temperature=0.0, stop_token_ids=(ref[k],))
  (c,), _ = _decode_ids(cfg, params, PROMPTS, sc, codec=codec, rows=[1])
  assert c.token_ids == ref[:k + 1] and c.finish_reason == "stop"
  assert c.text == codec.decode(ref[:k])
  # A two-token stop string: the loop stops right after it, and the text ends before it.
  j = next(i for i in range(2, 11) if codec.decode(ref[i:i + 2]) not in codec.decode(ref[:i + 1]))
  sc = SamplerConfig(12, temperature=0.0, stop_strings=(codec.decode(ref[j:j + 2]),))
  (c,), _ = _decode_ids(cfg, params, PROMPTS, sc, codec=codec, rows=[1])
  assert c.token_ids == ref[:j + 2] and c.finish_reason == "stop"
  assert c.text == codec.decode(ref[:j])


def test_decode_prefix_and_rewind_equal_full_forwards(lm):
  """The cache decode returns continues each row's completion; a rewound row forgets its tail."""
  cfg, params = lm
  codec = tiny_lm.char_codec(eos_id=1)
  sc = SamplerConfig(9, temperature=1.0, stop_token_ids=(5, 7))
  prefix, _ = sampler.extend(cfg, params, None, [0] * 3, PROMPTS)
  parent = [0, 1, 2, 1]
  comps, dec = sampler.decode(cfg, params, prefix, parent, codec, sc, seed=3, return_prefix=True)
  assert len({len(c.token_ids) for c in comps}) > 1  # rows stopped at different steps
  for i, c in enumerate(comps):
    seen = PROMPTS[parent[i]] + c.token_ids[:-1]
    np.testing.assert_allclose(dec.last_logits[i], tiny_lm.full_logits(cfg, params, seen)[-1],
                               rtol=1e-4, atol=1e-4)
  drop = [min(2, len(c.token_ids) - 1) for c in comps]
  tails = [[9, 10], [11], [12, 13, 14], [4]]
  _, out = sampler.extend(cfg, params, sampler.rewind(dec, drop), list(range(4)), tails,
                          read_ids=(3, 8))
  for i, c in enumerate(comps):
    seq = PROMPTS[parent[i]] + c.token_ids[:len(c.token_ids) - 1 - drop[i]] + tails[i]
    want = jax.nn.log_softmax(tiny_lm.full_logits(cfg, params, seq)[-1])[np.array([3, 8])]
    np.testing.assert_allclose(out["read_logprobs"][i], want, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="rewound"):
    sampler.decode(cfg, params, sampler.rewind(dec, drop), [0], codec, sc, seed=0)


@pytest.mark.parametrize("scan", [False, True])
def test_samples_of_a_prompt_read_its_cache_shared(lm, scan):
  """K samples of each prompt attend to one copy of its cache (bucket padding rows included):
  the same tokens as K copies, and the returned cache continues each sample exactly."""
  cfg, params = lm
  if scan:
    cfg = cfg.replace(scan_layers=True)
    params = model_lib.scan_params(params, cfg)
  codec = tiny_lm.char_codec(eos_id=1)
  sc = SamplerConfig(9, temperature=1.0, stop_token_ids=(5, 7))
  prefix, _ = sampler.extend(cfg, params, None, [0] * 3, PROMPTS)  # 4 cache rows, 1 padding
  parent = np.repeat(np.arange(3), 3).tolist()
  assert sampler._shared_reps(prefix, parent) == 3
  assert sampler._shared_reps(prefix, [0, 0, 1, 1, 2]) == 0
  runs = [sampler.decode(cfg, params, prefix, parent, codec, sc, seed=0, return_prefix=True,
                         row_seeds=list(range(9)), shared_prefix=shared)
          for shared in (True, False)]
  (comps, dec), (copies, _) = runs
  assert [c.token_ids for c in comps] == [c.token_ids for c in copies]
  np.testing.assert_allclose([sum(c.logprobs) for c in comps],
                             [sum(c.logprobs) for c in copies], atol=1e-4)
  assert len({len(c.token_ids) for c in comps}) > 1
  for i, c in enumerate(comps):  # each sampled token's log-probability, by full forwards
    seq = PROMPTS[parent[i]] + c.token_ids
    ref = jax.nn.log_softmax(tiny_lm.full_logits(cfg, params, seq[:-1]), axis=-1)
    n = len(PROMPTS[parent[i]])
    np.testing.assert_allclose(c.logprobs, [ref[n - 1 + t, tok] for t, tok in
                                            enumerate(c.token_ids)], atol=2e-4)
  tails = [[9 + i % 4] for i in range(9)]
  _, out = sampler.extend(cfg, params, dec, list(range(9)), tails, read_ids=(3, 8))
  for i, c in enumerate(comps):
    seq = PROMPTS[parent[i]] + c.token_ids[:-1] + tails[i]
    want = jax.nn.log_softmax(tiny_lm.full_logits(cfg, params, seq)[-1])[np.array([3, 8])]
    np.testing.assert_allclose(out["read_logprobs"][i], want, rtol=1e-4, atol=1e-4)


def test_local_layers_never_read_a_shared_cache(lm):
  cfg = tiny_lm.small_cfg(vocab_size=lm[0].vocab_size, gemma2=True)
  params = tiny_lm.lively_params(cfg, seed=1)
  prefix, _ = sampler.extend(cfg, params, None, [0] * 3, PROMPTS)
  assert sampler._shared_reps(prefix, np.repeat(np.arange(3), 2).tolist()) == 0
  with pytest.raises(ValueError, match="global attention layers only"):
    kv_cache.with_shared(cfg, prefix.cache, 2, 4)


def test_text_api_one_compile_per_bucket(lm, vocab):
  cfg, params = lm
  sc = SamplerConfig(max_new_tokens=9, temperature=0.8, top_k=20, top_p=0.95)
  out = sampler.sample(cfg, params, vocab, ["the cat", "a mat on"], sc, seed=1, num_samples=2)
  assert [len(x) for x in out] == [2, 2]
  for c in (c for cs in out for c in cs):
    ids = c.token_ids[:-1] if c.finish_reason == "stop" else c.token_ids
    assert c.text == vocab.decode(ids) and len(c.token_ids) <= 9
  before = dict(sampler.TRACES)
  # Other prompts, lengths and seed within the same buckets: no new trace.
  again = sampler.sample(cfg, params, vocab, ["sat", "the mat. No"], sc, seed=2, num_samples=2)
  assert dict(sampler.TRACES) == before
  assert [c.text for cs in again for c in cs] != [c.text for cs in out for c in cs]
  # A longer prompt lands in the next length bucket: one new trace (an odd bucket no test shares).
  sampler.extend(cfg, params, None, [0, 0], [list(range(2, 25))] * 2, length_buckets=(16, 40))
  assert sampler.TRACES["extend"] == before["extend"] + 1


def test_sharded_sampling_equals_single_device_with_sharded_cache(lm):
  cfg, params = lm
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sharded = jax.device_put(params, model_lib.param_shardings(cfg, mesh))
  single, _ = _decode_ids(cfg, params, PROMPTS, SAMPLED, seed=5, num_samples=2)
  multi, prefix = _decode_ids(cfg, sharded, PROMPTS, SAMPLED, seed=5, num_samples=2, mesh=mesh)
  assert [c.token_ids for c in multi] == [c.token_ids for c in single]
  np.testing.assert_allclose([c.logprobs for c in multi], [c.logprobs for c in single], atol=1e-4)
  # Rows over (data, fsdp), kv heads over tensor: 1/8 of the cache per device.
  for buf in jax.tree.leaves((prefix.cache["k"], prefix.cache["v"])):  # one buffer per layer
    spec = tuple(buf.sharding.spec)
    assert spec + (None,) * (5 - len(spec)) == (None, ("data", "fsdp"), "tensor", None, None)
    assert np.prod(buf.addressable_shards[0].data.shape) * 8 == np.prod(buf.shape)


def test_rewind_of_a_wrapped_ring_cache_is_refused():
  """A 5-slot local ring: forgetting 2+ tokens once position 5 was written would lose keys."""
  ring = {"pos": np.zeros((2, 12), np.int32), "pos_local": np.zeros((2, 5), np.int32)}
  prefix = sampler.Prefix(ring, None, np.array([9, 5]), 2)
  assert sampler.can_rewind(prefix, [1, 3])  # one token, or a ring that never wrapped
  assert not sampler.can_rewind(prefix, [2, 0])
  with pytest.raises(ValueError, match="ring cache"):
    sampler.rewind(prefix, [2, 0])
  no_ring = sampler.Prefix({"pos": ring["pos"]}, None, np.array([9, 5]), 2)
  assert sampler.can_rewind(no_ring, [9, 5])
