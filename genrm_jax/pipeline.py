"""The main job: a complete GenRM experiment on CPU, from nothing to a Best-of-N table.

    python -m genrm_jax.pipeline [--gin_file pipeline/quick.gin] [--out runs/genrm_demo]

The paper's algorithmic experiment (last-letter concatenation by default) scaled down to a small
Gemma trained from scratch. Each stage is a call of the same CLI a TPU user runs, configured by
gin files from ``gin_configs/pipeline/``, with its outputs in one run folder:

  a. ``vocab.model``           a character-level SentencePiece vocabulary of the task
  b. ``policy/``               ``genrm_jax.train``: SFT of a policy on reference solutions
  c. ``test_candidates.jsonl`` ``genrm_jax.generate``: N samples per test problem, labelled
  d. ``train_candidates.jsonl``  the same on training problems: the verifiers' data
  e. ``verifiers/<name>/``     ``genrm_jax.train``: discriminative RM, GenRM, GenRM-CoT (each
                               initialised from the policy, as the paper fine-tunes its base LM)
  f. ``eval/``                 ``genrm_jax.eval``: Best-of-N table, results.json, best_of_n.png

A stage whose output exists is skipped, so an interrupted pipeline resumes where it stopped (the
trainer itself resumes from its checkpoints). Same seed, same table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Callable, Sequence

import gin

from genrm_jax import algorithmic
from genrm_jax import formats
from genrm_jax import vocab as vocab_lib

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "gin_configs")


@dataclasses.dataclass(frozen=True)
class VerifierSpec:
  """One verifier to train: its objective's gin file, its task and how eval scores it."""
  name: str
  gin_file: str
  data: str  # the seqio task/mixture, from tasks.algorithmic.register_policy_candidates
  method: str  # genrm_jax.eval scoring method


VERIFIERS = (
    VerifierSpec("discriminative", "pipeline/verifier_disc.gin", "policy_discriminative",
                 "discriminative"),
    VerifierSpec("genrm", "pipeline/verifier_lm.gin", "policy_genrm", "direct"),
    VerifierSpec("genrm_cot", "pipeline/verifier_lm.gin", "policy_genrm_cot", "cot"),
)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """The experiment; the defaults are the embedded default run (about 15 minutes on 2 cores)."""
  task: str = algorithmic.LAST_LETTERS
  out: str = "runs/genrm_demo"
  seed: int = 0
  # Gin files of the stages (relative to gin_configs/), composed model + task + run size.
  model_gin: str = "tiny.gin"
  policy_gin: str = "pipeline/policy.gin"
  # Copying the question's words emerges abruptly (loss ~1.5 -> 0.3 around step 275 at this
  # rate and batch). The cosine runs over policy_decay_steps, past the end of training: a rate
  # still high after that jump is what teaches the rest (500 steps on a 500-step cosine ended at
  # loss 0.17 and pass@1 .07 at 4 words; on a 1,000-step cosine, 0.08 and .44).
  policy_steps: int = 500
  policy_decay_steps: int = 1000
  verifier_steps: int = 150
  # Test pool: problems of the test length, N samples each; the paper's GSM8K N is 16.
  test_problems: int = 64
  # Words per test problem: one more than any verifier training problem. The paper's 6 is on
  # a knife's edge here: two 500-step policies that differ only in their vocabulary's id order
  # reached pass@1 of 11% and 1% at 6 words, but 19% and 12% at 5. Test problems are held out
  # at any length.
  test_length: int = 5
  num_samples: int = 16
  temperature: float = 0.7
  # Verifier training data: samples on training problems (per length of 2-4 words), at most
  # max_correct right and max_incorrect wrong ones kept a problem (see
  # tasks.algorithmic.register_policy_candidates: uncapped, the verifiers learnt that solutions
  # with fewer steps are right, as short problems are solved more often).
  train_problems_per_length: int = 300
  train_samples: int = 4
  max_correct: int = 2
  max_incorrect: int = 2
  cot_votes: int = 4
  # Longest solution / rationale sampled (6-word solutions and their checks fit with room). The
  # rationale stops at "Verification:": the verdict question that follows is fixed text, fed to
  # the verifier rather than sampled.
  max_solution_tokens: int = 128
  max_rationale_tokens: int = 160
  rationale_temperature: float = 0.7
  verifiers: tuple[str, ...] = tuple(v.name for v in VERIFIERS)
  extra_bindings: tuple[str, ...] = ()


