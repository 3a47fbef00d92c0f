"""LoRA and QLoRA (genrm_jax.lora and the trainer's LoRA option) on tiny random Gemma 2 and 3.

References: the base model's own logits (adapters at initialisation), base + scale * B A computed
in numpy on transformers' weight layout, and ``peft`` applying the exported adapter to the
exported base in torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import math
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrm_jax import checkpoint, config, lora, model, objectives, optim
from genrm_jax import sharding, step, synthetic, train
from genrm_jax.convert import export_hf, keymap

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = dict(vocab_size=48, num_layers=2, embed_dim=32, hidden_dim=64, num_heads=2,
             num_kv_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window_size=4)
FAMILIES = {"gemma2": config.gemma2_2b(**SMALL),
            # One whole 5:1 pattern and one more local layer.
            "gemma3": config.tiny_gemma3(vocab_size=48, num_layers=7)}
LC = config.LoraConfig(rank=4, alpha=8.0)


def _mesh1():
  return sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def _tokens(cfg, b=2, t=12, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (b, t)))


def _trained(adapters, seed=3):
  """Adapters moved away from B = 0, as training moves them."""
  leaves, tree = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("scan", [False, True])
def test_adapters_at_initialisation_give_the_base_logits_exactly(family, scan):
  cfg = FAMILIES[family].replace(scan_layers=scan)
  params = model.init_params(cfg, jax.random.key(0))
  adapters = lora.init_adapters(cfg, LC, jax.random.key(1))
  assert all(np.any(a) for p, a in jax.tree_util.tree_leaves_with_path(adapters)
             if str(p[-1].key).endswith("_a"))
  tok = _tokens(cfg)
  base = model.forward(cfg, params, tok)
  np.testing.assert_array_equal(model.forward(cfg, model.Adapted(params, adapters, None, LC), tok),
                                base)
  # Trained adapters change the function, and the merge computes the same one.
  moved = _trained(adapters)
  adapted = model.forward(cfg, model.Adapted(params, moved, None, LC), tok)
  assert float(jnp.max(jnp.abs(adapted - base))) > 1e-2
  np.testing.assert_allclose(model.forward(cfg, lora.merge(cfg, LC, params, moved), tok), adapted,
                             rtol=1e-4, atol=1e-4)


def test_adapters_cover_the_targets_with_their_base_weights_axes():
  cfg = FAMILIES["gemma3"]
  lc = dataclasses.replace(LC, targets=("q_proj", "down_proj"))
  shapes = jax.tree.map(lambda x: x.shape, lora.abstract_adapters(cfg, lc))
  d, n, h, f = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.hidden_dim
  assert shapes["layer_0"] == {"attn": {"q_proj_a": (d, 4), "q_proj_b": (4, n, h)},
                               "mlp": {"down_proj_a": (f, 4), "down_proj_b": (4, d)}}
  assert lora.count(cfg, lc) == cfg.num_layers * (d * 4 + 4 * n * h + f * 4 + 4 * d)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_merge_is_base_plus_scale_b_a_in_the_transformers_layout(family):
  """The merged weights, read through the HF key map, against numpy's W + alpha/r * B @ A of the
  PEFT tensors: two independent routes through the layouts."""
  cfg = FAMILIES[family]
  params = model.init_params(cfg, jax.random.key(0))
  adapters = _trained(lora.init_adapters(cfg, LC, jax.random.key(1)))
  base = dict(keymap.hf_tensors(cfg, params))
  merged = dict(keymap.hf_tensors(cfg, lora.merge(cfg, LC, params, adapters)))
  peft = dict(lora.peft_tensors(cfg, adapters))
  assert len(peft) == 2 * 7 * cfg.num_layers
  for name, w in base.items():
    module = "base_model.model." + name.removesuffix(".weight")
    if f"{module}.lora_A.weight" not in peft:
      np.testing.assert_array_equal(merged[name], w)
      continue
    a, b = (np.asarray(peft[f"{module}.lora_{x}.weight"], np.float64) for x in "AB")
    np.testing.assert_allclose(merged[name], w + LC.scale * b @ a, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory):
  """Per family: a base model directory and a LoRA model directory of trained adapters."""
  out = {}
  for family, cfg in FAMILIES.items():
    d = tmp_path_factory.mktemp(family)
    params = model.init_params(cfg, jax.random.key(0))
    base = str(d / "base")
    checkpoint.save_model_dir(base, cfg, params)
    adapters = _trained(lora.init_adapters(cfg, LC, jax.random.key(1)))
    adapted = str(d / "lora")
    checkpoint.save_model_dir(adapted, cfg, adapters, lora=(LC, checkpoint.base_record(base)))
    out[family] = (cfg, params, adapters, base, adapted)
  return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_peft_adapter_on_the_exported_base_gives_the_merged_logits(family, lora_dirs, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  cfg, params, adapters, base, adapted = lora_dirs[family]
  export_hf.main(["--checkpoint", base, "--out", str(tmp_path / "hf_base")])
  export_hf.main(["--checkpoint", adapted, "--out", str(tmp_path / "adapter"), "--peft",
                  "--base_model", str(tmp_path / "hf_base")])
  export_hf.main(["--checkpoint", adapted, "--out", str(tmp_path / "merged")])
  adapter_cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert (adapter_cfg["r"], adapter_cfg["lora_alpha"]) == (LC.rank, LC.alpha)
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf_base",
                                                         attn_implementation="eager")
  with_adapter = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
  merged_hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged",
                                                                attn_implementation="eager")
  tok = _tokens(cfg)
  with torch.no_grad():
    got = with_adapter(input_ids=torch.tensor(np.asarray(tok))).logits.numpy()
    got_merged = merged_hf(input_ids=torch.tensor(np.asarray(tok))).logits.numpy()
  want = np.asarray(model.forward(cfg, checkpoint.load_model_dir(adapted)[1], tok))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got_merged, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      want, model.forward(cfg, model.Adapted(params, adapters, None, LC), tok), rtol=1e-4,
      atol=1e-4)


def test_a_changed_or_missing_base_is_one_error_naming_it(lora_dirs, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  cfg, params, _, base, adapted = lora_dirs["gemma3"]
  copy_base, copy = str(tmp_path / "base"), str(tmp_path / "lora")
  shutil.copytree(base, copy_base)
  checkpoint.save_model_dir(copy, cfg, lora.init_adapters(cfg, LC, jax.random.key(1)),
                            lora=(LC, checkpoint.base_record(copy_base)))
  checkpoint.save_model_dir(copy_base, cfg, jax.tree.map(lambda x: x * 2, params),
                            overwrite=True)
  with pytest.raises(ValueError, match=f"its base model directory {copy_base} has changed"):
    checkpoint.load_model_dir(copy)
  shutil.rmtree(copy_base)
  r = subprocess.run([sys.executable, "-m", "genrm_jax.convert.export_hf", "--checkpoint", copy,
                      "--out", str(tmp_path / "hf")], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 2 and not (tmp_path / "hf").exists()
  assert r.stderr.strip().splitlines() == [
      f"error: LoRA model directory {copy}: its base model directory {copy_base} is missing "
      "(genrm_model.json lora.base.path)"], r.stderr


def _setup(cfg, kind, lc, mesh):
  return step.make_setup(cfg, objectives.ObjectiveConfig(kind),
                         optim.OptimConfig(peak_lr=1e-2, warmup_steps=1, decay_steps=10), mesh, lc)


@pytest.mark.parametrize("kind,quant", [("lm", "none"), ("disc", "none"), ("dpo", "int8"),
                                        ("lm", "nf4")])
def test_a_lora_step_trains_the_adapters_alone(kind, quant):
  """The state and the optimizer hold the adapters (and the classifier's head) only; the base,
  passed beside the state (quantized for QLoRA), comes out of the steps bit for bit."""
  cfg = FAMILIES["gemma3"]
  lc = dataclasses.replace(LC, dropout=0.1, base_quantization=quant, quantization_block=16)
  setup = _setup(cfg, kind, lc, _mesh1())
  base = lora.quantize_base(model.init_params(cfg, jax.random.key(0)), lc)
  kept = jax.tree.map(np.asarray, base)
  state = step.init_state(setup, lora.init_adapters(cfg, lc, jax.random.key(1), setup.mesh))
  trained = {"model"} | ({"head"} if kind == "disc" else set())
  assert set(state.params) == trained and state.ref_params is None
  n_trained = len(jax.tree.leaves(state.params))
  # AdamW: two moments a trained leaf, plus step counters.
  assert n_trained * 2 <= len(jax.tree.leaves(state.opt_state)) <= n_trained * 2 + 4
  if quant != "none":
    w = base["layer_0"]["attn"]["q_einsum"]["w"]
    assert w.qvalue.dtype == {"int8": jnp.int8, "nf4": jnp.uint4}[quant]
  before = jax.tree.map(np.asarray, state.params)
  train_step = step.make_train_step(setup)
  batch = synthetic.make_batch(0, batch_size=4, seq_len=24, objective=kind,
                               vocab_size=cfg.vocab_size)
  for _ in range(3):
    state, metrics = train_step(state, batch, base)
    assert np.isfinite(float(metrics["loss"]))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, base), kept)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), state.params, before)
  assert all(jax.tree.leaves(changed["model"]))


def _compiled_flops(cfg, lc):
  setup = _setup(cfg, "lm", lc, _mesh1())
  batch = setup.objective.abstract_batch(4, 64, setup.batch_shardings)
  frozen = (setup.abstract_frozen,) if lc.enabled else ()
  compiled = step.make_train_step(setup).lower(setup.abstract_state, batch, *frozen).compile()
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def test_the_frozen_base_gets_no_weight_gradient():
  """XLA's FLOP count of the compiled step: LoRA's is the forward and input gradients, about
  two thirds of full fine-tuning's (attention's dots and the optimizer's elementwise work are
  alike in both); the base's weight gradients would make it full fine-tuning's and more."""
  cfg = config.tiny(vocab_size=64, num_layers=2, embed_dim=128, hidden_dim=512)
  full, adapted = _compiled_flops(cfg, config.LoraConfig()), _compiled_flops(cfg, LC)
  assert adapted < 0.75 * full, (adapted, full)


def test_adapters_are_sharded_like_their_base_weights_and_train_alike():
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices")
  cfg = FAMILIES["gemma3"].replace(num_heads=4, num_kv_heads=2)
  mesh = sharding.make_mesh(2, 2, 2, devices=jax.devices()[:8])
  shard = lora.adapter_shardings(cfg, LC, mesh)["layer_0"]
  base = model.param_shardings(cfg, mesh)["layer_0"]
  # q: [D, r] and [r, N, H]: embed on fsdp as the base's D, heads on tensor as the base's N.
  assert tuple(base["attn"]["q_einsum"]["w"].spec) == ("tensor", "fsdp", None)
  assert tuple(shard["attn"]["q_proj_a"].spec) == ("fsdp", None)
  assert tuple(shard["attn"]["q_proj_b"].spec) == (None, "tensor", None)
  assert tuple(base["mlp"]["linear"].spec) == ("tensor", "fsdp")
  assert tuple(shard["mlp"]["down_proj_a"].spec) == ("tensor", None)  # hidden, as the base's F
  assert tuple(shard["mlp"]["down_proj_b"].spec) == (None, "fsdp")
  batch = synthetic.make_batch(0, batch_size=8, seq_len=16, objective="lm",
                               vocab_size=cfg.vocab_size)
  losses = []
  for m in (_mesh1(), mesh):
    setup = _setup(cfg, "lm", LC, m)
    base_params = model.init_params(cfg, jax.random.key(0), m)
    state = step.init_state(setup, lora.init_adapters(cfg, LC, jax.random.key(1), m))
    train_step = step.make_train_step(setup)
    run = []
    for _ in range(3):
      state, metrics = train_step(state, batch, base_params)
      run.append(float(metrics["loss"]))
    losses.append(run)
  leaf = state.params["model"]["layer_0"]["attn"]["q_proj_b"]
  assert len(leaf.sharding.device_set) == 8
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_a_quantized_base_is_sharded_scales_included(quant):
  """QLoRA's values shard as their weights, and so do the scales, even where a weight's sharded
  axis has fewer blocks than devices (the embedding's 128 inputs are 2 blocks of 64 here)."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices")
  cfg = config.tiny()
  lc = dataclasses.replace(LC, base_quantization=quant, quantization_block=64)
  mesh = sharding.make_mesh(1, 8, 1, devices=jax.devices()[:8])
  frozen = jax.jit(lambda p: lora.quantize_base(p, lc),
                   out_shardings=lora.frozen_shardings(cfg, lc, mesh))(
                       model.init_params(cfg, jax.random.key(0), mesh))
  quantized = [x for x in jax.tree.leaves(frozen, is_leaf=lambda x: hasattr(x, "qvalue"))
               if hasattr(x, "qvalue")]
  assert len(quantized) == cfg.num_layers * 5  # q, k/v (stacked), output, gate/up, down
  for q in quantized:
    for leaf in jax.tree.leaves(q):
      assert len(leaf.sharding.device_set) == 8
      shard = leaf.sharding.shard_shape(leaf.shape)
      assert math.prod(shard) * 8 == math.prod(leaf.shape), (leaf.shape, leaf.sharding.spec)


# ----------------------------------------------------------------------------- the trainer


def _exp(base_dir, steps=6, **lora_kw):
  cfg = FAMILIES["gemma3"]
  return train.Experiment(
      model=cfg, train=train.TrainConfig(batch_size=4, num_steps=steps, log_every=2,
                                         checkpoint_every=2, tensorboard=False,
                                         init_from=f"genrm:{base_dir}"),
      data=train.DataConfig(name="synthetic", seq_len=16),
      optim=optim.OptimConfig(peak_lr=1e-2, warmup_steps=1, decay_steps=steps),
      objective=objectives.ObjectiveConfig("lm"),
      lora=dataclasses.replace(LC, **lora_kw))


def test_a_lora_run_writes_adapters_that_load_merged(lora_dirs, tmp_path):
  cfg, params, _, base, _ = lora_dirs["gemma3"]
  exp = _exp(base, dropout=0.1)
  # Scanned and rematerialised as gemma3_270m.gin runs the real model; the base is neither.
  exp = dataclasses.replace(exp, model=exp.model.replace(scan_layers=True, remat_policy="full"))
  result = train.run(exp, str(tmp_path / "run"), mesh=_mesh1())
  out = pathlib.Path(result.model_dir)
  assert (out / "adapters").is_dir() and not (out / "params").exists()
  meta = checkpoint.read_meta(str(out))
  assert meta["lora"]["base"] == checkpoint.base_record(base)
  assert config.LoraConfig.from_dict(meta["lora"]["config"]) == exp.lora
  # A checkpoint holds the adapters and their optimizer state, nothing of the base.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  saved = ocp.PyTreeCheckpointer().restore(tmp_path / "run" / "checkpoints" / "6" / "state")
  names = {str(p[-1].key) for p, _ in jax.tree_util.tree_leaves_with_path(saved["params"])}
  assert names == {f"{t}_{x}" for t in exp.lora.targets for x in "ab"}
  assert saved["ref_params"] is None
  moments = {str(p[-1].key) for p, x in jax.tree_util.tree_leaves_with_path(saved["opt_state"])
             if np.ndim(x)}
  assert moments == names
  def unscanned(model_dir):
    loaded_cfg, loaded, _ = checkpoint.load_model_dir(model_dir)
    return model.unscan_params(loaded, loaded_cfg)

  want = lora.merge(cfg, exp.lora, params,
                    model.unscan_params(result.state.params["model"], exp.model))
  jax.tree.map(np.testing.assert_array_equal, unscanned(str(out)), want)
  # As init_from, the directory starts a run from the merged weights.
  again = dataclasses.replace(exp, train=dataclasses.replace(
      exp.train, num_steps=0, init_from=f"genrm:{out}"), lora=config.LoraConfig())
  jax.tree.map(np.testing.assert_array_equal,
               unscanned(train.run(again, str(tmp_path / "full"), mesh=_mesh1()).model_dir), want)


def test_a_lora_model_directory_scores_through_eval_and_serve(tmp_path):
  """``eval`` and the server's scorer take a LoRA model directory as they take any: its scores
  are those of the merged model."""
  from genrm_jax import candidates as cands  # pylint: disable=g-import-not-at-top
  from genrm_jax import eval as eval_cli  # pylint: disable=g-import-not-at-top
  from genrm_jax import scoring  # pylint: disable=g-import-not-at-top
  from genrm_jax.serve import batcher, server  # pylint: disable=g-import-not-at-top
  from genrm_jax import task_rules, word_puzzles  # pylint: disable=g-import-not-at-top
  from genrm_jax import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  vocab = vocab_lib.train_char_vocab(word_puzzles.texts_for_vocab("last_letters", count=5),
                                     str(tmp_path / "v.model"))
  cfg = FAMILIES["gemma3"].replace(vocab_size=vocab.vocab_size)
  params = model.init_params(cfg, jax.random.key(0))
  base = checkpoint.save_model_dir(str(tmp_path / "base"), cfg, params,
                                   tokenizer_path=vocab.path)
  adapters = _trained(lora.init_adapters(cfg, LC, jax.random.key(1)))
  adapted = checkpoint.save_model_dir(str(tmp_path / "lora"), cfg, adapters,
                                      tokenizer_path=vocab.path,
                                      lora=(LC, checkpoint.base_record(base)))
  recs = word_puzzles.candidates("last_letters", "test", problems_per_length=2,
                                samples_per_problem=2, seed=1)
  for r in recs:
    r["extracted_answer"] = task_rules.get_task("last_letters").extract(r["solution"])
    del r["rationale"]
  src = str(tmp_path / "c.jsonl")
  pools = cands.write_candidates(src, recs, require_gold=True)
  eval_cli.main(["--task", "last_letters", "--candidates", src, "--out", str(tmp_path / "eval"),
                 "--verifier", f"gen={adapted}:direct"])
  saved = [json.loads(line)["scores"]["gen"] for line in open(tmp_path / "eval" / "scores.jsonl")]
  items = [(c["question"], c["solution"]) for p in pools for c in p.candidates]
  opts = config.ScoringConfig(instruction=word_puzzles.INSTRUCTIONS["last_letters"])
  want = scoring.score("genrm", cfg, lora.merge(cfg, LC, params, adapters), vocab,
                       [q for q, _ in items], [s for _, s in items], opts).scores
  np.testing.assert_allclose(saved, want, rtol=1e-5)
  scorer = server.ModelScorer(server.ServeConfig(model=adapted, task="last_letters"))
  served, _ = scorer.score(batcher.Kind("genrm", 1), items)
  np.testing.assert_allclose([e["score"] for e in served], want, rtol=1e-5)


# ----------------------------------------------------------------------------- the command line


def _cli(workdir, base_dir, *bindings, steps=24):
  return [sys.executable, "-m", "genrm_jax.train", "--gin_file=synthetic.gin",
          f"--workdir={workdir}",
          *[f"--gin_bindings={b}" for b in (
              "model_config.preset = 'tiny_gemma3'", "model_config.vocab_size = 48",
              "model_config.num_layers = 7", "DataConfig.seq_len = 16",
              "TrainConfig.batch_size = 4", f"TrainConfig.num_steps = {steps}",
              "TrainConfig.checkpoint_every = 8", "TrainConfig.log_every = 1",
              "TrainConfig.tensorboard = False", f"TrainConfig.init_from = 'genrm:{base_dir}'",
              "OptimConfig.peak_lr = 1e-2", "OptimConfig.warmup_steps = 2",
              f"OptimConfig.decay_steps = {steps}", "LoraConfig.rank = 4",
              "LoraConfig.alpha = 8.0", "LoraConfig.dropout = 0.1", *bindings)]]


def _env(tmp_path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "xla_cache")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def test_a_killed_lora_run_resumes_to_the_same_adapters(lora_dirs, tmp_path):
  base = lora_dirs["gemma3"][3]
  env = _env(tmp_path)
  ref = subprocess.run(_cli(tmp_path / "ref", base), cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert ref.returncode == 0, ref.stderr[-3000:]
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_cli(killed, base), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    for _ in proc.stdout:
      if (killed / "checkpoints" / "8").is_dir():
        proc.send_signal(signal.SIGKILL)
        break
    proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL and not (killed / "model").exists()
  again = subprocess.run(_cli(killed, base), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "step 1/" not in again.stdout
  want = checkpoint.load_adapters(str(tmp_path / "ref" / "model"))[1]
  jax.tree.map(np.testing.assert_array_equal,
               checkpoint.load_adapters(str(killed / "model"))[1], want)


@pytest.mark.parametrize("binding,message", [
    ("LoraConfig.rank = 0", "error: LoraConfig.rank = 0: must be >= 1 (None: full fine-tuning)"),
    ("LoraConfig.targets = ('q_proj', 'w_proj')",
     "error: LoraConfig.targets: 'w_proj' matches no weight of a Gemma layer; expected names "
     "among ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')"),
    ("TrainConfig.init_from = 'genrm:/no/such/base'",
     "error: init_from genrm:/no/such/base: neither a model directory nor a run workdir with "
     "model/genrm_model.json"),
])
def test_bad_lora_settings_are_one_error_line_and_write_nothing(lora_dirs, tmp_path, binding,
                                                                message):
  workdir = tmp_path / "run"
  r = subprocess.run(_cli(workdir, lora_dirs["gemma3"][3], binding), cwd=ROOT,
                     env=_env(tmp_path), capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [message], r.stderr
  assert not workdir.exists()


def test_a_lora_run_refuses_a_changed_base_on_resume(lora_dirs, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  cfg, params, _, base, _ = lora_dirs["gemma3"]
  copy = str(tmp_path / "base")
  shutil.copytree(base, copy)
  exp = _exp(copy, steps=2)
  train.run(exp, str(tmp_path / "run"), mesh=_mesh1())
  checkpoint.save_model_dir(copy, cfg, jax.tree.map(lambda x: -x, params), overwrite=True)
  more = dataclasses.replace(exp, train=dataclasses.replace(exp.train, num_steps=4))
  with pytest.raises(ValueError, match=f"LoRA base model directory {copy} has changed since "
                     "workdir checkpoint .*refusing to resume on another base"):
    train.run(more, str(tmp_path / "run"), mesh=_mesh1())
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["2"]
