"""Memory and speed plan of the real train step for a model on a TPU slice, by compiling it.

    python -m genrm_jax.plan --model gemma_2b --topology v5e:4x4 --batch 64 --seq_len 1024 \\
        [--mesh data=1,fsdp=16,tensor=1] [--remat dots] [--grad_accum 1] [--search]
    python -m genrm_jax.plan --topology v5e:4x4 --gin_file gemma_2b.gin \\
        --gin_file gsm8k_genrm_cot.gin --gin_file paper.gin --gin_file topology/v5e_16_gemma_2b.gin
    python -m genrm_jax.plan --model gemma3_27b --topology v5p:2x2x4 --batch 64 --seq_len 2048 \\
        --remat full --grad_accum 2 --finetune full,lora,qlora-int8,qlora-nf4 --lora_rank 16

The step is ``step.make_train_step``, lowered on abstract inputs (no parameters are allocated)
for the slice's devices and compiled ahead of time. With the TPU compiler (``pip install
genrm-jax[tpu-plan]``: libtpu) the devices come from ``jax.experimental.topologies`` and the
numbers are the TPU compiler's own. Without it, the same step is compiled for as many simulated
CPU devices; CPU buffer assignment differs from TPU's, so its temporary memory is only indicative,
and an analytical activation estimate is printed beside it. ``--search`` compiles a small grid of
remat policies and gradient-accumulation steps on the mesh and marks the best one that fits.
``--finetune`` plans each of full fine-tuning, LoRA and QLoRA (the frozen base stored as int8,
int4 or nf4) as a row of its own: ``weights`` is then the trained and the frozen parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import re
import sys
from typing import Sequence

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int
  peak_bf16_flops: float  # per chip, dense


# Public Cloud TPU figures per chip.
CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12),
}
# The fraction of HBM a plan may fill: XLA and the runtime keep some for themselves.
HBM_BUDGET = 0.9


@dataclasses.dataclass(frozen=True)
class Topology:
  chip: Chip
  name: str  # e.g. "v5e:4x4", as jax.experimental.topologies names it
  num_chips: int


def parse_topology(name: str) -> Topology:
  m = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+)*)", name)
  if not m:
    raise ValueError(f"topology {name!r}: expected KIND:AxB[xC] with KIND in {sorted(CHIPS)}, "
                     "e.g. v5e:4x4 (16 chips)")
  return Topology(CHIPS[m.group(1)], name, math.prod(int(x) for x in m.group(2).split("x")))


@dataclasses.dataclass(frozen=True)
class PlanSpec:
  model: str
  topology: str
  batch: int = 64
  seq_len: int = 1024
  mesh: tuple[int, int, int] | None = None  # (data, fsdp, tensor); None: all chips on fsdp
  remat: str = "none"
  grad_accum: int = 1
  objective: str = "lm"
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  scan_layers: bool = True
  mfu: float = 0.4
  # Field overrides of the preset beyond the ones above (e.g. from a gin model file).
  model_overrides: tuple[tuple[str, object], ...] = ()
  # LoRA / QLoRA (a ``config.LoraConfig``); None: every weight trains.
  lora: object = None

  @property
  def finetune(self) -> str:
    """"full", "lora r16" or "qlora-nf4 r16"."""
    if self.lora is None or not self.lora.enabled:
      return "full"
    q = self.lora.base_quantization
    return f"{'lora' if q == 'none' else 'qlora-' + q} r{self.lora.rank}"


@dataclasses.dataclass(frozen=True)
class Plan:
  spec: PlanSpec
  mesh: tuple[int, int, int]
  backend: str  # "tpu" (TPU compiler) or "cpu" (simulated devices)
  params_bytes: int  # per chip: trained and frozen weights (a LoRA base, DPO's reference)
  opt_bytes: int  # per chip
  compiled_temp_bytes: int  # per chip: activations, gradients and scratch
  compiled_total_bytes: int  # per chip: arguments + outputs not aliased + temp
  analytic_act_bytes: int  # per chip: saved activations + logits, the analytical model
  compiled_flops: float  # per step, all chips, from XLA (unscanned layers only; else NaN)
  model_flops: float  # per step, 6N + attention (the MFU numerator)
  hbm_bytes: int
  recompute: float  # matmul work against no recomputation (``recompute``)

  @property
  def fits(self) -> bool:
    return self.compiled_total_bytes <= HBM_BUDGET * self.hbm_bytes

  def step_seconds(self, peak: float, chips: int) -> float:
    return self.model_flops / (chips * peak * self.spec.mfu)


def _default_mesh(chips: int, batch: int) -> tuple[int, int, int]:
  fsdp = math.gcd(chips, batch)
  return (1, fsdp, chips // fsdp) if chips // fsdp > 1 else (1, chips, 1)


def _devices(topo: Topology, backend: str):
  import jax  # pylint: disable=g-import-not-at-top
  if backend == "tpu":
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    from genrm_jax import startup  # pylint: disable=g-import-not-at-top
    # libtpu, on a machine without a TPU, prints that it cannot tell the accelerator type or
    # the worker hostnames: neither matters for compiling ahead of time.
    with startup.captured_stderr():
      return list(topologies.get_topology_desc(topology_name=topo.name, platform="tpu").devices)
  devices = jax.devices("cpu")
  if len(devices) < topo.num_chips:
    raise RuntimeError(
        f"CPU fallback needs {topo.num_chips} simulated devices for {topo.name} but jax has "
        f"{len(devices)}: run `python -m genrm_jax.plan` in a fresh process (it sets XLA_FLAGS) or "
        f"set XLA_FLAGS=--xla_force_host_platform_device_count={topo.num_chips}")
  return devices[:topo.num_chips]


def _per_chip_bytes(tree) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    # In bits: numpy gives int4 / uint4 (QLoRA's bases) a byte each; a TPU packs two a byte.
    total += int(np.prod(shape)) * jax.dtypes.itemsize_bits(x.dtype)
  return total // 8


def analytic_activation_bytes(cfg, spec: PlanSpec, mesh: tuple[int, int, int]) -> int:
  """Saved-for-backward activations of one micro-batch per chip, plus the fp32 logits.

  Per token and layer, in the compute dtype: remat "full" keeps the layer input (D); "gate_up"
  also the MLP's gate and up outputs; "dots_no_batch" every projection the backward pass reads
  (q, k, v, attention out, gate, up); "dots" also attention's logits; "none" also keeps norms,
  the activation product and the fp32 attention probabilities. Tensor parallelism splits heads
  and the MLP hidden. The fp32 logits and their gradient count for one chunk of positions per
  row (``genrm_jax.logits``), all the loss holds at once.
  """
  from genrm_jax import logits as logits_lib  # pylint: disable=g-import-not-at-top
  data, fsdp, tensor = mesh
  tokens = spec.batch // spec.grad_accum * spec.seq_len // (data * fsdp)
  chunk = min(spec.seq_len, logits_lib.default_chunk(cfg))
  b = 2 if spec.dtype == "bfloat16" else 4
  d, f, h = cfg.embed_dim, cfg.hidden_dim, cfg.head_dim
  n, k = cfg.num_heads, cfg.num_kv_heads
  qkvo = (2 * n + 2 * k) * h / tensor
  if spec.remat == "full":
    per_layer = b * d
  elif spec.remat == "gate_up":
    per_layer = b * (d + 2 * f / tensor)
  elif spec.remat == "dots_no_batch":
    per_layer = b * (d + qkvo + 2 * f / tensor)
  elif spec.remat == "dots":
    per_layer = b * (d + qkvo + 2 * f / tensor + n * spec.seq_len / tensor)
  else:
    attn_probs = 2 * 4 * n * spec.seq_len / tensor
    per_layer = b * (6 * d + qkvo + 3 * f / tensor) + attn_probs
  logits = 2 * 4 * cfg.vocab_size / tensor * chunk / spec.seq_len
  return int(tokens * (cfg.num_layers * per_layer + logits))


def make_plan(spec: PlanSpec, backend: str) -> Plan:
  """Lowers and compiles the trainer's step for ``spec`` on ``backend`` devices."""
  import jax  # pylint: disable=g-import-not-at-top

  from genrm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from genrm_jax import lora as lora_lib  # pylint: disable=g-import-not-at-top
  from genrm_jax import objectives, optim, sharding, step  # pylint: disable=g-import-not-at-top

  topo = parse_topology(spec.topology)
  mesh_shape = spec.mesh or _default_mesh(topo.num_chips, spec.batch)
  if math.prod(mesh_shape) != topo.num_chips:
    raise ValueError(f"mesh data x fsdp x tensor = {mesh_shape} has {math.prod(mesh_shape)} "
                     f"devices but {topo.name} has {topo.num_chips} chips")
  cfg = config_lib.preset(spec.model, **dict(spec.model_overrides)).replace(
      dtype=spec.dtype, param_dtype=spec.param_dtype, remat_policy=spec.remat,
      scan_layers=spec.scan_layers, max_seq_len=max(spec.seq_len, 1))
  mesh = sharding.make_mesh(*mesh_shape, devices=_devices(topo, backend))
  sharding.check_divides(mesh, batch=spec.batch // spec.grad_accum, num_heads=cfg.num_heads,
                         where=f"plan {spec.model} on {spec.topology}")
  obj = objectives.ObjectiveConfig(kind=spec.objective)
  opt = optim.OptimConfig()
  lora = spec.lora or config_lib.LoraConfig()
  setup = step.make_setup(cfg, obj, opt, mesh, lora)
  state = setup.abstract_state
  batch = setup.objective.abstract_batch(spec.batch, spec.seq_len, setup.batch_shardings)
  train_step = step.make_train_step(setup, grad_accum=spec.grad_accum)
  frozen = (setup.abstract_frozen,) if lora.enabled else ()
  params_bytes = (_per_chip_bytes(state.params) + _per_chip_bytes(state.ref_params)
                  + _per_chip_bytes(frozen))
  opt_bytes = _per_chip_bytes(state.opt_state)
  try:
    compiled = train_step.lower(state, batch, *frozen).compile()
  except jax.errors.JaxRuntimeError as e:
    # The TPU compiler refuses a program that cannot fit; it names the temporaries' size.
    m = _OOM.search(str(e))
    if "RESOURCE_EXHAUSTED" not in str(e) or not m:
      raise
    temp = int(float(m.group(1)) * _UNITS[m.group(2)])
    total, flops = params_bytes + opt_bytes + _per_chip_bytes(batch) + temp, float("nan")
  else:
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    temp = mem.temp_size_in_bytes
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + temp)
    # XLA's cost analysis counts a while loop's body once, so scanned layers are undercounted.
    flops = float("nan") if cfg.scan_layers else (
        float(cost.get("flops", float("nan"))) * topo.num_chips)
  return Plan(spec=spec, mesh=tuple(mesh_shape), backend=backend, params_bytes=params_bytes,
              opt_bytes=opt_bytes, compiled_temp_bytes=int(temp), compiled_total_bytes=int(total),
              analytic_act_bytes=analytic_activation_bytes(cfg, spec, mesh_shape),
              compiled_flops=flops,
              model_flops=(objectives.flops_per_example(obj, cfg, spec.seq_len) * spec.batch
                           * lora_lib.flops_fraction(lora)),
              hbm_bytes=topo.chip.hbm_bytes,
              recompute=recompute(cfg, spec.remat, spec.seq_len))


