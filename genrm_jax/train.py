"""The GenRM trainer: ``python -m genrm_jax.train --gin_file=... --workdir=DIR``.

Gin binds the typed configs below (``model_config``, ``TrainConfig``, ``DataConfig``,
``OptimConfig``, ``ObjectiveConfig``) at the command line only; the dataclass defaults are the
paper's recipe. The workdir receives ``config.gin`` (the operative config), ``checkpoints/``
(orbax, the last ``keep_checkpoints``), TensorBoard events in ``tensorboard/`` and, at the end,
the model directory ``model/``. A rerun with the same workdir resumes from the newest checkpoint
that restores, data position included; SIGTERM saves a checkpoint and exits with status 0.

``LoraConfig.rank`` trains LoRA adapters on the frozen model directory of ``init_from``
(``genrm_jax.lora``); its checkpoints and ``model/`` hold the adapters only, and name the base.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from typing import Any, Iterator

import gin
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from genrm_jax import checkpoint
from genrm_jax import cli
from genrm_jax import config as config_lib
from genrm_jax import distributed
from genrm_jax import files
from genrm_jax import lora as lora_lib
from genrm_jax import model as model_lib
from genrm_jax import objectives
from genrm_jax import optim
from genrm_jax import records
from genrm_jax import sharding
from genrm_jax import step as step_lib
from genrm_jax import synthetic
from genrm_jax import task_rules
from genrm_jax import train_checkpoints
from genrm_jax import vocab as vocab_lib
from genrm_jax.train_log import Reporter

# Fields of ModelConfig that may change between a checkpoint and its resumption: a train state's
# layout (and its optimizer state's) follows scan_layers.
_RESUMABLE_FIELDS = tuple(f for f in config_lib.RUNTIME_FIELDS if f != "scan_layers")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where batches come from: a seqio task/mixture registered by ``tasks``, or "synthetic"."""

  name: str = "gsm8k_genrm"
  split: str = "train"
  seq_len: int = 1024
  seed: int = 0
  # SentencePiece model for the seqio tasks and the model directory; None: $GENRM_VOCAB, or the
  # starting checkpoint's tokenizer.
  vocab_path: str | None = None
  # How the verifier mixtures are built: lambda, the per-question caps, a policy's candidates.
  mixture: records.MixtureConfig = records.MixtureConfig()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The run: the paper's batch 64 and 300K steps by default."""

  batch_size: int = 64
  num_steps: int = 300_000
  grad_accum: int = 1
  # "scratch", "hf:DIR" (transformers folder), "gemma:DIR" (official Flax checkpoint) or
  # "genrm:DIR" (a genrm-jax model directory, or a run workdir holding model/).
  init_from: str = "scratch"
  # Layers appended on top of the init_from model (ModelConfig.num_layers counts them), each an
  # identity map at first (see append_identity_layers): depth up-scaling, e.g. a verifier deeper
  # than the policy it starts from.
  add_layers: int = 0
  seed: int = 0
  mesh_data: int = -1
  mesh_fsdp: int = 1
  mesh_tensor: int = 1
  checkpoint_every: int = 1_000
  keep_checkpoints: int = 3
  log_every: int = 100
  tensorboard: bool = True
  # Peak FLOP/s of one device for the MFU estimate; None looks the device kind up.
  peak_flops_per_device: float | None = None


@dataclasses.dataclass(frozen=True)
class Experiment:
  model: config_lib.ModelConfig
  train: TrainConfig
  data: DataConfig
  optim: optim.OptimConfig
  objective: objectives.ObjectiveConfig
  lora: config_lib.LoraConfig = config_lib.LoraConfig()


@gin.configurable
def model_config(preset: str = "tiny", **overrides) -> config_lib.ModelConfig:
  """A ModelConfig preset with field overrides, e.g. ``model_config.dtype = 'bfloat16'``."""
  return config_lib.preset(preset, **overrides)


_GIN_CLASSES = {cls: gin.external_configurable(cls, cls.__name__)
                for cls in (TrainConfig, DataConfig, optim.OptimConfig,
                            objectives.ObjectiveConfig, records.MixtureConfig,
                            config_lib.LoraConfig)}


