"""Train-step throughput: the genrm-jax step vs a transformers/torch step of the same Gemma.

    python benchmarks/bench_train.py [--steps 7] [--batch 8] [--seq 256] [--configs tiny,bench_10m]
        [--family gemma|gemma2|gemma3]

For each config (in the ``--family``'s layer recipe), both sides start from the same weights
(exported through genrm_jax.convert.keymap) and train on the same batch:
``genrm_jax.step.make_train_step`` (LM objective, global-norm clipping, AdamW with the paper's
schedule, fp32) and the same transformers model's forward + backward + ``clip_grad_norm_`` +
``torch.optim.AdamW`` under the same schedule (SDPA attention, eager for Gemma 2, 2 threads).
Steps alternate between the sides; tokens/s are medians, and the two loss sequences must agree.
MFU uses ``model.flops_per_token`` for both, against the fp32 matmul peak measured in the same
run (a 2048^3 matmul in XLA).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import harness
from families import FAMILIES, in_family, torch_model
from genrm_jax import config, model, objectives, optim, sharding, step, synthetic


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / float(np.median(times))


def jax_side(cfg: config.ModelConfig, params, batch, losses: list[float]):
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  obj, opt = objectives.ObjectiveConfig("lm"), optim.OptimConfig()
  setup = step.make_setup(cfg, obj, opt, mesh)
  state = {"s": step.init_state(setup, params)}
  train_step = step.make_train_step(setup)
  data = jax.device_put(batch, setup.batch_shardings)

  def one():
    state["s"], metrics = train_step(state["s"], data)
    losses.append(float(metrics["loss"]))  # waits for the step

  return one


def torch_side(cfg: config.ModelConfig, params, batch, losses: list[float]):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  net = torch_model(cfg, params)
  oc = optim.OptimConfig()
  opt = torch.optim.AdamW(net.parameters(), lr=oc.peak_lr, betas=(oc.b1, oc.b2), eps=oc.eps,
                          weight_decay=oc.weight_decay)
  lr_at = optim.schedule(oc)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: float(lr_at(s)) / oc.peak_lr)
  inputs, targets = (torch.from_numpy(batch[k]).long() for k in ("inputs", "targets"))
  weights = torch.from_numpy(batch["loss_weights"])

  def one():
    logits = net(input_ids=inputs).logits
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                            reduction="none")
    loss = (nll * weights.flatten()).sum() / weights.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), oc.clip_global_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    losses.append(float(loss.detach()))

  return one


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=7, help="timed steps per side (after 1 warm-up)")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--configs", default="tiny,bench_10m")
  ap.add_argument("--family", default="gemma", choices=FAMILIES)
  args = ap.parse_args()
  with harness.reported_load():
    peak = matmul_peak()
    print(f"device: {jax.devices()[0].device_kind}; fp32 matmul peak (XLA, 2048^3): "
          f"{peak / 1e9:.0f} GFLOP/s; batch {args.batch} x {args.seq} tokens; median of "
          f"{args.steps} alternating steps per side")
    print(f"{'config':<10} {'params':>8} {'jax tok/s':>10} {'jax MFU':>8} {'torch tok/s':>12} "
          f"{'torch MFU':>9} {'jax/torch':>9}  losses (first, last) jax | torch")
    for name in args.configs.split(","):
      cfg = in_family(config.preset(name), args.family)
      params = model.init_params(cfg, jax.random.key(0))
      batch = synthetic.make_batch(0, batch_size=args.batch, seq_len=args.seq, objective="lm",
                                   vocab_size=cfg.vocab_size)
      jl, tl = [], []
      tj, tt = harness.time_interleaved(
          [jax_side(cfg, params, batch, jl), torch_side(cfg, params, batch, tl)], args.steps)
      np.testing.assert_allclose(jl, tl, rtol=2e-4, err_msg="the two sides' losses differ")
      tokens = args.batch * args.seq
      flops = model.flops_per_token(cfg, args.seq) * tokens
      print(f"{name:<10} {model.count_params(cfg) / 1e6:>7.2f}M {tokens / tj.wall:>10.0f} "
            f"{flops / tj.wall / peak:>8.1%} {tokens / tt.wall:>12.0f} "
            f"{flops / tt.wall / peak:>9.1%} {tt.wall / tj.wall:>8.2f}x  "
            f"{jl[0]:.5f} {jl[-1]:.5f} | {tl[0]:.5f} {tl[-1]:.5f}", flush=True)


if __name__ == "__main__":
  main()
