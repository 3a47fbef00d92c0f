"""Parity with transformers' Gemma / Gemma 2 / Gemma 3, and the import/export round trips.

Reference: transformers (eager attention) on random weights it created, with every norm weight
perturbed so a mis-mapped norm cannot hide behind the identity scale.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from genrm_jax import checkpoint  # noqa: E402
from genrm_jax.convert import export_hf, import_model, keymap  # noqa: E402
from genrm_jax import model as model_lib  # noqa: E402
from tests import tiny_lm  # noqa: E402

SEQ = 12
# name -> (transformers config class, kwargs). Vocab 40 = the tiny tokenizer trained below.
HF_CONFIGS = {
    "gemma_mqa": ("GemmaConfig", dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16)),
    "gemma_mha": ("GemmaConfig", dict(num_attention_heads=4, num_key_value_heads=4, head_dim=24,
                                      rope_parameters={"rope_theta": 500.0,
                                                       "rope_type": "default"})),
    "gemma2_gqa": ("Gemma2Config", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=3,
        query_pre_attn_scalar=20, sliding_window=5, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0)),
    "gemma2_mqa_nocap": ("Gemma2Config", dict(
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
        sliding_window=4, attn_logit_softcapping=None, final_logit_softcapping=None,
        layer_types=["full_attention", "sliding_attention", "sliding_attention",
                     "full_attention"])),
    # 8 layers: the 5:1 pattern and 2 more local layers; window 5 < SEQ; linear-scaled global RoPE
    # with bases far apart, so a swapped base or scale shows.
    "gemma3_gqa": ("Gemma3TextConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=8,
        query_pre_attn_scalar=20, sliding_window=5,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                            "rope_theta": 1000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}})),
    "gemma3_mqa_softcap": ("Gemma3TextConfig", dict(
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_hidden_layers=6,
        query_pre_attn_scalar=32, sliding_window=3, final_logit_softcapping=3.0,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"] * 2)),
}


def make_hf_model(name: str, vocab_size: int = 40, seed: int = 0):
  cls_name, kw = HF_CONFIGS[name]
  return tiny_lm.random_hf_model(cls_name, seed, vocab_size=vocab_size, **kw)


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.float().numpy()


def rel_err(a, b) -> float:
  """Max absolute difference relative to the reference's largest magnitude."""
  return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def tokens_for(vocab: int, batch: int = 2, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, (batch, SEQ)).astype(np.int32)


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory) -> str:
  """A tiny Gemma-style SentencePiece model: <pad>=0, <eos>=1, <bos>=2, <unk>=3, no dummy prefix."""
  spm = pytest.importorskip("sentencepiece")
  d = tmp_path_factory.mktemp("sp")
  text = d / "text.txt"
  text.write_text("\n".join(["the quick brown fox jumps over the lazy dog 0123456789 Yes No"] * 20))
  spm.SentencePieceTrainer.train(
      input=str(text), model_prefix=str(d / "sp"), model_type="char", vocab_size=40,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
      bos_piece="<bos>", unk_piece="<unk>", hard_vocab_limit=False, add_dummy_prefix=False,
      remove_extra_whitespaces=False,
      user_defined_symbols=["▁Yes", "▁No"] + [f"<extra{i}>" for i in range(5)],
      minloglevel=2)
  path = str(d / "sp.model")
  assert spm.SentencePieceProcessor(model_file=path).get_piece_size() == 40
  return path