def experiment_from_gin() -> Experiment:
  """The experiment the parsed gin bindings describe (defaults where nothing is bound)."""
  g = _GIN_CLASSES
  data = dataclasses.replace(g[DataConfig](), mixture=g[records.MixtureConfig]())
  return Experiment(model=model_config(), train=g[TrainConfig](), data=data,
                    optim=g[optim.OptimConfig](), objective=g[objectives.ObjectiveConfig](),
                    lora=g[config_lib.LoraConfig]())


class TrainingDivergedError(RuntimeError):
  pass


@dataclasses.dataclass
class RunResult:
  state: step_lib.TrainState
  history: list[dict[str, float]]
  preempted: bool
  model_dir: str | None


# Peak dense bf16 FLOP/s per device, by ``jax.Device.device_kind``.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100-SXM4-80GB": 312e12,
}


# ----------------------------------------------------------------------------- starting points


def _model_dir_of(path: str) -> str:
  if (epath.Path(path) / checkpoint.META_FILE).exists():
    return path
  inner = os.path.join(path, "model")
  if (epath.Path(inner) / checkpoint.META_FILE).exists():
    return inner
  raise FileNotFoundError(f"init_from genrm:{path}: neither a model directory nor a run workdir "
                          f"with model/{checkpoint.META_FILE}")


def _check_compatible(stored: config_lib.ModelConfig, cfg: config_lib.ModelConfig,
                      what: str, hint: str = "") -> None:
  diff = stored.differences(cfg, ignore=_RESUMABLE_FIELDS)
  if diff:
    raise ValueError(f"{what} holds another model config ({diff}){hint}")


# What a block writes into the residual stream (attention output, MLP down projection): with
# these zero, a new block passes its input on unchanged.
_BLOCK_OUTPUTS = ("attn_vec_einsum", "linear")


def append_identity_layers(src_cfg: config_lib.ModelConfig, params: Any,
                           cfg: config_lib.ModelConfig, rng: jax.Array, mesh=None) -> Any:
  """``params`` of ``src_cfg`` with layers appended up to ``cfg.num_layers``: fresh weights whose
  output projections are zero, so the deeper model computes what the source did and training
  starts from there (gradients reach the zero projections first, then the rest of each block)."""
  extra = cfg.num_layers - src_cfg.num_layers
  # Only the blocks of a fresh model are kept: a one-token vocabulary spares the embedding.
  fresh = model_lib.init_params(cfg.replace(num_layers=extra, vocab_size=1, scan_layers=False),
                                rng)

  def silence(path, a):
    return jnp.zeros_like(a) if any(getattr(k, "key", None) in _BLOCK_OUTPUTS for k in path) else a

  out = dict(model_lib.unscan_params(params, src_cfg))
  for j in range(extra):
    out[f"layer_{src_cfg.num_layers + j}"] = jax.tree_util.tree_map_with_path(
        silence, fresh[f"layer_{j}"])
  out = model_lib.scan_params(out, cfg)
  return jax.device_put(out, model_lib.param_shardings(cfg, mesh)) if mesh is not None else out


def lora_base(exp: Experiment, setup: step_lib.TrainSetup) -> tuple[Any, dict[str, str], str | None]:
  """(frozen base as the step takes it, its ``checkpoint.base_record``, its tokenizer path) of
  a LoRA run: the model directory of ``init_from``."""
  kind, _, path = exp.train.init_from.partition(":")
  if kind != "genrm" or not path:
    raise ValueError(f"TrainConfig.init_from = {exp.train.init_from!r}: LoRA (LoraConfig.rank = "
                     f"{exp.lora.rank}) trains adapters on a model directory, 'genrm:DIR'; "
                     "import a checkpoint first (python -m genrm_jax.convert.import_model)")
  if exp.train.add_layers:
    raise ValueError(f"TrainConfig.add_layers = {exp.train.add_layers}: new layers have no "
                     "base weights to adapt; LoRA needs add_layers = 0")
  src = _model_dir_of(path)
  record = checkpoint.base_record(src)
  params, tok = _starting_point(exp, exp.model, setup.mesh)
  with sharding.use_mesh(setup.mesh):
    frozen = jax.jit(lambda p: lora_lib.quantize_base(p, exp.lora),
                     out_shardings=setup.frozen_shardings, donate_argnums=0)(params)
  return frozen, record, tok


