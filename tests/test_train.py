"""The trainer end to end on a micro Gemma and the synthetic copy task (genrm_jax.synthetic)."""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import pathlib
import re
import signal
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

from genrm_jax import checkpoint, cli, config, objectives, optim, sharding, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
MICRO = dict(vocab_size=32, num_layers=2, embed_dim=32, hidden_dim=64, num_heads=2, head_dim=16)


def _exp(kind: str = "lm", steps: int = 30, lr: float = 1e-2, seq_len: int = 32,
         **train_kw) -> train.Experiment:
  tc = dict(batch_size=8, num_steps=steps, log_every=10, checkpoint_every=steps,
            tensorboard=False)
  tc.update(train_kw)
  return train.Experiment(
      model=config.tiny(**MICRO), train=train.TrainConfig(**tc),
      data=train.DataConfig(name="synthetic", seq_len=seq_len),
      optim=optim.OptimConfig(peak_lr=lr, warmup_steps=2, decay_steps=max(steps, 3)),
      objective=objectives.ObjectiveConfig(kind=kind))


def _one_device_mesh():
  return sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def _mean(history, key, sl):
  return float(np.mean([h[key] for h in history[sl]]))


def test_lm_loss_falls_on_a_tiny_mixture_and_writes_model_dir(tmp_path):
  """GenRM (verify + lambda * SFT) on the generated last-letter mixture, char vocabulary."""
  from genrm_jax import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  vocab = vocab_lib.train_char_vocab(["abcdefghijklmnopqrstuvwxyz"], str(tmp_path / "v.model"))
  exp = _exp("lm", steps=20, lr=3e-3, seq_len=512, tensorboard=True, log_every=5)
  exp = dataclasses.replace(
      exp, model=exp.model.replace(num_layers=1, vocab_size=vocab.sp.get_piece_size()),
      data=train.DataConfig(name="last_letters_genrm", seq_len=512, vocab_path=vocab.path))
  result = train.run(exp, str(tmp_path / "run"), mesh=_one_device_mesh())
  h = result.history
  assert len(h) == 20 and not result.preempted
  assert _mean(h, "loss", slice(-4, None)) < 0.9 * _mean(h, "loss", slice(0, 4)), [
      round(x["loss"], 3) for x in h]
  assert h[0]["lr"] == 0.0 and h[2]["lr"] == pytest.approx(3e-3, rel=1e-5)
  assert any(np.isfinite(x["accuracy"]) for x in h)  # the mixture has verdict tokens
  cfg, params, meta = checkpoint.load_model_dir(result.model_dir)
  assert cfg == exp.model and meta["objective"] == "lm"
  assert meta["train"] == {"steps": 20, "data": "last_letters_genrm", "task": "last_letters"}
  assert checkpoint.tokenizer_path(result.model_dir)
  np.testing.assert_array_equal(params["final_norm"]["scale"],
                                result.state.params["model"]["final_norm"]["scale"])
  assert glob.glob(str(tmp_path / "run" / "tensorboard" / "events.out.tfevents.*"))


@pytest.mark.parametrize("kind", ["disc", "dpo"])
def test_baseline_objectives_train(tmp_path, kind):
  steps = 40
  result = train.run(_exp(kind, steps=steps, lr=3e-3), str(tmp_path), mesh=_one_device_mesh())
  h = result.history
  assert _mean(h, "loss", slice(-8, None)) < 0.85 * _mean(h, "loss", slice(0, 4)), [
      round(x["loss"], 3) for x in h]
  meta = checkpoint.read_meta(result.model_dir)
  assert meta["objective"] == kind
  if kind == "disc":
    head = objectives.head_from_json(meta["disc_head"])
    np.testing.assert_array_equal(head["w"], result.state.params["head"]["w"])
  else:
    assert _mean(h, "accuracy", slice(-8, None)) > 0.7


def test_sharded_run_matches_single_device(tmp_path):
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices")
  steps = 4
  single = train.run(_exp("lm", steps=steps, lr=1e-3), str(tmp_path / "one"),
                     mesh=_one_device_mesh())
  mesh = sharding.make_mesh(2, 2, 2, devices=jax.devices()[:8])
  sharded = train.run(_exp("lm", steps=steps, lr=1e-3, grad_accum=2), str(tmp_path / "eight"),
                      mesh=mesh)
  leaf = jax.tree.leaves(sharded.state.params)[0]
  assert len(leaf.sharding.device_set) == 8
  np.testing.assert_allclose([h["loss"] for h in sharded.history],
                             [h["loss"] for h in single.history], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-4, atol=1e-5),
               sharded.state.params, single.state.params)