_OOM = re.compile(r"HLO temporaries \(([\d.]+)([KMGT])\)")
_UNITS = {"K": 1024, "M": 1024 ** 2, "G": GiB, "T": 1024 * GiB}


def search(base: PlanSpec, backend: str, log=print) -> list[Plan]:
  """For each remat policy, the fewest gradient-accumulation steps that fit, on ``base``'s mesh.

  Stops at the first policy whose plan fits with one micro-batch: slower policies cannot win.
  """
  topo = parse_topology(base.topology)
  mesh = base.mesh or _default_mesh(topo.num_chips, base.batch)
  rows_per_replica = base.batch // (mesh[0] * mesh[1])
  plans = []
  for remat in SEARCH_REMAT:
    accum = 1
    while accum <= rows_per_replica:
      spec = dataclasses.replace(base, mesh=mesh, remat=remat, grad_accum=accum)
      try:
        plan = make_plan(spec, backend)
      except ValueError as e:
        log(f"skipped remat {remat} grad_accum {accum}: {e}")
        break
      plans.append(plan)
      if plan.fits:
        break
      accum *= 2
    if plans and plans[-1].fits and plans[-1].spec.grad_accum == 1:
      break
  return plans


# Cheapest recomputation first.
SEARCH_REMAT = ("none", "dots", "full")


