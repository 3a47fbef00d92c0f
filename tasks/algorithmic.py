"""seqio tasks for last-letter concatenation and word sorting (see genrm_jax.word_puzzles)."""

from __future__ import annotations

import functools

import gin

from genrm_jax import word_puzzles
from genrm_jax import candidates as candidates_lib
from genrm_jax import data
from genrm_jax import records

SPLITS = ("train", "validation", "test")


def register_algorithmic(task: str, lam: float | None = None, problems_per_length: int = 350,
                         samples_per_problem: int = 4, error_rate: float = 0.5,
                         seed: int = 0) -> list[str]:
  """Registers the ``<task>_*`` tasks and mixtures; lambda: the paper's unless given.

  Each split holds ``problems_per_length`` problems of each of its lengths (train/validation 2-4
  words, test 6 or 5) and ``samples_per_problem`` synthetic candidates a problem.
  """
  cands = functools.partial(word_puzzles.candidates, task, problems_per_length=problems_per_length,
                            samples_per_problem=samples_per_problem, error_rate=error_rate,
                            seed=seed)
  gold = functools.partial(word_puzzles.gold_candidates, task,
                           problems_per_length=problems_per_length, seed=seed)
  return data.register_genrm_tasks(task, cands, word_puzzles.INSTRUCTIONS[task], SPLITS,
                                   lam=records.PAPER_LAMBDA[task] if lam is None else lam,
                                   gold=gold, seed=seed)


# Registered under unlock: the trainer may import tasks after gin has locked its config. The
# mixture settings come from DataConfig.mixture (tasks.register_all), not from gin bindings here.
MIXTURE_ARGS = ("lam", "max_per_class", "balance", "candidates_file", "rationale_style", "task")
with gin.unlock_config():
  register_algorithmic = gin.configurable(register_algorithmic, denylist=["lam"])

for _task in word_puzzles.TASKS:
  register_algorithmic(_task)


def register_policy_sft(task: str, lengths: tuple[int, ...] = (2, 3, 4, 5, 6),
                        problems_per_length: int = 2000, seed: int = 0) -> str:
  """``<task>_policy_sft``: SFT of a policy on reference solutions of ``lengths`` words.

  The end-to-end experiment trains its own small policy (the paper took a few-shot Gemma-2B) on
  training-split problems only (``word_puzzles.split_of``), so it never sees a test or validation
  question, whichever test length is evaluated.
  """

  def gold(split: str):
    del split  # one split: the policy's training data
    problems = [p for n in lengths
                for p in word_puzzles.make_problems(task, n, problems_per_length, seed + 7,
                                                   "train")]
    return [{"question_id": f"policy-{i}", "question": p.question, "solution": p.solution,
             "correct": True} for i, p in enumerate(problems)]

  name = f"{task}_policy_sft"
  data.register_task(name, "lm", lambda split: records.correct(gold(split),
                                                               word_puzzles.INSTRUCTIONS[task]),
                     ("train",))
  return name


def register_policy_candidates(task: str = word_puzzles.LAST_LETTERS,
                               candidates_file: str | None = None, src: str = "policy",
                               lam: float | None = None, problems_per_length: int = 350,
                               max_per_class: int | None = records.PAPER_MAX_PER_CLASS,
                               balance: bool = True,
                               rationale_style: str = word_puzzles.DEFAULT_RATIONALE_STYLE,
                               seed: int = 0) -> list[str]:
  """``<src>_*`` verifier tasks from candidates sampled from a policy (a candidates JSONL).

  Each candidate gets the programmatic step-by-step rationale of ``word_puzzles.rationale``; the
  lambda-weighted SFT data are the reference solutions of the training problems. With no
  ``candidates_file`` nothing is registered (the default of ``tasks.register_all``). The verifier
  data are ``records.select_per_question``'s: by default each question gives equally many right
  and wrong candidates (at most 16 each, the paper's cap) or none, so that nothing but checking
  the solution predicts its label.
  """
  if not candidates_file:
    return []

  def cands(split: str):
    del split  # the file is the training set
    out = []
    for pool in candidates_lib.read_candidates(candidates_file):
      for c in pool.candidates:
        problem = word_puzzles.problem_from_question(task, c["question"])
        out.append({**c, "rationale": word_puzzles.rationale(problem, c["solution"],
                                                            rationale_style)})
    return records.select_per_question(out, max_per_class, balance, seed)

  gold = functools.partial(word_puzzles.gold_candidates, task,
                           problems_per_length=problems_per_length, seed=seed)
  return data.register_genrm_tasks(src, cands, word_puzzles.INSTRUCTIONS[task], ("train",),
                                   lam=records.PAPER_LAMBDA[task] if lam is None else lam,
                                   gold=gold, seed=seed)


with gin.unlock_config():
  register_policy_sft = gin.configurable(register_policy_sft)
  register_policy_candidates = gin.configurable(register_policy_candidates,
                                                denylist=MIXTURE_ARGS)

for _task in word_puzzles.TASKS:
  register_policy_sft(_task)
