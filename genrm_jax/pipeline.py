"""The main job: a complete GenRM experiment on CPU, from nothing to a Best-of-N table.

    python -m genrm_jax.pipeline [--gin_file pipeline/quick.gin] [--out runs/genrm_demo]

The paper's algorithmic experiment (last-letter concatenation by default) scaled down to a small
Gemma trained from scratch. Each stage is a call of the same CLI a TPU user runs, configured by
gin files from ``gin_configs/pipeline/``, with its outputs in one run folder:

  a. ``vocab.model``           a character-level SentencePiece vocabulary of the task
  b. ``policy/``               ``genrm_jax.train``: SFT of a policy on reference solutions
  c. ``test_candidates.jsonl`` ``genrm_jax.generate``: N samples per test problem, labelled
  d. ``train_candidates.jsonl``  the same on training problems
  e. ``verifier_data.jsonl``   the verifiers' data: per problem, equally many right and wrong
                               samples or none (``records.select_per_question``), and its data
                               card ``verifier_data_card.json``: P(correct) by problem length,
                               steps and answer length, before and after the selection
  f. ``verifiers/<name>/``     ``genrm_jax.train``: discriminative RM, GenRM, GenRM-CoT (each
                               initialised from the policy, as the paper fine-tunes its base LM)
  g. ``eval/``                 ``genrm_jax.eval``: Best-of-N table, diagnostics, results.json,
                               best_of_n.png, accuracy_vs_tokens.png, reliability.png
  h, i. ``eval_<L>_words/``    with ``longer_test_length`` L: the same on a second test pool of
                               L-word problems, longer than any verifier's training problem

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
from genrm_jax import candidates as cands
from genrm_jax import formats
from genrm_jax import records
from genrm_jax import vocab as vocab_lib

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "gin_configs")


@dataclasses.dataclass(frozen=True)
class VerifierSpec:
  """One verifier to train: its objective's gin file and bindings, its task and how eval scores
  it."""
  name: str
  gin_file: str
  data: str  # the seqio task/mixture, from tasks.algorithmic.register_policy_candidates
  method: str  # genrm_jax.eval scoring method
  bindings: tuple[str, ...] = ()


VERIFIERS = (
    VerifierSpec("discriminative", "pipeline/verifier_disc.gin", "policy_discriminative",
                 "discriminative"),
    # One verdict token per record against every solution token of the SFT records mixed in:
    # weighted 1, the verdict was 6-8% of the loss (see ObjectiveConfig.verdict_weight).
    VerifierSpec("genrm", "pipeline/verifier_lm.gin", "policy_genrm", "direct",
                 ("ObjectiveConfig.verdict_weight = 8.0",)),
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
  # The cosine runs over policy_decay_steps, past the end of training: a rate still high late in
  # training is what teaches the policy to copy words (with the fixed phrases as single pieces of
  # the vocabulary, loss 0.12 by step 200 and 0.03 at 500).
  policy_steps: int = 500
  policy_decay_steps: int = 1000
  verifier_steps: int = 300
  # Test pool: problems of the test length, N samples each; the paper's GSM8K N is 16.
  test_problems: int = 128
  # Words per test problem. The verifiers also train on this length, on other problems (a hash
  # of the words holds test problems out at any length): with data only up to one word shorter,
  # every 5-letter answer in them was wrong, and they learned that instead of checking.
  test_length: int = 5
  # A second test pool (0: none) of problems longer than any verifier saw: the paper's split
  # (train on 2-4 words, test last letters at 6), evaluated into eval_<L>_words/.
  longer_test_length: int = 6
  num_samples: int = 16
  temperature: float = 0.7
  # Verifier training data: train_samples samples of train_problems_per_length training problems
  # of each of verifier_lengths words (held out from the test problems at any length), then per
  # problem equally many right and wrong ones, at most max_per_class each (the paper's 16), or none.
  verifier_lengths: tuple[int, ...] = (2, 3, 4, 5)
  train_problems_per_length: int = 300
  train_samples: int = 16
  max_per_class: int = 16
  balance: bool = True  # False keeps the plain cap (the quick run's policy solves nothing)
  rationale_style: str = "check"  # algorithmic.RATIONALE_STYLES
  # Even each problem's wrong samples up to its right ones with one-edit wrong versions of the
  # reference solution (algorithmic.HARD_NEGATIVES), so that every problem gives balanced pairs.
  hard_negatives: bool = True
  # Fixed text of the format (formats.PHRASES) as single pieces of the task vocabulary.
  vocab_phrases: bool = True
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

  def generate_args(self, split: str, problems: int, samples: int, out: str,
                    test_length: int | None = None) -> list[str]:
    pc = self.pc
    extra = (["--test_length", str(test_length or pc.test_length)] if split == "test" else
             ["--lengths", ",".join(map(str, pc.verifier_lengths))])
    return ["--checkpoint", self.path("policy", "model"), "--task", pc.task, "--split", split,
            *extra,
            "--num_problems", str(problems), "--num_samples", str(samples),
            "--temperature", str(pc.temperature), "--max_new_tokens",
            str(pc.max_solution_tokens), "--seed", str(pc.seed), "--out", out]

  def eval_args(self, specs: Sequence[VerifierSpec], candidates: str, out: str) -> list[str]:
    pc = self.pc
    args = ["--task", pc.task, "--candidates", candidates, "--out", out,
            "--cot_votes", str(pc.cot_votes), "--seed", str(pc.seed), "--overwrite"]
    for b in ("ScoringConfig.rationale = @SamplerConfig()",
              f"SamplerConfig.max_new_tokens = {pc.max_rationale_tokens}",
              f"SamplerConfig.temperature = {pc.rationale_temperature}",
              f"SamplerConfig.stop_strings = ({self.rationale_stop()!r},)"):
      args += ["--gin_bindings", b]
    for spec in specs:
      args += ["--verifier",
               f"{spec.name}={self.path('verifiers', spec.name, 'model')}:{spec.method}"]
    return args

  def rationale_stop(self) -> str:
    """Where a sampled rationale stops: at the verdict question, which the scorer then feeds. With
    the question as one piece of the vocabulary that is one token; without, stop at its start."""
    return formats.VERDICT_QUESTION if self.pc.vocab_phrases else formats.VERDICT_PREFIX

  def select_verifier_data(self, sampled: str, out: str) -> None:
    """Writes the balanced verifier training set and a data card of it and of what was sampled."""
    pc = self.pc
    flat = [c for p in cands.read_candidates(sampled) for c in p.candidates]
    pool = flat
    if pc.hard_negatives:
      def make(c, rng):
        problem = algorithmic.problem_from_question(pc.task, c["question"])
        kind, sol = algorithmic.hard_negative(problem, rng)
        return {**c, "solution": sol, "extracted_answer": algorithmic.extract_answer(sol),
                "correct": False, "source": f"edit:{kind}"}
      pool = records.fill_negatives(flat, make, pc.max_per_class, pc.seed)
    chosen = records.select_per_question(pool, pc.max_per_class, pc.balance, pc.seed)
    if not chosen:
      raise ValueError(f"{sampled}: no problem has both a right and a wrong sample; sample more "
                       "(train_samples) or more problems")

    def features(c):
      return algorithmic.solution_features(pc.task, c["question"], c["solution"])

    card = {"sampled": records.data_card(flat, features),
            "selected": records.data_card(chosen, features),
            "hard_negatives": sum("source" in c for c in chosen)}
    cands.write_candidates(out, chosen)
    with open(self.path("verifier_data_card.json"), "w") as f:
      json.dump(card, f, indent=2)
    for name in ("sampled", "selected"):
      print(f"verifier data, {name}: {records.format_card(card[name])}", flush=True)
    print(f"verifier data: {card['hard_negatives']} of the selected are hard negatives", flush=True)

  def run(self) -> dict:
    from genrm_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
    from genrm_jax import generate  # pylint: disable=g-import-not-at-top
    from genrm_jax import train  # pylint: disable=g-import-not-at-top
    pc = self.pc
    vocab_path = self.path("vocab.model")
    self.stage("a. task vocabulary", vocab_path, lambda: vocab_lib.train_char_vocab(
        algorithmic.texts_for_vocab(pc.task, seed=pc.seed), vocab_path,
        phrases=formats.PHRASES if pc.vocab_phrases else ()) and 0)
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
    verifier_data = self.path("verifier_data.jsonl")
    self.stage("e. select the verifier data", verifier_data,
               lambda: self.select_verifier_data(train_cands, verifier_data))
    specs = [v for v in VERIFIERS if v.name in pc.verifiers]
    for spec in specs:
      workdir = self.path("verifiers", spec.name)
      self.stage(f"f. train verifier {spec.name}", os.path.join(workdir, "model"),
                 lambda spec=spec, workdir=workdir: train.main(self.train_args(
                     [spec.gin_file], workdir,
                     ["import tasks.algorithmic",
                      f"register_policy_candidates.task = '{pc.task}'",
                      f"register_policy_candidates.candidates_file = '{verifier_data}'",
                      f"register_policy_candidates.max_per_class = {pc.max_per_class}",
                      f"register_policy_candidates.balance = {pc.balance}",
                      f"register_policy_candidates.rationale_style = '{pc.rationale_style}'",
                      f"DataConfig.name = '{spec.data}'",
                      f"TrainConfig.num_steps = {pc.verifier_steps}",
                      *_schedule(pc.verifier_steps), *spec.bindings,
                      f"TrainConfig.init_from = 'genrm:{self.path('policy')}'"])))
    eval_dir = self.path("eval")
    self.stage("g. Best-of-N evaluation", os.path.join(eval_dir, "results.json"),
               lambda: eval_lib.main(self.eval_args(specs, test_cands, eval_dir)))
    if pc.longer_test_length:
      longer = pc.longer_test_length
      longer_cands = self.path(f"test_candidates_{longer}_words.jsonl")
      self.stage(f"h. sample test candidates of {longer} words", longer_cands,
                 lambda: generate.main(self.generate_args("test", pc.test_problems,
                                                          pc.num_samples, longer_cands, longer)))
      longer_dir = self.path(f"eval_{longer}_words")
      self.stage(f"i. Best-of-N evaluation at {longer} words (the paper's split)",
                 os.path.join(longer_dir, "results.json"),
                 lambda: eval_lib.main(self.eval_args(specs, longer_cands, longer_dir)))
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