def _leaves(params):
  return {"/".join(str(p.key) for p in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(params)}


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_logits_match_transformers_and_round_trip(name, tmp_path, sp_tokenizer):
  model = make_hf_model(name)
  tokens = tokens_for(40)
  ref = hf_logits(model, tokens)
  model.save_pretrained(tmp_path / "hf")

  ours_dir = import_model.import_hf(str(tmp_path / "hf"), str(tmp_path / "ours"),
                                 tokenizer=sp_tokenizer)
  cfg, params, _ = checkpoint.load_model_dir(ours_dir)
  assert cfg.family == name.split("_")[0]
  logits = jax.jit(model_lib.forward, static_argnums=0)(cfg, params, tokens)
  assert rel_err(logits, ref) <= 1e-4

  # Export -> reload in transformers: no missing/unexpected keys and the same logits.
  export_hf.export_hf(ours_dir, str(tmp_path / "hf2"))
  reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "hf2", output_loading_info=True, attn_implementation="eager")
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  assert rel_err(hf_logits(reloaded.float().eval(), tokens), ref) <= 1e-5

  # Import -> export -> import: bit-identical parameters.
  import_model.import_hf(str(tmp_path / "hf2"), str(tmp_path / "ours2"))
  _, params2, _ = checkpoint.load_model_dir(str(tmp_path / "ours2"))
  a, b = _leaves(params), _leaves(params2)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _gemma3_multimodal(seed: int = 0):
  """A tiny Gemma3ForConditionalGeneration: the text tower of gemma3_gqa beside a SigLIP tower."""
  text = dict(make_hf_model("gemma3_gqa").config.to_dict())
  vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                image_size=28, patch_size=14)
  cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                  image_token_index=39, boi_token_index=37, eoi_token_index=38)
  cfg._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(seed)
  model = transformers.Gemma3ForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if "norm" in pname:
        p.normal_(0.0, 0.3)
  return model


@pytest.mark.parametrize("layout", ["saved", "transformers5_names"])
def test_gemma3_multimodal_text_tower(tmp_path, layout):
  model = _gemma3_multimodal()
  tokens = tokens_for(37)  # below the image tokens
  ref = hf_logits(model, tokens)
  model.save_pretrained(tmp_path / "hf")
  tensors = load_file(tmp_path / "hf" / "model.safetensors")
  assert any(k.startswith("vision_tower.") for k in tensors)
  if layout == "transformers5_names":  # as transformers 5 names them in memory
    renamed = {k.replace("language_model.model.", "model.language_model.")
               .replace("vision_tower.", "model.vision_tower."): v for k, v in tensors.items()}
    save_file(renamed, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
  out = import_model.import_hf(str(tmp_path / "hf"), str(tmp_path / "ours"))
  cfg, params, meta = checkpoint.load_model_dir(out)
  assert cfg.family == "gemma3" and meta["source"]["vision_tensors_left_out"] > 0
  logits = jax.jit(model_lib.forward, static_argnums=0)(cfg, params, tokens)
  assert rel_err(logits, ref) <= 1e-4
  # Exported as the text-only Gemma3ForCausalLM.
  export_hf.export_hf(out, str(tmp_path / "hf2"))
  text, info = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "hf2", output_loading_info=True, attn_implementation="eager")
  assert type(text).__name__ == "Gemma3ForCausalLM"
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  assert rel_err(hf_logits(text.eval(), tokens), ref) <= 1e-5


@pytest.mark.parametrize("name", ["gemma3_270m", "gemma3_1b", "gemma3_4b", "gemma3_12b",
                                  "gemma3_27b"])
def test_gemma3_presets_round_trip_through_hf_config(name):
  from genrm_jax import config  # pylint: disable=g-import-not-at-top
  cfg = config.preset(name)
  hf = keymap.config_to_hf(cfg, "bfloat16")
  parsed = transformers.Gemma3TextConfig(**hf)  # accepted as is, and read the same way
  assert parsed.layer_types == hf["layer_types"]
  assert keymap.config_from_hf(hf) == cfg
  # The older spelling of released config.json files: rope_theta, rope_local_base_freq,
  # rope_scaling and sliding_window_pattern instead of per-layer-type fields.
  old = {k: v for k, v in hf.items() if k not in ("rope_parameters", "layer_types")}
  old.update(rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, sliding_window_pattern=6,
             rope_scaling=({"rope_type": "linear", "factor": 8.0}
                           if cfg.global_rope_scale != 1 else None))
  assert keymap.config_from_hf(old) == cfg


