"""Train-step throughput: the genrm-jax step vs a transformers/torch step of the same Gemma.

For the tiny and bench_10m configs (in the ``--family`` gemma, gemma2 or gemma3), at one batch
shape, prints tokens/s and MFU of ``genrm_jax.step.make_train_step`` (LM objective, AdamW +
clipping, fp32) and of the same transformers model's forward + backward + ``torch.optim.AdamW``
(2 threads), and their ratio.
MFU uses ``model.flops_per_token`` for both, against the fp32 matmul peak measured here in the
same run (a 2048^3 matmul in XLA). Run: ``python benchmarks/bench_train.py [--steps N]``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from families import FAMILIES, in_family
from genrm_jax import config, hf_convert, model, objectives, optim, sharding, step, synthetic


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    f(a).block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t)


def _time(fn, steps: int) -> float:
  fn()  # compile / warm up
  fn()
  t = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - t) / steps


def jax_step_time(cfg: config.ModelConfig, batch: int, seq: int, steps: int) -> float:
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  obj, opt = objectives.ObjectiveConfig("lm"), optim.OptimConfig()
  setup = step.make_setup(cfg, obj, opt, mesh)
  state = {"s": step.init_state(setup, model.init_params(cfg, jax.random.key(0), mesh))}
  train_step = step.make_train_step(setup)
  data = synthetic.make_batch(0, batch_size=batch, seq_len=seq, objective="lm",
                              vocab_size=cfg.vocab_size)
  data = jax.device_put(data, setup.batch_shardings)

  def one():
    state["s"], metrics = train_step(state["s"], data)
    metrics["loss"].block_until_ready()

  return _time(one, steps)


def torch_step_time(cfg: config.ModelConfig, batch: int, seq: int, steps: int) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  torch.manual_seed(0)
  hf = transformers.AutoConfig.for_model(**hf_convert.config_to_hf(cfg, "float32"))
  # sdpa cannot soft-cap attention logits, so Gemma 2 runs eager, as transformers itself chooses.
  attn = "eager" if cfg.family == "gemma2" else "sdpa"
  net = transformers.AutoModelForCausalLM.from_config(hf, attn_implementation=attn).train()
  opt = torch.optim.AdamW(net.parameters(), lr=2e-6, weight_decay=1e-2)
  ids = torch.randint(2, cfg.vocab_size, (batch, seq))

  def one():
    loss = net(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)

  return _time(one, steps)


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--family", default="gemma", choices=FAMILIES)
  args = ap.parse_args()
  peak = matmul_peak()
  print(f"device: {jax.devices()[0].device_kind}; fp32 matmul peak (XLA, 2048^3): "
        f"{peak / 1e9:.0f} GFLOP/s; batch {args.batch} x {args.seq} tokens")
  print(f"{'config':<10} {'params':>8} {'jax tok/s':>10} {'jax MFU':>8} {'torch tok/s':>12} "
        f"{'torch MFU':>9} {'jax/torch':>9}")
  for name in ("tiny", "bench_10m"):
    cfg = in_family(config.preset(name), args.family)
    tokens = args.batch * args.seq
    flops = model.flops_per_token(cfg, args.seq) * tokens
    tj = jax_step_time(cfg, args.batch, args.seq, args.steps)
    tt = torch_step_time(cfg, args.batch, args.seq, args.steps)
    print(f"{name:<10} {model.count_params(cfg) / 1e6:>7.2f}M {tokens / tj:>10.0f} "
          f"{flops / tj / peak:>8.1%} {tokens / tt:>12.0f} {flops / tt / peak:>9.1%} "
          f"{tt / tj:>8.2f}x", flush=True)


if __name__ == "__main__":
  main()