def recompute(cfg, remat: str, seq_len: int) -> float:
  """A step's matmul work under ``remat``, as a multiple of the 3 passes without recomputation:
  the backward pass recomputes the forward matmuls whose outputs the policy does not keep."""
  d, f, h = cfg.embed_dim, cfg.hidden_dim, cfg.head_dim
  mlp, proj = 3 * d * f, d * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) * h
  attn = 2 * cfg.num_heads * h * seq_len  # logits and encoding, per token
  again = {"none": 0, "dots": 0, "dots_no_batch": attn, "gate_up": proj + attn,
           "full": mlp + proj + attn}[remat]
  return 1 + again / (3 * (mlp + proj + attn))


def best(plans: Sequence[Plan]) -> Plan | None:
  """The plan that fits with the least recomputation; ties go to fewer micro-batches."""
  fitting = [p for p in plans if p.fits]
  if not fitting:
    return None
  return min(fitting, key=lambda p: (p.recompute, p.spec.grad_accum,
                                     p.compiled_total_bytes))


def table(plans: Sequence[Plan], chosen: Plan | None = None) -> str:
  """A markdown table; memory per chip, FLOPs and time per step of the whole slice."""
  big = any(p.compiled_total_bytes >= GiB for p in plans)
  unit, scale = ("GiB", GiB) if big else ("MiB", 1024 ** 2)
  header = (f"| model | finetune | topology | mesh d,f,t | remat | batch x seq | weights {unit} | "
            f"opt state {unit} | act+temp {unit} | act (model) {unit} | total {unit} / HBM | "
            "fits | model FLOP/step | XLA FLOP/step | step s @MFU | tokens/s |")
  rows = [header, "|" + "---|" * (header.count("|") - 1)]
  for p in plans:
    topo = parse_topology(p.spec.topology)
    secs = p.step_seconds(topo.chip.peak_bf16_flops, topo.num_chips)
    accum = f" /{p.spec.grad_accum}" if p.spec.grad_accum > 1 else ""
    cells = [
        p.spec.model + (" *" if p is chosen else ""), p.spec.finetune,
        f"{p.spec.topology} ({p.backend})",
        ",".join(map(str, p.mesh)), p.spec.remat, f"{p.spec.batch}x{p.spec.seq_len}{accum}",
        f"{p.params_bytes / scale:.2f}", f"{p.opt_bytes / scale:.2f}",
        f"{p.compiled_temp_bytes / scale:.2f}", f"{p.analytic_act_bytes / scale:.2f}",
        f"{p.compiled_total_bytes / scale:.2f} / {p.hbm_bytes / scale:.0f}",
        "yes" if p.fits else "NO", f"{p.model_flops:.3g}",
        "n/a" if math.isnan(p.compiled_flops) else f"{p.compiled_flops:.3g}",
        f"{secs:.3g} @{p.spec.mfu:.0%}",
        f"{p.spec.batch * p.spec.seq_len / secs:,.0f}"]
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(rows)