def test_sharded_export_and_tokenizer(tmp_path, sp_tokenizer):
  model = make_hf_model("gemma2_gqa", seed=3)
  model.save_pretrained(tmp_path / "hf")
  ours = str(tmp_path / "ours")
  import_model.main(["--hf_dir", str(tmp_path / "hf"), "--out", ours, "--tokenizer", sp_tokenizer])
  export_hf.main(["--checkpoint", ours, "--out", str(tmp_path / "hf2"), "--max_shard_gb",
                  str(40_000 / 2**30)])
  files = sorted(os.listdir(tmp_path / "hf2"))
  shards = [f for f in files if f.startswith("model-")]
  assert len(shards) > 2 and "model.safetensors.index.json" in files
  index = json.loads((tmp_path / "hf2" / "model.safetensors.index.json").read_text())
  assert set(index["weight_map"].values()) == set(shards)
  # A sharded folder imports through its index, to the same parameters.
  _, p1 = import_model.load_hf(str(tmp_path / "hf"))
  _, p2 = import_model.load_hf(str(tmp_path / "hf2"))
  for k, v in _leaves(p1).items():
    np.testing.assert_array_equal(v, _leaves(p2)[k], err_msg=k)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf2",
                                                               attn_implementation="eager")
  tokens = tokens_for(40, seed=5)
  assert rel_err(hf_logits(reloaded.eval(), tokens), hf_logits(model, tokens)) <= 1e-6

  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf2")
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_file=sp_tokenizer)
  for text in ("the lazy fox Yes", " No  dog<extra1>", "Yes 12"):
    assert tok(text)["input_ids"] == [sp.bos_id()] + sp.encode(text), text
  assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)


def test_project_vocab_exports_to_an_identical_hf_tokenizer(tmp_path):
  """genrm_jax.vocab's tokenizers survive export: AutoTokenizer == SentencePiece, both ways."""
  from genrm_jax import config, vocab  # pylint: disable=g-import-not-at-top
  v = vocab.train_char_vocab(["Question: what is 12 + 7?\nAnswer: 19. Is the answer correct "
                              "(Yes/No)? Yes"], str(tmp_path / "sp.model"))
  cfg = config.tiny(vocab_size=v.sp.get_piece_size(), num_layers=1)
  export_hf.write_hf_dir(cfg, model_lib.init_params(cfg, jax.random.key(0)), str(tmp_path / "hf"),
                         tokenizer_path=str(tmp_path / "sp.model"))
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  for text in ("Question: what is 12 + 7?\nAnswer: 19.", "Is the answer correct (Yes/No)? Yes",
               "  two  spaces\n\nNo", "\u00e9 \u2211 byte fallback", " No"):
    ids = tok(text)["input_ids"]
    assert ids == [v.sp.bos_id()] + v.sp.encode(text), text
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_bf16_export(tmp_path):
  model = make_hf_model("gemma_mqa")
  model.save_pretrained(tmp_path / "hf")
  cfg, params = import_model.load_hf(str(tmp_path / "hf"))
  export_hf.write_hf_dir(cfg, params, str(tmp_path / "bf16"), dtype="bfloat16")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
  assert reloaded.dtype == torch.bfloat16
  assert reloaded.config.dtype == torch.bfloat16
  tokens = tokens_for(40)
  assert rel_err(hf_logits(reloaded.float().eval(), tokens), hf_logits(model, tokens)) < 0.05
  # A bf16 folder (as released checkpoints are) imports into fp32 params, exactly.
  _, p16 = import_model.load_hf(str(tmp_path / "bf16"))
  for k, v in _leaves(params).items():
    np.testing.assert_array_equal(_leaves(p16)[k], v.astype(jax.numpy.bfloat16).astype(np.float32))


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> pathlib.Path:
  d = tmp_path_factory.mktemp("hf_ok") / "hf"
  make_hf_model("gemma2_gqa").save_pretrained(d)
  return d


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  dst.mkdir()
  for f in src.iterdir():
    (dst / f.name).write_bytes(f.read_bytes())
  return dst


