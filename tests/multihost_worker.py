"""One process of a (possibly multi-process) tiny training run, for tests/test_multihost.py.

Trains with ``genrm_jax.train.run`` after joining the job with the trainer's own distributed
flags, then process 0 writes the exact per-step metrics and the final parameters to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

from genrm_jax import distributed


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--gin_bindings", action="append", default=[])
  ap.add_argument("--steps", default="4", help="comma-separated num_steps, run one after another")
  distributed.add_flags(ap)
  args = ap.parse_args()
  distributed.initialize_from_flags(args)
  import jax  # pylint: disable=g-import-not-at-top
  from genrm_jax import cli, train  # pylint: disable=g-import-not-at-top
  cli.parse_gin([], args.gin_bindings)
  exp = train.experiment_from_gin()
  for n in (int(x) for x in args.steps.split(",")):
    # Each later run resumes from the previous one's final checkpoint in the same workdir.
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, num_steps=n))
    result = train.run(exp, args.workdir)
    params = distributed.to_host(result.state.params)
    if distributed.is_main():
      out = os.path.join(args.out, f"step{n}")
      os.makedirs(out, exist_ok=True)
      flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
              for path, v in jax.tree_util.tree_leaves_with_path(params)}
      np.savez(os.path.join(out, "params.npz"), **flat)
      with open(os.path.join(out, "run.json"), "w") as f:
        json.dump({"history": result.history, "processes": jax.process_count(),
                   "devices": jax.device_count(), "model_dir": result.model_dir}, f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