def tpu_compiler_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def _parse_mesh(text: str | None) -> tuple[int, int, int] | None:
  if not text:
    return None
  sizes = {"data": 1, "fsdp": 1, "tensor": 1}
  for part in text.split(","):
    key, _, value = part.partition("=")
    if key not in sizes or not value.isdigit():
      raise argparse.ArgumentTypeError(f"--mesh {text!r}: expected data=N,fsdp=N,tensor=N")
    sizes[key] = int(value)
  return sizes["data"], sizes["fsdp"], sizes["tensor"]


def spec_from_gin(gin_files: Sequence[str], bindings: Sequence[str], topology: str,
                  mfu: float) -> PlanSpec:
  """The PlanSpec of a trainer gin composition: its model, batch, rows, mesh, remat, objective."""
  import gin  # pylint: disable=g-import-not-at-top
  from genrm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from genrm_jax import cli, sharding, train  # pylint: disable=g-import-not-at-top
  cli.parse_gin(gin_files, bindings)
  exp = train.experiment_from_gin()
  try:
    preset = gin.query_parameter("model_config.preset")
  except ValueError:
    preset = "tiny"  # model_config's default
  chips = parse_topology(topology).num_chips
  sizes = sharding.mesh_sizes(exp.train.mesh_data, exp.train.mesh_fsdp, exp.train.mesh_tensor,
                              chips)
  base = config_lib.preset(preset)
  overrides = tuple((f.name, getattr(exp.model, f.name)) for f in dataclasses.fields(exp.model)
                    if getattr(exp.model, f.name) != getattr(base, f.name))
  return PlanSpec(model=preset, topology=topology, batch=exp.train.batch_size,
                  seq_len=exp.data.seq_len, mesh=tuple(sizes), remat=exp.model.remat_policy,
                  grad_accum=exp.train.grad_accum, objective=exp.objective.kind,
                  dtype=exp.model.dtype, param_dtype=exp.model.param_dtype,
                  scan_layers=exp.model.scan_layers, mfu=mfu, model_overrides=overrides,
                  lora=exp.lora if exp.lora.enabled else None)