def _expect_failure(hf: pathlib.Path, out: pathlib.Path, match: str, tokenizer=None):
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    import_model.import_hf(str(hf), str(out), tokenizer=tokenizer)
  assert not out.exists()
  assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_missing_tensor(hf_dir, tmp_path):
  bad = _copy(hf_dir, tmp_path / "bad")
  tensors = load_file(bad / "model.safetensors")
  del tensors["model.layers.1.self_attn.v_proj.weight"]
  save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
  _expect_failure(bad, tmp_path / "out",
                  r"'model\.layers\.1\.self_attn\.v_proj\.weight' is missing")


def test_unexpected_tensor(hf_dir, tmp_path):
  bad = _copy(hf_dir, tmp_path / "bad")
  tensors = load_file(bad / "model.safetensors")
  tensors["model.layers.9.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"]
  save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
  _expect_failure(bad, tmp_path / "out", r"'model\.layers\.9\.mlp\.up_proj\.weight'")


def test_shape_disagrees_with_config(hf_dir, tmp_path):
  bad = _copy(hf_dir, tmp_path / "bad")
  cfg = json.loads((bad / "config.json").read_text())
  cfg["intermediate_size"] = 128
  (bad / "config.json").write_text(json.dumps(cfg))
  _expect_failure(bad, tmp_path / "out",
                  r"'model\.layers\.0\.mlp\.gate_proj\.weight'.*shape \(96, 64\).*\(128, 64\)")


def test_unknown_architecture(hf_dir, tmp_path):
  bad = _copy(hf_dir, tmp_path / "bad")
  cfg = json.loads((bad / "config.json").read_text())
  cfg["architectures"], cfg["model_type"] = ["LlamaForCausalLM"], "llama"
  (bad / "config.json").write_text(json.dumps(cfg))
  _expect_failure(bad, tmp_path / "out", r"LlamaForCausalLM.*not supported")


def test_vocab_does_not_match_tokenizer(tmp_path, sp_tokenizer):
  d = tmp_path / "hf"
  make_hf_model("gemma_mqa", vocab_size=48).save_pretrained(d)
  _expect_failure(d, tmp_path / "out", r"'vocab_size'=48.*40 pieces", tokenizer=sp_tokenizer)


def test_export_refuses_what_gemma1_cannot_express():
  from genrm_jax import config  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="attn_logits_soft_cap"):
    keymap.config_to_hf(config.tiny(attn_logits_soft_cap=50.0), "float32")
  with pytest.raises(ValueError, match="use_qk_norm.*Gemma2ForCausalLM"):
    keymap.config_to_hf(config.gemma2_2b(use_qk_norm=True), "float32")
  # transformers' Gemma 3 attention never applies attn_logit_softcapping.
  with pytest.raises(ValueError, match="attn_logits_soft_cap.*Gemma3ForCausalLM"):
    keymap.config_to_hf(config.tiny_gemma3(attn_logits_soft_cap=50.0), "float32")
  hf = keymap.config_to_hf(config.tiny_gemma3(), "float32")
  with pytest.raises(ValueError, match="'attn_logit_softcapping'=50.0"):
    keymap.config_from_hf(dict(hf, attn_logit_softcapping=50.0))


def test_unsupported_gemma3_rope(tmp_path):
  bad = tmp_path / "bad"
  make_hf_model("gemma3_gqa").save_pretrained(bad)
  cfg = json.loads((bad / "config.json").read_text())
  cfg["rope_parameters"]["full_attention"] = {"rope_type": "yarn", "factor": 8.0,
                                              "rope_theta": 1e6}
  (bad / "config.json").write_text(json.dumps(cfg))
  _expect_failure(bad, tmp_path / "out", r"'rope_parameters'\['full_attention'\].*yarn")