def initial_model_params(exp: Experiment, mesh) -> tuple[Any, str | None]:
  """(model params laid out on ``mesh``, tokenizer path of the source if any)."""
  cfg, add = exp.model, exp.train.add_layers
  if not add:
    return _starting_point(exp, cfg, mesh)
  if exp.train.init_from == "scratch" or not 0 < add < cfg.num_layers:
    raise ValueError(f"TrainConfig.add_layers={add}: needs a starting point (init_from) and "
                     f"0 < add_layers < ModelConfig.num_layers={cfg.num_layers}")
  src_cfg = cfg.replace(num_layers=cfg.num_layers - add)
  params, tok = _starting_point(exp, src_cfg, mesh)
  return append_identity_layers(src_cfg, params, cfg, jax.random.key(exp.train.seed), mesh), tok


def _starting_point(exp: Experiment, cfg: config_lib.ModelConfig, mesh) -> tuple[Any, str | None]:
  kind, _, path = exp.train.init_from.partition(":")
  if kind == "scratch":
    return model_lib.init_params(cfg, jax.random.key(exp.train.seed), mesh), None
  if not path:
    raise ValueError(f"TrainConfig.init_from={exp.train.init_from!r} needs a path: {kind}:DIR")
  if kind == "genrm":
    src = _model_dir_of(path)
    stored, params, _ = checkpoint.load_model_dir(
        src, mesh, cfg_overrides={k: getattr(cfg, k) for k in config_lib.RUNTIME_FIELDS})
    _check_compatible(stored.replace(scan_layers=cfg.scan_layers), cfg, f"model directory {src}")
    return params, checkpoint.tokenizer_path(src)
  from genrm_jax.convert import import_model  # pylint: disable=g-import-not-at-top
  if kind == "hf":
    stored, params = import_model.load_hf(path, mesh)
    _check_compatible(stored, cfg.replace(scan_layers=False), f"HF folder {path}")
    tok = os.path.join(path, "tokenizer.model")
    params = model_lib.scan_params(params, cfg)
    return params, tok if os.path.exists(tok) else None
  if kind == "gemma":
    params = model_lib.scan_params(import_model.load_official(path, cfg.replace(scan_layers=False)),
                                   cfg)
    return jax.device_put(params, model_lib.param_shardings(cfg, mesh)), None
  raise ValueError(f"TrainConfig.init_from={exp.train.init_from!r}: expected scratch, hf:DIR, "
                   "gemma:DIR or genrm:DIR")


# ----------------------------------------------------------------------------- data


def batches(exp: Experiment, mesh, start_batch: int, vocab_path: str | None
            ) -> Iterator[dict[str, jax.Array]]:
  """Global batches from ``start_batch`` on; each process reads only its own rows."""
  shard = distributed.batch_shard(mesh, exp.train.batch_size)
  kw = dict(batch_size=exp.train.batch_size, seq_len=exp.data.seq_len,
            objective=exp.objective.kind, seed=exp.data.seed, shard_id=shard.index,
            num_shards=shard.count, start_batch=start_batch, repeat=True)
  if exp.data.name == "synthetic":
    it = synthetic.get_batches(exp.data.name, exp.data.split, vocab_size=exp.model.vocab_size,
                               **kw)
  else:
    import tasks  # pylint: disable=g-import-not-at-top
    from genrm_jax import data  # pylint: disable=g-import-not-at-top
    tasks.register_all(exp.data.mixture)
    it = data.get_batches(exp.data.name, exp.data.split, vocab=vocab_path, **kw)
  objective = objectives.get(exp.objective.kind)
  for local in it:
    objective.check_batch(local)
    yield distributed.global_batch(local, mesh)


# ----------------------------------------------------------------------------- the loop


def make_mesh(train: TrainConfig):
  """The (data, fsdp, tensor) mesh of ``train``; one axis may be -1 for the devices left over."""
  return cli.mesh((train.mesh_data, train.mesh_fsdp, train.mesh_tensor))


def _peak_flops(train: TrainConfig) -> float | None:
  if train.peak_flops_per_device:
    return train.peak_flops_per_device
  return PEAK_FLOPS.get(jax.devices()[0].device_kind)


