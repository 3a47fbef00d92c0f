"""Peak memory of a train step with chunked vs whole-sequence logits (XLA's compiled stats).

    python benchmarks/bench_memory.py [--vocab 262144] [--batch 8] [--seq 256]

Compiles ``step.make_train_step`` (LM objective, AdamW, fp32, one CPU device) for the ``tiny``
config with a Gemma-3-sized vocabulary twice: unembedding all positions at once
(``ObjectiveConfig.logits_chunk = seq``, the [B, T, V] float32 logits exist) and in the default
chunks (``genrm_jax.logits``), and prints XLA's temporary and total bytes of each beside the size
of the full logits. Nothing runs; compile only.
"""

from __future__ import annotations

import argparse

import jax

import harness
from genrm_jax import config, logits, objectives, optim, sharding, step

MiB = 2 ** 20


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--vocab", type=int, default=262_144)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  args = ap.parse_args()
  cfg = config.tiny(vocab_size=args.vocab)
  full = args.batch * args.seq * args.vocab * 4
  print(f"tiny config, vocabulary {args.vocab:,}, batch {args.batch} x {args.seq}; the fp32 "
        f"logits [B, T, V] are {full / MiB:,.0f} MiB")
  rows = {}
  with harness.reported_load():  # for the record: compiled memory does not depend on the load
    for name, chunk in (("whole sequence", args.seq), ("chunked (default)", 0)):
      temp, total = step.compiled_memory(step.make_setup(
          cfg, objectives.ObjectiveConfig("lm", logits_chunk=chunk), optim.OptimConfig(),
          sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])), args.batch, args.seq)
      rows[name] = total
      shown = chunk or logits.default_chunk(cfg)
      print(f"  {name:<18} {min(shown, args.seq):>5} positions a piece: temporaries "
            f"{temp / MiB:8,.0f} MiB, peak {total / MiB:8,.0f} MiB")
  saved = rows["whole sequence"] - rows["chunked (default)"]
  print(f"  peak falls by {saved / MiB:,.0f} MiB = {saved / full:.2f}x the logits' size")


if __name__ == "__main__":
  main()