# ----------------------------------------------------------------------------- official layout


def test_official_layout_variants(tmp_path):
  """qkv_einsum (MHA) and (2, D, F) gating, '/'-joined keys under transformer/, via orbax."""
  ocp = pytest.importorskip("orbax.checkpoint")
  model = make_hf_model("gemma_mha")
  model.save_pretrained(tmp_path / "hf")
  cfg, params = import_model.load_hf(str(tmp_path / "hf"))
  official = {}
  for i in range(cfg.num_layers):
    layer = params[f"layer_{i}"]
    attn = layer["attn"]
    official[f"transformer/layer_{i}/attn/qkv_einsum"] = {"w": np.concatenate(
        [np.asarray(attn["q_einsum"]["w"])[None], np.asarray(attn["kv_einsum"]["w"])])}
    official[f"transformer/layer_{i}/attn/attn_vec_einsum"] = {
        "w": np.asarray(attn["attn_vec_einsum"]["w"])}
    official[f"transformer/layer_{i}/mlp"] = {
        "gating_einsum": np.asarray(layer["mlp"]["gating_einsum"]).transpose(0, 2, 1),
        "linear": np.asarray(layer["mlp"]["linear"])}
    for norm in ("pre_attention_norm", "pre_ffw_norm"):
      official[f"transformer/layer_{i}/{norm}"] = {"scale": np.asarray(layer[norm]["scale"])}
  official["transformer/embedder"] = {
      "input_embedding": np.asarray(params["embedder"]["input_embedding"])}
  official["transformer/final_norm"] = {"scale": np.asarray(params["final_norm"]["scale"])}
  ckpt = ocp.PyTreeCheckpointer()
  ckpt.save(str(tmp_path / "official"), official)
  out = import_model.import_official(str(tmp_path / "official"), cfg, str(tmp_path / "ours"))
  _, got, _ = checkpoint.load_model_dir(out)
  want = _leaves(params)
  for k, v in _leaves(got).items():
    np.testing.assert_array_equal(v, want[k], err_msg=k)

  del official["transformer/final_norm"]
  with pytest.raises(ValueError, match="'final_norm/scale' is missing"):
    keymap.params_from_official(official, cfg)


# The gemma library's declared dependencies (xmanager) force protobuf < 7, so it cannot be a test
# dependency; on Python 3.11 its code runs with these packages alone, installed without their
# dependencies (../shared/notes/dependencies.md). pip caches the wheels.
GEMMA_LIBRARY = ("gemma==3.3.0", "kauldron==1.4.2", "jaxtyping==0.3.11", "lark==1.3.1",
                 "typeguard==4.6.1", "chex==0.1.92", "toolz==1.2.0")


@pytest.fixture(scope="session")
def gemma_library(download_cache):
  """DeepMind's `gemma` library (gemma.gm), installed once into pytest's cache."""
  target = download_cache("gemma_library")
  with open(target.parent / "gemma_library.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers share the folder
    stamp = target / "installed.txt"
    if not stamp.exists() or stamp.read_text() != " ".join(GEMMA_LIBRARY):
      subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade",
                      "--target", str(target), *GEMMA_LIBRARY], check=True)
      stamp.write_text(" ".join(GEMMA_LIBRARY))
  sys.path.insert(0, str(target))
  from gemma import gm  # pylint: disable=g-import-not-at-top
  return gm