with gin.unlock_config():
  _CONFIGURABLE = gin.external_configurable(PipelineConfig, name="PipelineConfig",
                                            module="genrm_jax")


def _gin(path: str) -> str:
  return path if os.path.isabs(path) else os.path.join(GIN_DIR, path)


def _schedule(steps: int, decay_steps: int | None = None) -> list[str]:
  # Short CPU runs: warm up over a tenth of the run, then one cosine (to its end by default).
  return [f"OptimConfig.warmup_steps = {max(1, steps // 10)}",
          f"OptimConfig.decay_steps = {decay_steps or steps}"]


class Runner:
  """Runs the stages in order, skipping those already done, and times them."""

  def __init__(self, pc: PipelineConfig):
    self.pc = pc
    self.out = os.path.abspath(pc.out)
    os.makedirs(self.out, exist_ok=True)
    self.timings: dict[str, float] = {}

  def path(self, *parts: str) -> str:
    return os.path.join(self.out, *parts)

  def stage(self, name: str, done: str, fn: Callable[[], int | None]) -> None:
    if os.path.exists(done):
      print(f"== {name}: done already ({done})", flush=True)
      return
    print(f"== {name}", flush=True)
    t0 = time.time()
    gin.clear_config()
    rc = fn()
    gin.clear_config()
    if rc:
      raise RuntimeError(f"pipeline stage {name!r} failed with status {rc}")
    if not os.path.exists(done):
      raise RuntimeError(f"pipeline stage {name!r} did not produce {done}")
    self.timings[name] = time.time() - t0
    print(f"== {name}: {self.timings[name]:.0f} s", flush=True)

  def train_args(self, gin_files: Sequence[str], workdir: str, bindings: Sequence[str]
                 ) -> list[str]:
    pc = self.pc
    v = vocab_lib.load_vocab(self.path("vocab.model"))
    args = []
    for f in (pc.model_gin, *gin_files):
      args += ["--gin_file", _gin(f)]
    for b in (f"DataConfig.vocab_path = '{self.path('vocab.model')}'",
              f"model_config.vocab_size = {v.vocab_size}", f"TrainConfig.seed = {pc.seed}",
              f"DataConfig.seed = {pc.seed}", *bindings, *pc.extra_bindings):
      args += ["--gin_bindings", b]
    return args + ["--workdir", workdir]

  def generate_args(self, split: str, problems: int, samples: int, out: str) -> list[str]:
    pc = self.pc
    extra = ["--test_length", str(pc.test_length)] if split == "test" else []
    return ["--checkpoint", self.path("policy", "model"), "--task", pc.task, "--split", split,
            *extra,
            "--num_problems", str(problems), "--num_samples", str(samples),
            "--temperature", str(pc.temperature), "--max_new_tokens",
            str(pc.max_solution_tokens), "--seed", str(pc.seed), "--out", out]

  def run(self) -> dict:
    from genrm_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
    from genrm_jax import generate  # pylint: disable=g-import-not-at-top
    from genrm_jax import train  # pylint: disable=g-import-not-at-top
    pc = self.pc
    vocab_path = self.path("vocab.model")
    self.stage("a. task vocabulary", vocab_path, lambda: vocab_lib.train_char_vocab(
        algorithmic.texts_for_vocab(pc.task, seed=pc.seed), vocab_path) and 0)
    self.stage("b. train the policy (SFT on correct solutions)", self.path("policy", "model"),
               lambda: train.main(self.train_args(
                   [pc.policy_gin], self.path("policy"),
                   [f"DataConfig.name = '{pc.task}_policy_sft'",
                    f"TrainConfig.num_steps = {pc.policy_steps}",
                    *_schedule(pc.policy_steps, pc.policy_decay_steps)])))
    test_cands = self.path("test_candidates.jsonl")
    self.stage("c. sample test candidates", test_cands, lambda: generate.main(
        self.generate_args("test", pc.test_problems, pc.num_samples, test_cands)))
    train_cands = self.path("train_candidates.jsonl")
    self.stage("d. sample verifier training candidates", train_cands, lambda: generate.main(
        self.generate_args("train", pc.train_problems_per_length, pc.train_samples,
                           train_cands)))
    specs = [v for v in VERIFIERS if v.name in pc.verifiers]
    for spec in specs:
      workdir = self.path("verifiers", spec.name)
      self.stage(f"e. train verifier {spec.name}", os.path.join(workdir, "model"),
                 lambda spec=spec, workdir=workdir: train.main(self.train_args(
                     [spec.gin_file], workdir,
                     ["import tasks.algorithmic",
                      f"register_policy_candidates.task = '{pc.task}'",
                      f"register_policy_candidates.candidates_file = '{train_cands}'",
                      f"register_policy_candidates.max_correct = {pc.max_correct}",
                      f"register_policy_candidates.max_incorrect = {pc.max_incorrect}",
                      f"DataConfig.name = '{spec.data}'",
                      f"TrainConfig.num_steps = {pc.verifier_steps}",
                      *_schedule(pc.verifier_steps),
                      f"TrainConfig.init_from = 'genrm:{self.path('policy')}'"])))
    eval_dir = self.path("eval")
    eval_args = ["--task", pc.task, "--candidates", test_cands, "--out", eval_dir,
                 "--cot_votes", str(pc.cot_votes), "--seed", str(pc.seed), "--overwrite"]
    for b in ("ScoringConfig.rationale = @SamplerConfig()",
              f"SamplerConfig.max_new_tokens = {pc.max_rationale_tokens}",
              f"SamplerConfig.temperature = {pc.rationale_temperature}",
              f"SamplerConfig.stop_strings = ({formats.VERDICT_PREFIX!r},)"):
      eval_args += ["--gin_bindings", b]
    for spec in specs:
      eval_args += ["--verifier",
                    f"{spec.name}={self.path('verifiers', spec.name, 'model')}:{spec.method}"]
    self.stage("f. Best-of-N evaluation", os.path.join(eval_dir, "results.json"),
               lambda: eval_lib.main(eval_args))
    with open(os.path.join(eval_dir, "results.json")) as f:
      results = json.load(f)
    with open(self.path("timings.json"), "w") as f:
      json.dump(self.timings, f, indent=2)
    return results


def parse_config(gin_files: Sequence[str], bindings: Sequence[str], out: str | None
                 ) -> PipelineConfig:
  gin.clear_config()
  gin.parse_config_files_and_bindings([_gin(f) for f in gin_files], list(bindings))
  pc = _CONFIGURABLE()
  gin.clear_config()
  return dataclasses.replace(pc, out=out) if out else pc


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m genrm_jax.pipeline", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--gin_file", action="append", default=[],
                  help="pipeline gin file(s), e.g. pipeline/quick.gin")
  ap.add_argument("--gin_bindings", action="append", default=[])
  ap.add_argument("--out", help="run folder (default PipelineConfig.out)")
  args = ap.parse_args(argv)
  pc = parse_config(args.gin_file, args.gin_bindings, args.out)
  t0 = time.time()
  try:
    Runner(pc).run()
  except (RuntimeError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1
  print(f"pipeline finished in {time.time() - t0:.0f} s; outputs in {os.path.abspath(pc.out)}",
        flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
