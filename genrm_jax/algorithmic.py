"""The paper's algorithmic tasks, generated locally: last-letter concatenation and word sorting.

Words are random lowercase letter strings of 3-7 letters (as in ../shared/notes/tiny-scale.md): no
word list to ship or license, every letter equally likely, and a character-level vocabulary covers
them. Problems are drawn deterministically from a seed; the paper's length splits are kept (last
letters: train 2-4 words, test 6; word sorting: train 2-4, test 5), and validation holds other
2-4-word problems than train.

The prompt keeps the GenRM structure of ``formats`` without an instruction line (see
``INSTRUCTIONS``). Solutions are compact steps, then "The answer is X.":

    last letters   Q: abc defg          word sorting   Q: pear apple fig
                   abc:c                               1 apple
                   defg:g                              2 fig
                   The answer is cg.                   3 pear
                                                       The answer is apple fig pear.

``synthetic_solve`` is the documented stand-in for a policy: with probability ``error_rate`` it
makes one realistic mistake: a miscopied word (one letter changed; for last letters the changed
letter is the last one, so it reaches the answer), a wrong letter (another letter of the word), a
dropped step, or (sorting) two words out of order. Every mistake changes the final answer, so, as
with the tiny policy (98-100% of its wrong samples had a wrong step), a step check finds it.

``rationale`` is the programmatic step-by-step verification (as the paper made for these tasks):
each solution line is compared with the expected step, then the answer, then the verdict.
"""

from __future__ import annotations

import dataclasses
import random
import re
import string
from typing import Any

from genrm_jax import answers
from genrm_jax import formats

LAST_LETTERS = "last_letters"
WORD_SORTING = "word_sorting"
TASKS = (LAST_LETTERS, WORD_SORTING)
# The line put before "Q:" in every prompt. Empty: a model here learns one task, and on two CPU
# cores a 43-token instruction was 29% of each policy example and left room for one example, not
# two, per packed 256-token row; without it the tiny policy learned to copy words after ~350
# steps instead of ~750. A run that mixes the tasks in one model sets task lines here.
INSTRUCTIONS = {LAST_LETTERS: "", WORD_SORTING: ""}
TRAIN_LENGTHS = (2, 3, 4)
TEST_LENGTH = {LAST_LETTERS: 6, WORD_SORTING: 5}
SPLIT_SEED_OFFSET = {"train": 0, "validation": 1, "test": 2}
WORD_LENGTHS = (3, 7)


@dataclasses.dataclass(frozen=True)
class Problem:
  task: str
  words: tuple[str, ...]

  @property
  def question(self) -> str:
    return " ".join(self.words)

  @property
  def answer(self) -> str:
    if self.task == LAST_LETTERS:
      return "".join(w[-1] for w in self.words)
    return " ".join(sorted(self.words))

  def steps(self) -> list[str]:
    if self.task == LAST_LETTERS:
      return [f"{w}:{w[-1]}" for w in self.words]
    return [f"{i} {w}" for i, w in enumerate(sorted(self.words), start=1)]

  @property
  def solution(self) -> str:
    return render(self.steps(), self.answer)


def render(steps: list[str], answer: str) -> str:
  return "\n".join([*steps, f"The answer is {answer}."])


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"unknown algorithmic task {task!r}; expected one of {TASKS}")


def random_word(rng: random.Random) -> str:
  return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(*WORD_LENGTHS)))


def make_problems(task: str, num_words: int, count: int, seed: int,
                  exclude: set[tuple[str, ...]] | None = None) -> list[Problem]:
  """``count`` distinct problems of ``num_words`` words (none in ``exclude``), from ``seed``."""
  _check_task(task)
  rng = random.Random(f"{task}/{num_words}/{seed}")
  seen = set(exclude or ())
  out = []
  while len(out) < count:
    words = tuple(random_word(rng) for _ in range(num_words))
    if task == WORD_SORTING and len(set(words)) < num_words:
      continue  # duplicates make "sorted" steps ambiguous
    if words not in seen:
      seen.add(words)
      out.append(Problem(task, words))
  return out


def split_problems(task: str, split: str, count: int, seed: int = 0,
                   test_length: int | None = None) -> list[Problem]:
  """Problems of a split: train / validation on 2-4 words (disjoint), test on the longer length
  (the paper's, unless ``test_length`` names another)."""
  _check_task(task)
  if split not in SPLIT_SEED_OFFSET:
    raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_SEED_OFFSET)}")
  if split == "test":
    n = test_length or TEST_LENGTH[task]
    # At a training length the test problems are still held out: none is a train/validation one.
    exclude = ({p.words for s in ("train", "validation") for p in split_problems(task, s, count, seed)}
               if n in TRAIN_LENGTHS else None)
    return make_problems(task, n, count, seed + SPLIT_SEED_OFFSET["test"], exclude)
  exclude = None
  if split == "validation":
    exclude = {p.words for n in TRAIN_LENGTHS for p in make_problems(task, n, count, seed)}
  return [p for n in TRAIN_LENGTHS
          for p in make_problems(task, n, count, seed + SPLIT_SEED_OFFSET[split], exclude)]