def test_official_gemma_library_parity(gemma_library):
  """gm.nn.Transformer as an independent reference, in its own parameter layout."""
  gm = gemma_library
  from genrm_jax import config  # pylint: disable=g-import-not-at-top
  nn_ = gm.nn
  at = nn_.AttentionType
  cases = [
      # MHA -> qkv_einsum (3, N, D, H); gating stored (2, D, F).
      (nn_.config.TransformerConfig(
          num_embed=40, embed_dim=64, hidden_dim=96, num_heads=4, head_dim=24, num_kv_heads=4,
          final_logit_softcap=None, use_post_attn_norm=False, use_post_ffw_norm=False,
          attention_types=[at.GLOBAL] * 2),
       config.tiny(vocab_size=40, num_layers=2, embed_dim=64, hidden_dim=96, num_heads=4,
                   num_kv_heads=4, head_dim=24)),
      # Gemma 2 style: GQA, soft caps, sliding window 4, transposed gating, scalar D/N = 16.
      (nn_.config.TransformerConfig(
          num_embed=40, embed_dim=64, hidden_dim=96, num_heads=4, head_dim=8, num_kv_heads=2,
          final_logit_softcap=3.0, attn_logits_soft_cap=2.0, use_post_attn_norm=True,
          use_post_ffw_norm=True, sliding_window_size=4, transpose_gating_einsum=True,
          # (Its BY_EMBED_DIM_DIV_NUM_HEADS multiplies by D/N itself; 27B uses this one.)
          query_pre_attn_norm=nn_.config.QueryPreAttentionNormalisation
          .BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS,
          attention_types=[at.LOCAL_SLIDING, at.GLOBAL] * 2),
       config.gemma2_2b(vocab_size=40, num_layers=4, embed_dim=64, hidden_dim=96, num_heads=4,
                        num_kv_heads=2, head_dim=8, query_pre_attn_scalar=16,
                        attn_logits_soft_cap=2.0, final_logit_soft_cap=3.0,
                        sliding_window_size=4)),
      # Gemma 3: QK-norm (_query_norm/_key_norm), 5 local : 1 global over 8 layers, window 4,
      # RoPE bases 10K / 1M and the global scale factor 8.
      (nn_.config.TransformerConfig(
          num_embed=40, embed_dim=64, hidden_dim=96, num_heads=4, head_dim=16, num_kv_heads=2,
          final_logit_softcap=None, attn_logits_soft_cap=None, use_post_attn_norm=True,
          use_post_ffw_norm=True, use_qk_norm=True, sliding_window_size=4,
          transpose_gating_einsum=True, local_base_frequency=10_000,
          global_base_frequency=1_000_000, global_scale_factor=8.0,
          attention_types=nn_.config.make_attention_layers_types(
              (at.LOCAL_SLIDING,) * 5 + (at.GLOBAL,), num_layers=8)),
       config.tiny_gemma3(vocab_size=40, embed_dim=64, hidden_dim=96, head_dim=16,
                          query_pre_attn_scalar=16)),
  ]
  # Token 0 is padding for gm.nn.Transformer's default mask: draw from 1..V-1.
  tokens = np.random.default_rng(7).integers(1, 40, (2, SEQ)).astype(np.int32)
  for gm_cfg, cfg in cases:
    ref_model = nn_.Transformer(config=gm_cfg, dtype=jax.numpy.float32)
    ref_params = jax.jit(ref_model.init)(jax.random.key(1), tokens)["params"]
    ref_params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape),
                              ref_params)  # non-zero norm offsets
    ref = np.asarray(jax.jit(ref_model.apply)({"params": ref_params}, tokens).logits)
    params = keymap.params_from_official(ref_params, cfg)
    logits = jax.jit(model_lib.forward, static_argnums=0)(cfg, params, tokens)
    assert rel_err(logits, ref) <= 1e-4


def test_gemma2_without_local_layers_round_trips_config():
  from genrm_jax import config  # pylint: disable=g-import-not-at-top
  cfg = config.bench_10m(family="gemma2", use_post_attn_norm=True, use_post_ffw_norm=True,
                         query_pre_attn_scalar=64)
  hf = keymap.config_to_hf(cfg, "float32")
  assert hf["layer_types"] == ["full_attention"] * cfg.num_layers and hf["sliding_window"]
  transformers.Gemma2Config(**hf)  # accepted as is
  assert keymap.config_from_hf(hf) == cfg