def run(exp: Experiment, workdir: str, mesh=None, config_gin: str | None = None) -> RunResult:
  """Trains (or resumes) ``exp`` in ``workdir`` up to ``num_steps``; see the module docstring.

  Preconditions (the mesh, a LoRA base, a resumable checkpoint) are checked before anything is
  written; then ``config_gin`` (the configuration, as gin) goes to ``workdir/config.gin``.
  """
  tc, cfg = exp.train, exp.model
  mesh = mesh or make_mesh(tc)
  if tc.batch_size % tc.grad_accum:
    raise ValueError(f"batch_size {tc.batch_size} is not divisible by grad_accum "
                     f"{tc.grad_accum}")
  sharding.check_divides(mesh, batch=tc.batch_size // tc.grad_accum, num_heads=cfg.num_heads,
                         where="micro-batch of TrainConfig.batch_size / grad_accum")
  setup = step_lib.make_setup(cfg, exp.objective, exp.optim, mesh, exp.lora)
  vocab_path = exp.data.vocab_path or os.environ.get("GENRM_VOCAB") or None
  frozen = base = source_vocab = None
  if exp.lora.enabled:
    frozen, base, source_vocab = lora_base(exp, setup)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  mngr = train_checkpoints.manager(workdir, tc.keep_checkpoints)

  def check(meta, where):
    train_checkpoints.check_resumable(meta, exp, where, base, lambda stored: _check_compatible(
        stored, cfg, where, "; refusing to resume: use a new --workdir or the old config"))

  restored = train_checkpoints.restore_newest(
      mngr, workdir, setup.abstract_state, check,
      log=lambda text: print(text, flush=True) if distributed.is_main() else None)
  if restored is not None:
    state, meta = restored
    vocab_path = vocab_path or meta.get("vocab_path")
  else:
    if exp.lora.enabled:
      params = lora_lib.init_adapters(cfg, exp.lora, jax.random.key(tc.seed), mesh)
    else:
      params, source_vocab = initial_model_params(exp, mesh)
    vocab_path = vocab_path or source_vocab
    state = step_lib.init_state(setup, params)
    del params
  if vocab_path and exp.data.name != "synthetic":
    # Ids past the embedding would turn into NaN losses deep inside the step; say so up front.
    vocab_lib.check_fits(cfg.vocab_size, vocab_path, "model_config", max_padding=None)
  if config_gin is not None and distributed.is_main():
    files.write_atomic(os.path.join(workdir, "config.gin"), config_gin)
  start = int(state.step)
  step_fn = step_lib.make_train_step(setup, tc.grad_accum, seed=tc.seed)
  frozen_arg = () if frozen is None else (frozen,)
  train_step = lambda state, batch: step_fn(state, batch, *frozen_arg)  # noqa: E731
  ckpt_meta = train_checkpoints.run_meta(exp, vocab_path, base)

  def save() -> None:
    # The vocabulary is remembered so that a resumed run's model directory gets the tokenizer
    # of the checkpoint it started from.
    train_checkpoints.save(mngr, state, {**ckpt_meta, "batches_consumed": int(state.step)})

  stop = {"signal": None}
  # Signal handlers can only be installed from the main thread; elsewhere SIGTERM is left alone.
  in_main = threading.current_thread() is threading.main_thread()
  previous = (signal.signal(signal.SIGTERM, lambda sig, _: stop.update(signal=sig))
              if in_main else None)
  rows = tc.batch_size * setup.objective.sequences_per_row
  flops = (objectives.flops_per_example(exp.objective, cfg, exp.data.seq_len) * tc.batch_size
           * lora_lib.flops_fraction(exp.lora))
  peak = _peak_flops(tc)
  reporter = Reporter(workdir if tc.tensorboard else None, start, tc.num_steps, tc.log_every,
                      tokens_per_step=rows * exp.data.seq_len, flops_per_step=flops,
                      peak_flops=peak * mesh.size if peak else None,
                      main=distributed.is_main())
  history: list[dict[str, float]] = []

  def settle(step: int, metrics: dict[str, jax.Array]) -> None:
    """Fetches one step's metrics (the host waits for that step here) and checks its loss."""
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not np.isfinite(m["loss"]):
      mngr.wait_until_finished()
      good = mngr.latest_step()
      where = (f"the last good checkpoint is step {good} in {mngr.directory}" if good is not None
               else "no checkpoint was saved yet")
      raise TrainingDivergedError(f"loss is {m['loss']} at step {step}; {where}")
    history.append(m)
    reporter.step(step, m)

  try:
    it = batches(exp, mesh, start, vocab_path) if start < tc.num_steps else iter(())
    # Metrics are fetched one step late: step s+1 is dispatched before the host waits for step
    # s, so the device never idles on the host. The step counter is counted here, not read back.
    pending: tuple[int, dict[str, jax.Array]] | None = None
    step = start
    while step < tc.num_steps and stop["signal"] is None:
      state, metrics = train_step(state, next(it))
      step += 1
      if pending is not None:
        settle(*pending)
      pending = (step, metrics)
      if step % tc.checkpoint_every == 0 or step == tc.num_steps or stop["signal"] is not None:
        # A checkpoint is written only once its own step's loss has been checked.
        settle(*pending)
        pending = None
        save()
    if pending is not None:  # a signal came after this step's checkpoint test
      settle(*pending)
      save()
    mngr.wait_until_finished()
  finally:
    if in_main:
      signal.signal(signal.SIGTERM, previous)
    reporter.close()
  if stop["signal"] is not None:
    reporter.line(f"stopped by signal {stop['signal']} at step {int(state.step)}; "
                  f"checkpoint saved in {mngr.directory}")
    mngr.close()
    return RunResult(state, history, True, None)
  mngr.close()
  model_dir = write_model_dir(exp, state, os.path.join(workdir, "model"), vocab_path, base)
  return RunResult(state, history, False, model_dir)