def problem_from_question(task: str, question: str) -> Problem:
  """The problem a prompt's question line states (words separated by spaces)."""
  _check_task(task)
  words = tuple(question.split())
  if not words or not all(w.isalpha() and w.islower() for w in words):
    raise ValueError(f"{task}: question {question!r} is not a list of lowercase words")
  return Problem(task, words)


def _other_letter(rng: random.Random, letter: str) -> str:
  return rng.choice([c for c in string.ascii_lowercase if c != letter])


def synthetic_solve(problem: Problem, rng: random.Random, error_rate: float) -> str:
  """A candidate solution; with probability ``error_rate`` it holds one mistake (see module doc)."""
  words = list(problem.words)
  if rng.random() >= error_rate:
    return problem.solution
  kinds = ["miscopy", "wrong_letter", "drop"] if problem.task == LAST_LETTERS else [
      "miscopy", "drop", "order"]
  kind = rng.choice(kinds)
  if problem.task == LAST_LETTERS:
    i = rng.randrange(len(words))
    pairs = [(w, w[-1]) for w in words]
    if kind == "miscopy":
      w = words[i][:-1] + _other_letter(rng, words[i][-1])
      pairs[i] = (w, w[-1])
    elif kind == "wrong_letter":
      pairs[i] = (words[i], _other_letter(rng, words[i][-1]))
    else:
      del pairs[i]
    return render([f"{w}:{c}" for w, c in pairs], "".join(c for _, c in pairs))
  order = sorted(words)
  i = rng.randrange(len(order))
  if kind == "miscopy":
    j = rng.randrange(len(order[i]))
    order[i] = order[i][:j] + _other_letter(rng, order[i][j]) + order[i][j + 1:]
  elif kind == "drop":
    del order[i]
  else:
    i = min(i, len(order) - 2)
    order[i], order[i + 1] = order[i + 1], order[i]
  return render([f"{k} {w}" for k, w in enumerate(order, start=1)], " ".join(order))


def extract_answer(solution: str) -> str | None:
  """The text after the last "The answer is", without the final period; None if absent."""
  return answers.extract_answer(solution, numeric=False)


def is_correct(problem: Problem, solution: str) -> bool:
  got = extract_answer(solution)
  return got is not None and " ".join(got.split()) == problem.answer


_ANSWER_LINE = re.compile(r"^The answer is .*$")


def rationale(problem: Problem, solution: str) -> str:
  """Step-by-step verification of ``solution``: each step, the answer, then the verdict."""
  steps = [l.strip() for l in solution.strip().split("\n")
           if l.strip() and not _ANSWER_LINE.match(l.strip())]
  expected = problem.steps()
  lines = []
  for k in range(max(len(steps), len(expected))):
    if k >= len(steps):
      lines.append(f"missing {expected[k]}")
    elif k >= len(expected):
      lines.append(f"{steps[k]} extra")
    elif steps[k] == expected[k]:
      lines.append(f"{steps[k]} ok")
    else:
      lines.append(f"{steps[k]} wrong, {expected[k]}")
  got = extract_answer(solution)
  ok = is_correct(problem, solution)
  lines.append(f"answer {got} {'ok' if ok else 'wrong, ' + problem.answer}")
  return formats.cot_target("\n".join(lines), ok)


def candidates(task: str, split: str, *, problems_per_length: int, samples_per_problem: int,
               error_rate: float = 0.5, seed: int = 0) -> list[dict[str, Any]]:
  """Labelled synthetic candidates (with rationales) for a split, in the ``records`` format."""
  problems = split_problems(task, split, problems_per_length, seed)
  rng = random.Random(f"{task}/{split}/{seed}/solver")
  out = []
  for qid, p in enumerate(problems):
    for _ in range(samples_per_problem):
      sol = synthetic_solve(p, rng, error_rate)
      out.append({"question_id": f"{split}-{qid}", "question": p.question, "solution": sol,
                  "correct": is_correct(p, sol), "rationale": rationale(p, sol),
                  "gold_answer": p.answer})
  return out


def gold_candidates(task: str, split: str, *, problems_per_length: int,
                    seed: int = 0) -> list[dict[str, Any]]:
  """One reference solution per problem (the SFT-on-correct-solutions data)."""
  return [{"question_id": f"{split}-{qid}", "question": p.question, "solution": p.solution,
           "correct": True, "gold_answer": p.answer}
          for qid, p in enumerate(split_problems(task, split, problems_per_length, seed))]


def texts_for_vocab(task: str, count: int = 50, seed: int = 0) -> list[str]:
  """Sample prompts and solutions covering the characters of a task, to train a char vocabulary."""
  out = []
  for c in candidates(task, "train", problems_per_length=count, samples_per_problem=1, seed=seed):
    prompt = formats.cot_prompt(c["question"], c["solution"], INSTRUCTIONS[task])
    out.append(prompt + c["rationale"])
  return out
