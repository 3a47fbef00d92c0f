"""genrm_jax.plan: the planning command compiles the real train step and prints its table."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import pytest

from genrm_jax import config as config_lib
from genrm_jax import lora as lora_lib
from genrm_jax import model as model_lib
from genrm_jax import objectives
from genrm_jax import plan
from genrm_jax import sharding


def test_topology_names():
  t = plan.parse_topology("v5e:4x4")
  assert (t.num_chips, t.chip.hbm_bytes) == (16, 16 * plan.GiB)
  assert plan.parse_topology("v5p:2x2x4").num_chips == 16
  with pytest.raises(ValueError, match="expected KIND:AxB"):
    plan.parse_topology("v5e-16")


def test_analytic_activations_shrink_with_remat_and_accumulation():
  cfg = config_lib.gemma_2b()
  spec = plan.PlanSpec(model="gemma_2b", topology="v5e:4x4", batch=64, seq_len=2048)
  act = {r: plan.analytic_activation_bytes(cfg, plan.PlanSpec(**{**spec.__dict__, "remat": r}),
                                           (1, 16, 1))
         for r in ("none", "dots", "dots_no_batch", "gate_up", "full")}
  assert act["none"] > act["dots"] > act["dots_no_batch"] > act["gate_up"] > act["full"]
  work = {r: plan.recompute(cfg, r, spec.seq_len) for r in act}
  assert work["none"] == work["dots"] == 1 < work["dots_no_batch"] < work["gate_up"]
  assert work["gate_up"] < work["full"] == pytest.approx(4 / 3)
  half = plan.analytic_activation_bytes(cfg, plan.PlanSpec(**{**spec.__dict__, "grad_accum": 2}),
                                        (1, 16, 1))
  assert half == pytest.approx(act["none"] / 2, rel=1e-6)


def test_plan_command_on_the_cpu_fallback():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the command sets its own device count
  r = subprocess.run(
      [sys.executable, "-m", "genrm_jax.plan", "--model", "tiny", "--topology", "v5e:2x4",
       "--batch", "8", "--seq_len", "64", "--search", "--cpu", "--no_scan"],
      env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr
  assert "simulated CPU devices" in r.stderr
  lines = r.stdout.splitlines()
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:] if ln.startswith("|")]
  # remat "none" with one micro-batch fits a tiny model, so the search stops there.
  assert len(rows) == 1
  row = dict(zip(header, rows[0]))
  assert row["model"] == "tiny *" and row["topology"] == "v5e:2x4 (cpu)"
  assert (row["mesh d,f,t"], row["remat"], row["batch x seq"], row["fits"]) == (
      "1,8,1", "none", "8x64", "yes")
  # Parameters are fp32 and sharded 8 ways (norm scales replicated); AdamW keeps two moments.
  cfg = config_lib.tiny()
  per_chip_mib = model_lib.count_params(cfg) * 4 / 8 / 2 ** 20
  assert row["finetune"] == "full"
  params = float(row["weights MiB"])
  assert per_chip_mib * 0.99 <= params <= per_chip_mib * 1.1
  assert float(row["opt state MiB"]) == pytest.approx(2 * params, abs=0.02)
  # XLA's count of the compiled step is the model's matmul FLOPs plus a modest overhead.
  model_flops = objectives.flops_per_example(objectives.ObjectiveConfig(), cfg, 64) * 8
  assert float(row["model FLOP/step"]) == pytest.approx(model_flops, rel=1e-2)
  assert 0.9 <= float(row["XLA FLOP/step"]) / model_flops <= 1.5
  assert "* = chosen" in r.stdout


def test_finetune_rows_put_lora_and_qlora_beside_full_fine_tuning():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  r = subprocess.run(
      [sys.executable, "-m", "genrm_jax.plan", "--model", "tiny", "--topology", "v5e:2x4",
       "--batch", "8", "--seq_len", "64", "--cpu", "--no_scan", "--remat", "none",
       "--finetune", "full,lora,qlora-int8,qlora-nf4", "--lora_rank", "4"],
      env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  rows = {row["finetune"]: row for row in (
      dict(zip(header, [c.strip() for c in ln.strip("|").split("|")]))
      for ln in lines[2:] if ln.startswith("|"))}
  assert sorted(rows) == ["full", "lora r4", "qlora-int8 r4", "qlora-nf4 r4"]
  full, lora, qlora = rows["full"], rows["lora r4"], rows["qlora-int8 r4"]
  cfg = config_lib.tiny()
  lc = config_lib.LoraConfig(rank=4)
  # Adam's two moments of the adapters only (fp32), each sharded like its base weight.
  mesh = sharding.make_mesh(1, 8, 1)
  adapters = sum(math.prod(s.shard_shape(x.shape)) for x, s in zip(
      jax.tree.leaves(lora_lib.abstract_adapters(cfg, lc)),
      jax.tree.leaves(lora_lib.adapter_shardings(cfg, lc, mesh))))
  assert float(lora["opt state MiB"]) == pytest.approx(2 * adapters * 4 / 2 ** 20, abs=0.01)
  assert float(lora["opt state MiB"]) < float(full["opt state MiB"]) / 2
  # The frozen base stored as int8 (with its scales) weighs less than the fp32 base.
  assert float(qlora["weights MiB"]) < float(lora["weights MiB"])
  assert float(qlora["opt state MiB"]) == float(lora["opt state MiB"])
  # nf4 values are 4 bits (a TPU packs two a byte), though numpy holds each in a byte.
  assert float(rows["qlora-nf4 r4"]["weights MiB"]) < float(qlora["weights MiB"])
  # No weight gradients: the planned FLOPs drop by the frozen weights' backward share.
  assert float(lora["model FLOP/step"]) == pytest.approx(
      float(full["model FLOP/step"]) * lora_lib.flops_fraction(lc), rel=1e-2)
  assert float(lora["XLA FLOP/step"]) < float(full["XLA FLOP/step"])
  bad = subprocess.run(
      [sys.executable, "-m", "genrm_jax.plan", "--model", "tiny", "--topology", "v5e:2x4",
       "--cpu", "--finetune", "full,qlora-int3"], env=env, capture_output=True, text=True,
      timeout=600)
  assert bad.returncode == 2 and "--finetune 'qlora-int3'" in bad.stderr.splitlines()[-1]


def test_spec_from_the_worked_example_gin_files():
  import gin  # pylint: disable=g-import-not-at-top
  try:
    spec = plan.spec_from_gin(
        ["gemma_2b.gin", "gsm8k_genrm_cot.gin", "paper.gin", "topology/v5e_16_gemma_2b.gin"],
        [], "v5e:4x4", 0.4)
  finally:
    gin.clear_config()
  assert (spec.model, spec.batch, spec.seq_len, spec.mesh) == ("gemma_2b", 64, 2048, (1, 16, 1))
  assert (spec.remat, spec.grad_accum, spec.dtype, spec.scan_layers) == ("dots", 4, "bfloat16",
                                                                         True)
