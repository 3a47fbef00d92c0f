"""Forward+backward step of the ~10M-parameter Gemma: genrm-jax vs transformers/torch, one run.

    python benchmarks/bench_model.py [--batch 8] [--seq 256] [--steps 5] [--family gemma|gemma2|gemma3]

Both sides compute the mean next-token cross-entropy and its gradient with respect to every
parameter, in fp32, from the same weights (exported through genrm_jax.convert.keymap; the script
checks the two losses agree before timing). torch runs with 2 threads, XLA with its defaults;
steps alternate between the two and the median is reported, with the load average around the
timing. Prints tokens/s for each and the ratio genrm-jax / torch.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import harness
from families import FAMILIES, in_family, torch_model
from genrm_jax import config
from genrm_jax import model as model_lib


def jax_step(cfg: config.ModelConfig):
  def loss_fn(params, tokens):
    logits = model_lib.forward(cfg, params, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))
  return jax.jit(jax.value_and_grad(loss_fn))


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--family", default="gemma", choices=FAMILIES)
  args = ap.parse_args()

  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  cfg = in_family(config.bench_10m(), args.family)
  params = model_lib.init_params(cfg, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.seq + 1))
  tokens = tokens.astype(np.int32)
  n_tokens = args.batch * args.seq

  step = jax_step(cfg)
  jtokens = jnp.asarray(tokens)

  def run_jax():
    loss, grads = step(params, jtokens)
    jax.block_until_ready(grads)
    return float(loss)

  model = torch_model(cfg, params)
  ttokens = torch.from_numpy(tokens).long()

  def run_torch():
    model.zero_grad(set_to_none=True)
    logits = model(ttokens[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             ttokens[:, 1:].reshape(-1))
    loss.backward()
    return float(loss.detach())

  jl, tl = run_jax(), run_torch()
  print(f"config bench_10m/{cfg.family}: {model_lib.count_params(cfg):,} params, "
        f"batch {args.batch} x seq {args.seq}, fp32; loss jax {jl:.6f} torch {tl:.6f}")
  assert abs(jl - tl) < 1e-3 * abs(tl), "the two sides do not compute the same loss"
  with harness.reported_load():
    (tj, cj, _), (tt, ct, _) = harness.time_interleaved([run_jax, run_torch], args.steps)
  print(f"genrm-jax   fwd+bwd {tj * 1e3:8.1f} ms/step  {n_tokens / tj:8.0f} tokens/s  "
        f"({cj:.2f} CPU-s/step)")
  print(f"torch (2 t) fwd+bwd {tt * 1e3:8.1f} ms/step  {n_tokens / tt:8.0f} tokens/s  "
        f"({ct:.2f} CPU-s/step)")
  print(f"ratio genrm-jax / torch tokens/s: {tt / tj:.2f}x wall, {ct / cj:.2f}x per CPU-second")


if __name__ == "__main__":
  main()