def write_model_dir(exp: Experiment, state: step_lib.TrainState, out: str,
                    vocab_path: str | None, base: dict[str, str] | None = None) -> str:
  """``model/``: the trained model, or with LoRA its adapters and ``base``
  (``checkpoint.base_record``)."""
  trained = {"steps": int(state.step), "data": exp.data.name}
  mixture = exp.data.mixture
  task = task_rules.trained_task(
      exp.data.name, mixture.candidates_task if mixture.candidates_file else None)
  if task:
    trained["task"] = task
  extra: dict[str, Any] = {"objective": exp.objective.kind, "train": trained,
                           **objectives.get(exp.objective.kind).model_dir_meta(state.params)}
  return checkpoint.save_model_dir(out, exp.model, state.params["model"],
                                   tokenizer_path=vocab_path, extra=extra, overwrite=True,
                                   lora=(exp.lora, base) if exp.lora.enabled else None)


# ----------------------------------------------------------------------------- CLI


def launch(exp: Experiment, workdir: str, config_gin: str) -> int:
  """The trainer command's body (also the pipeline's training stages): trains, writing
  ``config_gin`` (the configuration, as gin) into ``workdir``; 1 if training diverged."""
  try:
    result = run(exp, workdir, config_gin=config_gin)
  except TrainingDivergedError as e:
    print(f"error: training diverged: {e}", file=sys.stderr, flush=True)
    return 1
  if result.model_dir:
    print(f"model directory: {result.model_dir}", flush=True)
  return 0


def bindings_between(base: Experiment, exp: Experiment) -> list[str]:
  """Gin bindings that turn the experiment of some gin files, ``base``, into ``exp``."""
  out = []
  for part, name in (("model", "model_config"), ("train", "TrainConfig"), ("data", "DataConfig"),
                     ("optim", "OptimConfig"), ("objective", "ObjectiveConfig"),
                     ("data.mixture", "MixtureConfig"), ("lora", "LoraConfig")):
    a, b = base, exp
    for attr in part.split("."):
      a, b = getattr(a, attr), getattr(b, attr)
    for f in dataclasses.fields(b):
      value = getattr(b, f.name)
      if f.name != "mixture" and value != getattr(a, f.name):
        out.append(f"{name}.{f.name} = {value!r}")
  return out


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m genrm_jax.train", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--gin_file", action="append", default=[], help="gin file(s), composable")
  ap.add_argument("--gin_bindings", action="append", default=[], help="extra gin bindings")
  ap.add_argument("--workdir", required=True)
  distributed.add_flags(ap)
  args = ap.parse_args(argv)

  def run_command() -> int:
    distributed.initialize_from_flags(args)
    cli.parse_gin(args.gin_file, args.gin_bindings)
    return launch(experiment_from_gin(), args.workdir, gin.operative_config_str())

  return cli.main(run_command)

if __name__ == "__main__":
  sys.exit(main())