@pytest.mark.parametrize("kind", ["genrm", "hf", "gemma"])
def test_starting_points_load_the_given_parameters(tmp_path, kind):
  """A 0-step run from each kind of starting point writes back exactly the parameters it read."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from genrm_jax import model  # pylint: disable=g-import-not-at-top
  from genrm_jax.convert import export_hf  # pylint: disable=g-import-not-at-top
  exp = _exp("lm", steps=0)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32),
                        sharding.unbox(model.abstract_params(exp.model)))
  src = str(tmp_path / "src")
  if kind == "genrm":
    checkpoint.save_model_dir(src, exp.model, params)
  elif kind == "hf":
    export_hf.write_hf_dir(exp.model, params, src)
  else:
    ocp.PyTreeCheckpointer().save(src, {"transformer": params})
  exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, init_from=f"{kind}:{src}"))
  result = train.run(exp, str(tmp_path / "run"), mesh=_one_device_mesh())
  _, got, _ = checkpoint.load_model_dir(result.model_dir)
  jax.tree.map(np.testing.assert_array_equal, got, params)


@pytest.mark.parametrize("scan", [False, True])
def test_added_layers_start_as_identity_and_then_learn(tmp_path, scan):
  """A verifier deeper than its source model computes the source's logits at step 0, and the new
  layers' output projections (zero at first) move once it trains."""
  from genrm_jax import model  # pylint: disable=g-import-not-at-top
  exp = _exp("lm", steps=0)
  src_cfg = exp.model.replace(scan_layers=scan)
  params = model.init_params(src_cfg, jax.random.key(3))
  src = str(tmp_path / "src")
  checkpoint.save_model_dir(src, src_cfg, params)
  deep = dataclasses.replace(
      exp, model=src_cfg.replace(num_layers=src_cfg.num_layers + 2),
      train=dataclasses.replace(exp.train, init_from=f"genrm:{src}", add_layers=2))
  got, _ = train.initial_model_params(deep, None)
  tokens = np.random.default_rng(0).integers(0, src_cfg.vocab_size, (2, 12))
  np.testing.assert_allclose(model.forward(deep.model, got, tokens),
                             model.forward(src_cfg, params, tokens), rtol=1e-5, atol=1e-5)
  layers = model.unscan_params(got, deep.model)
  assert not np.any(layers["layer_3"]["attn"]["attn_vec_einsum"]["w"])
  assert np.any(layers["layer_3"]["attn"]["q_einsum"]["w"])  # fresh, not copied or zero

  deep = dataclasses.replace(deep, train=dataclasses.replace(deep.train, num_steps=3,
                                                              checkpoint_every=3))
  result = train.run(deep, str(tmp_path / "run"), mesh=_one_device_mesh())
  _, trained, _ = checkpoint.load_model_dir(result.model_dir)
  assert np.any(trained["layer_3"]["mlp"]["linear"])
  with pytest.raises(ValueError, match="add_layers=2: needs a starting point"):
    train.initial_model_params(dataclasses.replace(
        deep, train=dataclasses.replace(deep.train, init_from="scratch")), None)


def _one_layer(exp: train.Experiment) -> train.Experiment:
  return dataclasses.replace(exp, model=exp.model.replace(num_layers=1))


@pytest.mark.parametrize("checkpoint_every", [1, 2])
def test_nan_loss_stops_and_names_the_checkpoint(tmp_path, checkpoint_every):
  """Metrics are fetched one step late, yet the error names the first non-finite step and no
  checkpoint of that step or later exists: a checkpoint waits for its own step's loss."""
  exp = _one_layer(_exp("lm", steps=20, lr=1e12, checkpoint_every=checkpoint_every))
  with pytest.raises(train.TrainingDivergedError,
                     match=r"loss is (nan|inf) at step \d+; the last good checkpoint is step \d+"
                     ) as err:
    train.run(exp, str(tmp_path), mesh=_one_device_mesh())
  bad, good = (int(x) for x in re.findall(r"step (\d+)", str(err.value)))
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert good == saved[-1] == (bad - 1) // checkpoint_every * checkpoint_every
  assert not (tmp_path / "model").exists()


def test_workdir_of_another_model_refuses_to_resume(tmp_path):
  train.run(_one_layer(_exp("lm", steps=1)), str(tmp_path), mesh=_one_device_mesh())
  other = _exp("lm", steps=2)
  with pytest.raises(ValueError, match=r"num_layers: 1 there, 2 here.*refusing to resume"):
    train.run(other, str(tmp_path), mesh=_one_device_mesh())


def test_mesh_that_does_not_divide_fails_before_compiling(tmp_path):
  if jax.device_count() < 8:
    pytest.skip("needs 8 (simulated) devices")
  with pytest.raises(ValueError, match="batch size 6 is not divisible by data x fsdp = 4"):
    train.run(_exp("lm", batch_size=6), str(tmp_path),
              mesh=sharding.make_mesh(2, 2, 2, devices=jax.devices()[:8]))
  with pytest.raises(ValueError, match="num_heads=2 is not divisible by the tensor axis"):
    train.run(_exp("lm"), str(tmp_path),
              mesh=sharding.make_mesh(1, 2, 4, devices=jax.devices()[:8]))


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "gin_configs").glob("*.gin")))
def test_gin_file_parses(name):
  gin.clear_config()
  try:
    cli.parse_gin([name], [])
    exp = train.experiment_from_gin()
    assert isinstance(exp.model, config.ModelConfig)
    assert any(name in gin.config_str()
               for name in ("TrainConfig", "model_config", "DataConfig", "LoraConfig"))
  finally:
    gin.clear_config()


