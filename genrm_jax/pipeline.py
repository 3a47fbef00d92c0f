"""The main job: a complete GenRM experiment on CPU, from nothing to a Best-of-N table.

    python -m genrm_jax.pipeline [--gin_file pipeline/quick.gin] [--out runs/genrm_demo]

The paper's algorithmic experiment (last-letter concatenation by default) scaled down to a small
Gemma trained from scratch. Each stage runs what the CLI a TPU user runs calls, configured by gin
files from ``gin_configs/pipeline/`` and this module's settings (a training stage is an
``Experiment`` built here, recorded in its ``config.gin``), with its outputs in one run folder:

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
trainer itself resumes from its checkpoints), and a run that changes only later stages (say the
verifiers' depth) reuses the earlier ones; ``stages.json`` records what settings made each stage,
and a stage made with other settings than the run asks for stops the run with the fields named.
Same seed, same table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import gin

from genrm_jax import candidates as cands
from genrm_jax import cli
from genrm_jax import eval as eval_lib
from genrm_jax import files
from genrm_jax import formats
from genrm_jax import generate
from genrm_jax import records
from genrm_jax import train
from genrm_jax import vocab as vocab_lib
from genrm_jax import word_puzzles
from genrm_jax.config import SamplerConfig, ScoringConfig

@dataclasses.dataclass(frozen=True)
class VerifierRecipe:
  """One verifier to train: its objective's gin file and settings, its task and how eval scores
  it."""
  name: str
  gin_file: str
  data: str  # the seqio task/mixture, from tasks.algorithmic.register_policy_candidates
  method: str  # genrm_jax.eval scoring method
  # ObjectiveConfig fields set over the gin file's: a value, or a mapping task -> value.
  objective: tuple[tuple[str, float | Mapping[str, float]], ...] = ()
  steps: str = "verifier_steps"  # the PipelineConfig field with its number of training steps

  def objective_for(self, task: str) -> tuple[tuple[str, float], ...]:
    return tuple((k, v[task] if isinstance(v, Mapping) else v) for k, v in self.objective)


# One verdict token per record against every solution token of the SFT records mixed in:
# weighted 1, the verdict is a small share of the loss (see ObjectiveConfig.verdict_weight).
_VERDICT_WEIGHT = 8.0
# The discriminative RM gets GenRM's SFT term in the same proportion to its verdicts: GenRM has
# lambda SFT records (T solution tokens each, weight 1) per verdict of weight 8; half of the
# classifier's examples are correct solutions, so T/2 SFT tokens per BCE term of weight 1. Without
# it (the paper's BCE alone) the classifier learned answer length but not answer letters
# (docs/experiments.md#the-discriminative-rm-read-at-its-last-token-taught-at-every-token).
_DISC_SFT_WEIGHT = 2 * records.PAPER_LAMBDA[word_puzzles.LAST_LETTERS] / _VERDICT_WEIGHT
# On last letters also the label at every solution token, weighed as much as the last token's
# (Cobbe et al.'s verifier). Read only at the last token, it did not fit the letter check on its
# own training data; on word sorting the per-token label did harm
# (docs/experiments.md#the-discriminative-rm-read-at-its-last-token-taught-at-every-token).
_DISC_TOKEN_WEIGHT = {word_puzzles.LAST_LETTERS: 1.0, word_puzzles.WORD_SORTING: 0.0}

VERIFIERS = (
    VerifierRecipe("discriminative", "pipeline/verifier_disc.gin", "policy_discriminative",
                   "discriminative", (("disc_sft_weight", _DISC_SFT_WEIGHT),
                                      ("disc_token_weight", _DISC_TOKEN_WEIGHT))),
    VerifierRecipe("genrm", "pipeline/verifier_genrm.gin", "policy_genrm", "direct",
                   (("verdict_weight", _VERDICT_WEIGHT),)),
    # The same weight on each verdict its rationale gives on the way ("walk" style): at 1 one
    # seed's rationales marked nearly every pair Yes, matched or not.
    VerifierRecipe("genrm_cot", "pipeline/verifier_lm.gin", "policy_genrm_cot", "cot",
                   (("verdict_weight", _VERDICT_WEIGHT),), steps="cot_verifier_steps"),
)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """The experiment; the defaults are the embedded default run (see the README for its table and time)."""
  task: str = word_puzzles.LAST_LETTERS
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
  # The discriminative RM and direct GenRM: at half this, GenRM's gain was within its noise and the
  # discriminative RM read length backwards (docs/experiments.md).
  verifier_steps: int = 600
  # GenRM-CoT's rationales are sampled, so every copy in them must hold, not only be likely: with
  # fewer steps its rationales lost their place in the question and, seeing under one pass of
  # the verifier data, slid the copies of a wrong answer towards the right one
  # (docs/experiments.md#more-steps-for-genrm-cot-the-four-seeds-together).
  cot_verifier_steps: int = 1200
  # Layers the verifiers add on top of the policy's 3 (identity maps at first, see
  # train.append_identity_layers). With the policy's depth alone, GenRM could not fit its own
  # hard negatives (docs/experiments.md#why-the-verifiers-are-three-layers-deeper-than-the-policy):
  # comparing an answer letter with the step it copies, then carrying the mismatch to the
  # verdict, takes more layers than copying does.
  verifier_add_layers: int = 3
  # Test pool: problems of the test length, N samples each; the paper's GSM8K N is 16. At 128
  # problems the standard error of a verifier's paired gain over pass@1 was as large as GenRM's
  # gain; sampling is cheap, and twice the problems shrink it by a factor of 1.4.
  test_problems: int = 256
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
  rationale_style: str = word_puzzles.DEFAULT_RATIONALE_STYLE  # see word_puzzles.RATIONALE_STYLES
  # Even each problem's wrong samples up to its right ones with one-edit wrong versions of the
  # reference solution (word_puzzles.HARD_NEGATIVES), so that every problem gives balanced pairs.
  hard_negatives: bool = True
  # Fixed text of the format (formats.PHRASES) as single pieces of the task vocabulary.
  vocab_phrases: bool = True
  cot_votes: int = 4
  # Longest solution / rationale sampled (6-word solutions and their last-letter checks fit with
  # room; word sorting's walk runs to 300 tokens at 5 words: give it 320). The rationale stops at
  # "Verification:": the verdict question that follows is fixed text, fed to the verifier rather
  # than sampled.
  max_solution_tokens: int = 128
  max_rationale_tokens: int = 160
  rationale_temperature: float = 0.7
  verifiers: tuple[str, ...] = tuple(v.name for v in VERIFIERS)
  # Stage f's seed (the verifiers' batch order, added layers' and head's initialisation); None:
  # ``seed``. On the same stages a-e two trainings of a verifier differ well beyond their standard
  # errors (docs/experiments.md), so an order between verifiers needs several: the README's other
  # trainings are ``--gin_bindings 'PipelineConfig.verifier_seed = 10'`` in a copy of
  # the run folder without its verifiers/ and eval*/, or with another ``out`` (stages a-e redone:
  # on one machine they come out byte for byte the same).
  verifier_seed: int | None = None
  # Gin bindings for every training stage, over its gin files (what the pipeline sets itself,
  # below, it sets last: seeds, steps and schedule, data, vocabulary, starting point).
  extra_bindings: tuple[str, ...] = ()


cli.register(PipelineConfig)


class StageFailed(RuntimeError):
  """A stage ended with an error status or without its output (its own error line came first)."""


# The PipelineConfig fields each stage's output depends on (through the stages before it): a
# stage found done is reused only if these are what made it. Without the check, a folder from
# another configuration silently fed its policy and samples into a new run's table.
_VOCAB = frozenset({"task", "seed", "vocab_phrases"})
_POLICY = _VOCAB | {"model_gin", "policy_gin", "policy_steps", "policy_decay_steps",
                    "extra_bindings"}
_SAMPLING = _POLICY | {"temperature", "max_solution_tokens"}
_TEST = _SAMPLING | {"test_problems", "test_length", "num_samples"}
_VERIFIER_DATA = _SAMPLING | {"verifier_lengths", "train_problems_per_length", "train_samples",
                              "max_per_class", "balance", "hard_negatives"}
_VERIFIER = _VERIFIER_DATA | {"verifier_steps", "cot_verifier_steps", "verifier_add_layers",
                              "rationale_style", "verifier_seed"}
_SCORING = {"cot_votes", "max_rationale_tokens", "rationale_temperature", "verifiers"}
_LONGER_TEST = _SAMPLING | {"test_problems", "longer_test_length", "num_samples"}
STAGE_SETTINGS = {
    "vocabulary": _VOCAB, "policy": _POLICY, "test candidates": _TEST,
    "verifier candidates": _SAMPLING | {"verifier_lengths", "train_problems_per_length",
                                        "train_samples"},
    "verifier data": _VERIFIER_DATA, "verifier": _VERIFIER,
    "evaluation": _VERIFIER | _TEST | _SCORING, "longer test candidates": _LONGER_TEST,
    "longer evaluation": _VERIFIER | _LONGER_TEST | _SCORING,
}
SETTINGS_FILE = "stages.json"  # in the run folder: each finished stage's settings


class Runner:
  """Runs the stages in order, skipping those already done, and times them."""

  def __init__(self, pc: PipelineConfig):
    self.pc = pc
    self.out = os.path.abspath(pc.out)
    os.makedirs(self.out, exist_ok=True)
    self.timings: dict[str, float] = {}

  def path(self, *parts: str) -> str:
    return os.path.join(self.out, *parts)

  def settings(self, kind: str) -> dict[str, Any]:
    """The fields of ``STAGE_SETTINGS[kind]`` as JSON stores them (tuples become lists)."""
    return json.loads(json.dumps({f: getattr(self.pc, f) for f in sorted(STAGE_SETTINGS[kind])}))

  def recorded(self) -> dict[str, Any]:
    path = self.path(SETTINGS_FILE)
    if not os.path.exists(path):
      return {}
    with open(path) as f:
      return json.load(f)

  def stage(self, name: str, done: str, fn: Callable[[], int | None], kind: str,
            recipe: Mapping[str, Any] | None = None) -> None:
    """Runs ``fn`` unless ``done`` exists; ``recipe``: settings of the stage that are not
    PipelineConfig fields (a verifier's objective settings), recorded and checked alike."""
    want = {**self.settings(kind), **json.loads(json.dumps(dict(recipe or {})))}
    if os.path.exists(done):
      made = self.recorded().get(name)
      if made is None:
        print(f"== {name}: done already ({done}; its settings were not recorded, so not checked)",
              flush=True)
        return
      changed = [f"{k}={made.get(k)!r} there, {v!r} now" for k, v in want.items()
                 if made.get(k) != v]
      if changed:
        raise StageFailed(
            f"{done} was made with other settings ({'; '.join(changed)}): use another --out, "
            f"or delete it and the stages after it to redo them")
      print(f"== {name}: done already ({done})", flush=True)
      return
    print(f"== {name}", flush=True)
    t0 = time.time()
    gin.clear_config()
    rc = fn()
    gin.clear_config()
    if rc:
      raise StageFailed(f"pipeline stage {name!r} failed with status {rc}")
    if not os.path.exists(done):
      raise StageFailed(f"pipeline stage {name!r} did not produce {done}")
    self.timings[name] = time.time() - t0
    files.write_atomic(self.path(SETTINGS_FILE),
                       json.dumps({**self.recorded(), name: want}, indent=2))
    print(f"== {name}: {self.timings[name]:.0f} s", flush=True)

  def experiment(self, gin_file: str, data: str, steps: int, decay_steps: int | None = None,
                 init_from: str = "scratch", objective: Sequence[tuple[str, Any]] = (),
                 mixture: records.MixtureConfig | None = None, add_layers: int = 0,
                 fit_rows: bool = False, seed: int | None = None
                 ) -> tuple[train.Experiment, str]:
    """A training stage's experiment: the model and stage gin files (with ``extra_bindings``), then
    what the pipeline decides; and its config.gin text, the gin files' operative config followed
    by the bindings that the pipeline's settings amount to."""
    pc = self.pc
    seed = pc.seed if seed is None else seed
    cli.parse_gin([pc.model_gin, gin_file], pc.extra_bindings)
    base = train.experiment_from_gin()
    operative = gin.operative_config_str()
    gin.clear_config()
    vocab_path = self.path("vocab.model")
    # Short CPU runs: warm up over a tenth of the run, then one cosine (to its end by default).
    exp = dataclasses.replace(
        base,
        model=base.model.replace(vocab_size=vocab_lib.load_vocab(vocab_path).vocab_size,
                                 num_layers=base.model.num_layers + add_layers),
        train=dataclasses.replace(base.train, seed=seed, num_steps=steps, init_from=init_from,
                                  add_layers=add_layers),
        data=dataclasses.replace(
            base.data, name=data, seed=seed, vocab_path=vocab_path,
            mixture=mixture or base.data.mixture,
            seq_len=self.row_length(data, base.data.seq_len, mixture or base.data.mixture)
            if fit_rows else base.data.seq_len),
        optim=dataclasses.replace(base.optim, warmup_steps=max(1, steps // 10),
                                  decay_steps=decay_steps or steps),
        objective=dataclasses.replace(base.objective, **dict(objective)))
    bindings = train.bindings_between(base, exp)
    return exp, f"{operative}\n# Set by genrm_jax.pipeline:\n" + "\n".join(bindings) + "\n"

  def row_length(self, data_name: str, least: int, mixture: records.MixtureConfig) -> int:
    """``least``, or rows long enough for the longest record of the task or mixture (rounded up
    to 32) if that is longer: the trainer drops a record longer than its rows, and the stage gin
    files size rows for last letters, whose records are about half as long as word sorting's."""
    import seqio  # pylint: disable=g-import-not-at-top
    import tasks  # pylint: disable=g-import-not-at-top
    from genrm_jax import data  # pylint: disable=g-import-not-at-top
    tasks.register_all(mixture)
    provider = seqio.get_mixture_or_task(data_name)
    names = ([t.name for t in provider.tasks] if isinstance(provider, seqio.Mixture)
             else [data_name])
    longest = 0
    for name in names:
      for ex in data.tokenized_examples(name, "train", repeat=False, shuffle=False,
                                        vocab=self.path("vocab.model")):
        # BOS + inputs + targets (EOS included) bounds every objective's row segment.
        longest = max(longest, 1 + len(ex["inputs"]) + len(ex.get("targets", ())))
    need = -(-longest // 32) * 32
    if need > least:
      print(f"{data_name}: rows of {need} positions, not {least}: its longest record has "
            f"{longest} tokens", flush=True)
    return max(least, need)

  def mixture(self) -> records.MixtureConfig:
    """The verifiers' data: the selected samples of the policy, with programmatic rationales."""
    pc = self.pc
    return records.MixtureConfig(max_per_class=pc.max_per_class, balance=pc.balance,
                                 candidates_file=self.path("verifier_data.jsonl"),
                                 candidates_task=pc.task, rationale_style=pc.rationale_style)

  def train_stage(self, workdir: str, *args, **kwargs) -> int:
    exp, config = self.experiment(*args, **kwargs)
    rc = train.launch(exp, workdir, config)
    # A trainer stopped by SIGTERM exits cleanly with a checkpoint and no model directory.
    if rc == 0 and not os.path.exists(os.path.join(workdir, "model")):
      raise StageFailed(f"training in {workdir} stopped before step {exp.train.num_steps} (a "
                        "signal); its checkpoints are kept: run the same command to resume")
    return rc

  def sample(self, split: str, problems: int, samples: int, out: str,
             test_length: int | None = None) -> None:
    pc = self.pc
    gc = generate.GenerateConfig(
        checkpoint=self.path("policy", "model"), task=pc.task, split=split, num_problems=problems,
        num_samples=samples, seed=pc.seed, out=out,
        **({"test_length": test_length or pc.test_length} if split == "test" else
           {"lengths": tuple(pc.verifier_lengths)}))
    sc = SamplerConfig(temperature=pc.temperature, max_new_tokens=pc.max_solution_tokens)
    print(generate.write(gc, sc), flush=True)

  def evaluate(self, recipes: Sequence[VerifierRecipe], candidates: str, out: str) -> None:
    pc = self.pc
    ec = eval_lib.EvalConfig(
        task=pc.task, candidates=candidates, out=out, cot_votes=pc.cot_votes, seed=pc.seed,
        overwrite=True, verifiers=tuple(
            f"{v.name}={self.path('verifiers', v.name, 'model')}:{v.method}" for v in recipes))
    opts = ScoringConfig(rationale=SamplerConfig(
        max_new_tokens=pc.max_rationale_tokens, temperature=pc.rationale_temperature,
        stop_strings=(self.rationale_stop(),)))
    eval_lib.run(ec, SamplerConfig(), scoring_opts=opts)

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
        problem = word_puzzles.problem_from_question(pc.task, c["question"])
        kind, sol = word_puzzles.hard_negative(problem, rng)
        return {**c, "solution": sol, "extracted_answer": word_puzzles.extract_answer(sol),
                "correct": False, "source": f"edit:{kind}"}
      pool = records.fill_negatives(flat, make, pc.max_per_class, pc.seed)
    chosen = records.select_per_question(pool, pc.max_per_class, pc.balance, pc.seed)
    if not chosen:
      raise ValueError(f"{sampled}: no problem has both a right and a wrong sample; sample more "
                       "(train_samples) or more problems")

    def features(c):
      return word_puzzles.solution_features(pc.task, c["question"], c["solution"])

    card = {"sampled": records.data_card(flat, features),
            "selected": records.data_card(chosen, features),
            "hard_negatives": sum("source" in c for c in chosen)}
    cands.write_candidates(out, chosen)
    files.write_atomic(self.path("verifier_data_card.json"), json.dumps(card, indent=2))
    for name in ("sampled", "selected"):
      print(f"verifier data, {name}: {records.format_card(card[name])}", flush=True)
    print(f"verifier data: {card['hard_negatives']} of the selected are hard negatives", flush=True)

  def run(self) -> dict:
    pc = self.pc
    vocab_path = self.path("vocab.model")
    self.stage("a. task vocabulary", vocab_path, lambda: vocab_lib.train_char_vocab(
        word_puzzles.texts_for_vocab(pc.task, seed=pc.seed), vocab_path,
        phrases=formats.PHRASES if pc.vocab_phrases else ()) and 0, "vocabulary")
    self.stage("b. train the policy (SFT on correct solutions)", self.path("policy", "model"),
               lambda: self.train_stage(self.path("policy"), pc.policy_gin,
                                        f"{pc.task}_policy_sft", pc.policy_steps,
                                        pc.policy_decay_steps), "policy")
    test_cands = self.path("test_candidates.jsonl")
    self.stage("c. sample test candidates", test_cands,
               lambda: self.sample("test", pc.test_problems, pc.num_samples, test_cands),
               "test candidates")
    train_cands = self.path("train_candidates.jsonl")
    self.stage("d. sample verifier training candidates", train_cands,
               lambda: self.sample("train", pc.train_problems_per_length, pc.train_samples,
                                   train_cands), "verifier candidates")
    verifier_data = self.path("verifier_data.jsonl")
    self.stage("e. select the verifier data", verifier_data,
               lambda: self.select_verifier_data(train_cands, verifier_data), "verifier data")
    recipes = [v for v in VERIFIERS if v.name in pc.verifiers]
    for recipe in recipes:
      workdir = self.path("verifiers", recipe.name)
      objective = recipe.objective_for(pc.task)
      self.stage(f"f. train verifier {recipe.name}", os.path.join(workdir, "model"),
                 lambda recipe=recipe, workdir=workdir, objective=objective: self.train_stage(
                     workdir, recipe.gin_file, recipe.data, getattr(pc, recipe.steps),
                     init_from=f"genrm:{self.path('policy')}", objective=objective,
                     mixture=self.mixture(), add_layers=pc.verifier_add_layers,
                     fit_rows=True, seed=pc.verifier_seed), "verifier",
                 recipe={"objective": dict(objective)})
    eval_dir = self.path("eval")
    self.stage("g. Best-of-N evaluation", os.path.join(eval_dir, "results.json"),
               lambda: self.evaluate(recipes, test_cands, eval_dir), "evaluation")
    if pc.longer_test_length:
      longer = pc.longer_test_length
      longer_cands = self.path(f"test_candidates_{longer}_words.jsonl")
      self.stage(f"h. sample test candidates of {longer} words", longer_cands,
                 lambda: self.sample("test", pc.test_problems, pc.num_samples, longer_cands,
                                     longer), "longer test candidates")
      longer_dir = self.path(f"eval_{longer}_words")
      self.stage(f"i. Best-of-N evaluation at {longer} words (the paper's split)",
                 os.path.join(longer_dir, "results.json"),
                 lambda: self.evaluate(recipes, longer_cands, longer_dir), "longer evaluation")
    with open(os.path.join(eval_dir, "results.json")) as f:
      results = json.load(f)
    files.write_atomic(self.path("timings.json"), json.dumps(self.timings, indent=2))
    return results


def parse_config(gin_files: Sequence[str], bindings: Sequence[str], out: str | None
                 ) -> PipelineConfig:
  cli.parse_gin(gin_files, bindings)
  pc = cli.configure(PipelineConfig)
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

  def run() -> None:
    pc = parse_config(args.gin_file, args.gin_bindings, args.out)
    t0 = time.time()
    try:
      Runner(pc).run()
    except StageFailed as e:
      cli.fail(str(e))
    print(f"pipeline finished in {time.time() - t0:.0f} s; outputs in {os.path.abspath(pc.out)}",
          flush=True)

  return cli.main(run)

if __name__ == "__main__":
  sys.exit(main())