def main(argv: Sequence[str] | None = None) -> int:
  from genrm_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.main(lambda: _plan(argv))


def _plan(argv: Sequence[str] | None) -> int:
  ap = argparse.ArgumentParser(prog="python -m genrm_jax.plan", description=__doc__.split("\n")[0])
  ap.add_argument("--model", help="a config preset: gemma_2b, gemma_7b, ...")
  ap.add_argument("--gin_file", action="append", default=[],
                  help="plan a trainer gin composition instead of --model/--batch/...")
  ap.add_argument("--gin_bindings", action="append", default=[])
  ap.add_argument("--topology", required=True, help="e.g. v5e:4x4, v5p:2x2x2, v4:2x2x4")
  ap.add_argument("--batch", type=int, default=PlanSpec.batch, help="global batch (rows)")
  ap.add_argument("--seq_len", type=int, default=PlanSpec.seq_len)
  ap.add_argument("--mesh", type=_parse_mesh, default=None,
                  help="data=..,fsdp=..,tensor=.. (default: every chip on fsdp)")
  ap.add_argument("--remat", default=PlanSpec.remat, help="none, dots, dots_no_batch, gate_up, full")
  ap.add_argument("--grad_accum", type=int, default=1)
  ap.add_argument("--objective", default=PlanSpec.objective,
                  help="the trainer's ObjectiveConfig.kind: lm, disc, dpo or one registered")
  ap.add_argument("--dtype", default=PlanSpec.dtype, help="compute dtype")
  ap.add_argument("--param_dtype", default=PlanSpec.param_dtype, help="master weight dtype")
  ap.add_argument("--no_scan", action="store_true", help="unrolled layers (slower to compile)")
  ap.add_argument("--mfu", type=float, default=PlanSpec.mfu,
                  help="model FLOPs utilisation assumed for the step time")
  ap.add_argument("--search", action="store_true",
                  help="try remat none/dots/full with growing --grad_accum on the mesh; mark the "
                       "best plan that fits")
  ap.add_argument("--cpu", action="store_true", help="simulated CPU devices even with libtpu")
  ap.add_argument("--finetune", default=None,
                  help="comma-separated rows to plan: full, lora, qlora-int8, qlora-int4, "
                       "qlora-nf4 (default: full, or the gin files' LoraConfig)")
  ap.add_argument("--lora_rank", type=int, default=16, help="the adapters' rank (lora, qlora-*)")
  args = ap.parse_args(argv)

  topo = parse_topology(args.topology)
  backend = "tpu" if tpu_compiler_available() and not args.cpu else "cpu"
  if backend == "cpu":
    # Must happen before JAX starts its CPU backend.
    flag = f"--xla_force_host_platform_device_count={topo.num_chips}"
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
    print(f"note: the TPU compiler (libtpu) is not installed; compiling for {topo.num_chips} "
          "simulated CPU devices instead. Memory from the CPU compiler is indicative only; "
          "'act (model)' is the analytical estimate. For TPU numbers: "
          "pip install 'genrm-jax[tpu-plan]'.", file=sys.stderr)
  if args.gin_file:
    base = spec_from_gin(args.gin_file, args.gin_bindings, args.topology, args.mfu)
  elif args.model:
    base = PlanSpec(model=args.model, topology=args.topology, batch=args.batch,
                    seq_len=args.seq_len, mesh=args.mesh, remat=args.remat,
                    grad_accum=args.grad_accum, objective=args.objective, dtype=args.dtype,
                    param_dtype=args.param_dtype, scan_layers=not args.no_scan, mfu=args.mfu)
  else:
    ap.error("give --model or --gin_file")
  try:
    modes = _finetune_modes(args.finetune, args.lora_rank) if args.finetune else [base.lora]
  except ValueError as e:
    ap.error(str(e))
  if args.search:
    if len(modes) > 1:
      ap.error("--search plans one --finetune mode at a time")
    plans = search(dataclasses.replace(base, lora=modes[0]), backend,
                   log=lambda m: print(m, file=sys.stderr))
  else:
    try:
      plans = [make_plan(dataclasses.replace(base, lora=m), backend) for m in modes]
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  chosen = best(plans) if args.search else None
  print(table(plans, chosen))
  if args.search:
    print("\n* = chosen: fits in "
          f"{HBM_BUDGET:.0%} of HBM with the least recomputation, then the fewest micro-batches"
          if chosen else
          "\nnothing fits: raise --grad_accum, use remat full, or a larger slice")
    if chosen and chosen.spec.grad_accum > 1:
      print(one_micro_batch(plans, chosen))
  return 0 if plans else 1