def test_gin_files_compose_to_the_paper_recipe():
  gin.clear_config()
  try:
    cli.parse_gin(["gemma2_9b.gin", "gsm8k_genrm_cot.gin", "paper.gin"],
                  ["INIT_FROM = 'hf:/ckpt/gemma-2-9b'"])
    exp = train.experiment_from_gin()
  finally:
    gin.clear_config()
  # Memory settings (scan, remat) are the planner's choice; the architecture is the preset's.
  assert exp.model.replace(scan_layers=False, remat_policy="none") == config.gemma2_9b(
      dtype="bfloat16", param_dtype="float32")
  assert (exp.data.name, exp.objective.kind, exp.train.init_from) == (
      "gsm8k_genrm_cot", "lm", "hf:/ckpt/gemma-2-9b")
  assert (exp.train.batch_size, exp.train.num_steps) == (64, 300_000)
  assert exp.optim == optim.OptimConfig()


# ----------------------------------------------------------------------------- preemption

_STEPS = 300


def _cli(workdir, *bindings):
  return [sys.executable, "-m", "genrm_jax.train", "--gin_file=tiny.gin",
          "--gin_file=synthetic.gin", f"--workdir={workdir}",
          *[f"--gin_bindings={b}" for b in (
              *(f"model_config.{k} = {v}" for k, v in MICRO.items()),
              "DataConfig.seq_len = 16", "TrainConfig.batch_size = 4",
              f"TrainConfig.num_steps = {_STEPS}", "TrainConfig.checkpoint_every = 50",
              "TrainConfig.log_every = 1", "TrainConfig.tensorboard = False",
              "OptimConfig.peak_lr = 1e-3", "OptimConfig.warmup_steps = 10",
              f"OptimConfig.decay_steps = {_STEPS}", *bindings)]]


def _env(cache_dir):
  env = dict(os.environ)
  # One CPU device; cheaper XLA optimisation and a shared compilation cache keep the five
  # processes below to roughly one compilation.
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def _run_to_end(workdir, env):
  proc = subprocess.run(_cli(workdir), cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _params(workdir):
  return checkpoint.load_model_dir(str(workdir / "model"))[1]


def _start_and_interrupt(workdir, env, ready, sig):
  """Starts a run, sends ``sig`` once ``ready(line)`` holds; returns (returncode, output)."""
  proc = subprocess.Popen(_cli(workdir), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  try:
    for line in proc.stdout:
      lines.append(line)
      if ready(line):
        proc.send_signal(sig)
        break
    out, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc.returncode, "".join(lines) + out


def test_interrupted_runs_resume_to_the_same_parameters(tmp_path):
  env = _env(tmp_path / "xla_cache")
  _run_to_end(tmp_path / "reference", env)
  want = _params(tmp_path / "reference")

  # SIGTERM: a checkpoint at the current step, a clean exit, then a resume to the end.
  term = tmp_path / "sigterm"
  rc, out = _start_and_interrupt(term, env, lambda l: l.startswith("step 20/"), signal.SIGTERM)
  assert rc == 0, out[-3000:]
  assert "stopped by signal" in out and not (term / "model").exists()
  stopped_at = max(int(p.name) for p in (term / "checkpoints").iterdir() if p.name.isdigit())
  assert 20 <= stopped_at < _STEPS
  resumed = _run_to_end(term, env)
  assert f"step {stopped_at + 1}/{_STEPS}" in resumed and "step 1/" not in resumed

  # SIGKILL once a checkpoint is on disk: the resume starts from that checkpoint.
  kill = tmp_path / "sigkill"
  ckpt = kill / "checkpoints" / "100"
  rc, out = _start_and_interrupt(kill, env, lambda l: ckpt.is_dir(), signal.SIGKILL)
  assert rc == -signal.SIGKILL and not (kill / "model").exists()
  _run_to_end(kill, env)

  for got in (_params(term), _params(kill)):
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_a_run_builds_its_optimizer_and_shardings_once(tmp_path, monkeypatch):
  """Init, restore, the step and its shardings share one training setup."""
  from genrm_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  calls = collections.Counter()
  for module, name in ((optim, "optimizer"), (step_lib, "params_shardings")):
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k: (
        calls.update([_name]), _real(*a, **k))[1])
  for steps in (2, 4):  # a fresh run, then one resumed from its checkpoint
    calls.clear()
    train.run(_exp("dpo", steps=steps), str(tmp_path), mesh=_one_device_mesh())
    assert calls == {"optimizer": 1, "params_shardings": 1}, (steps, calls)