def _finetune_modes(text: str, rank: int) -> list:
  """``--finetune``'s rows as LoraConfigs (None: full fine-tuning)."""
  from genrm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  modes = []
  for name in text.split(","):
    if name == "full":
      modes.append(None)
    elif name == "lora":
      modes.append(config_lib.LoraConfig(rank=rank))
    elif name.startswith("qlora-") and name[6:] in config_lib.BASE_QUANTIZATIONS[1:]:
      modes.append(config_lib.LoraConfig(rank=rank, base_quantization=name[6:]))
    else:
      raise ValueError(f"--finetune {name!r}: expected full, lora, qlora-int8, qlora-int4 or "
                       "qlora-nf4")
  return modes


def one_micro_batch(plans: Sequence[Plan], chosen: Plan) -> str:
  """Whether any searched plan fits the whole batch in one micro-batch, and with which remat."""
  single = [p for p in plans if p.fits and p.spec.grad_accum == 1]
  if not single:
    return "no remat policy fits the batch in one micro-batch"
  p = min(single, key=lambda p: p.recompute)
  return (f"one micro-batch fits with remat {p.spec.remat} ({p.compiled_total_bytes / GiB:.2f} "
          f"of {p.hbm_bytes / GiB:.0f} GiB per chip), at "
          f"{p.recompute / chosen.recompute:.2f}x the chosen plan's "
          "matmul work")


if __name__ == "__main__":
  sys.exit(main())
