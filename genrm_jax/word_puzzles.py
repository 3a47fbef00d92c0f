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

import collections
import dataclasses
import random
import re
import string
import zlib
from typing import Any

from genrm_jax import answers
from genrm_jax import formats

LAST_LETTERS = "last_letters"
WORD_SORTING = "word_sorting"
TASKS = (LAST_LETTERS, WORD_SORTING)
# The line put before "Q:" in every prompt. Empty: a model here learns one task, and an
# instruction took a large share of each short policy example and of each packed row, slowing
# the tiny policy's learning to copy. A run that mixes the tasks in one model sets task lines here.
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


def split_of(words: tuple[str, ...]) -> str:
  """The split a problem belongs to, by a hash of its words: one in 8 is a test problem and one in
  8 a validation problem. The splits are disjoint whatever sizes and lengths are drawn, and any
  data (the policy's SFT set, verifier data at the test length) can avoid every test problem."""
  h = zlib.crc32(" ".join(words).encode()) % 8
  return "test" if h == 0 else "validation" if h == 1 else "train"


def make_problems(task: str, num_words: int, count: int, seed: int,
                  split: str | None = None) -> list[Problem]:
  """``count`` distinct problems of ``num_words`` words (of ``split`` only, if given), from ``seed``."""
  _check_task(task)
  rng = random.Random(f"{task}/{num_words}/{seed}")
  seen = set()
  out = []
  while len(out) < count:
    words = tuple(random_word(rng) for _ in range(num_words))
    if task == WORD_SORTING and len(set(words)) < num_words:
      continue  # duplicates make "sorted" steps ambiguous
    if words not in seen and (split is None or split_of(words) == split):
      seen.add(words)
      out.append(Problem(task, words))
  return out


def split_problems(task: str, split: str, count: int, seed: int = 0,
                   test_length: int | None = None,
                   lengths: tuple[int, ...] | None = None) -> list[Problem]:
  """``count`` problems of each length of a split: train / validation on ``lengths`` words (the
  paper's 2-4 by default), test on ``test_length`` (the paper's 6 or 5 by default). Splits never
  share a problem (``split_of``)."""
  _check_task(task)
  if split not in SPLIT_SEED_OFFSET:
    raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_SEED_OFFSET)}")
  if split == "test":
    lengths = (test_length or TEST_LENGTH[task],)
  return [p for n in (lengths or TRAIN_LENGTHS)
          for p in make_problems(task, n, count, seed + SPLIT_SEED_OFFSET[split], split)]


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


# How the programmatic rationale checks the final answer (the step lines are the same):
# "check": ``answer X ok`` / ``answer X wrong, Y``: the verdict on the answer comes before the
#   expected answer is written, so it is decided with no scratchpad.
# "derive": ``expected Y`` first, from the checked steps above it, then ``answer X ok|wrong``: the
#   decision compares two strings on adjacent lines, and the expected answer is written before the
#   stated one is seen, so copying the stated answer cannot stand in for deriving it.
# "walk": the stated answer checked unit by unit against the problem, one line per step: the
#   stated answer's unit for the step and the rest of the answer after it (together, the line
#   above's rest: one contiguous copy), the reference step from the question (the policy's own
#   skill), then a verdict on the pair (" Yes" / " No", the verdict tokens, so that
#   ``ObjectiveConfig.verdict_weight`` weighs these decisions too). The comparison the other
#   styles make in one token (a stated answer against all its steps, far above) is the one their
#   sampled rationales got wrong; here each is two letters on one line. The unit comes before
#   the step: written after it (equal in most lines), one seed's verifier learnt to copy the
#   step's letter instead of the answer's and marked every pair Yes. A step with no unit left
#   is ``<step> missing``; units left after the last step, ``extra <units>``. Word sorting walks
#   the answer's adjacent pairs and then the question's words instead (``_walk_sorting``).
RATIONALE_STYLES = ("check", "derive", "walk")
# "walk" verified better than "check" on the default run (docs/experiments.md).
DEFAULT_RATIONALE_STYLE = "walk"
VOCAB_RATIONALE_STYLE = "check"  # see texts_for_vocab


def rationale(problem: Problem, solution: str, style: str = DEFAULT_RATIONALE_STYLE) -> str:
  """Step-by-step verification of ``solution``: each step, the answer, then the verdict."""
  if style not in RATIONALE_STYLES:
    raise ValueError(f"rationale style {style!r}; expected one of {RATIONALE_STYLES}")
  steps, got = parse_solution(solution)
  ok = is_correct(problem, solution)
  if style == "walk":
    return formats.cot_target(_walk(problem, got), ok)
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
  if style == "check":
    lines.append(f"answer {got} {'ok' if ok else 'wrong, ' + problem.answer}")
  else:
    lines += [f"expected {problem.answer}", f"answer {got} {'ok' if ok else 'wrong'}"]
  return formats.cot_target("\n".join(lines), ok)


def _walk(problem: Problem, got: str | None) -> str:
  """The "walk" rationale's lines (see ``RATIONALE_STYLES``)."""
  task = problem.task
  units = answer_parts(task, got) if got is not None else []
  if task == WORD_SORTING:
    return _walk_sorting(problem, units)
  expected = answer_parts(task, problem.answer)
  lines = []
  for k, step in enumerate(problem.steps()):
    if k >= len(units):
      lines.append(f"{step} missing")
      continue
    rest = [_join(task, units[k + 1:])] if k + 1 < len(units) else []
    verdict = formats.verdict_target(units[k] == expected[k])
    lines.append(" ".join([units[k], *rest, step]) + verdict)
  if len(units) > len(expected):
    lines.append(f"extra {_join(task, units[len(expected):])}")
  return "\n".join(lines)


def _walk_sorting(problem: Problem, units: list[str]) -> str:
  """Word sorting's walk. Its reference steps (the k-th word in order) are the sorting the policy
  gets wrong, and most wrong answers are in order but miscopy, drop or add a word, so the answer
  is checked word by word against the question and pair by pair for order. A line per answer
  word, ``<word> <its closest question word> <the question word after that one> <next answer
  word> Yes|No`` ("end" where there is none): Yes when the first two are equal and the word comes
  before the next answer word. Then a line per question word, in the question's order, ``<word>
  <the question word after it> <its closest answer word> Yes|No``: Yes when the first and last
  are equal. Each decision compares two words on one line, and each copy is a lookup of the most
  similar word (``_closest``); the lines hold together exactly when the answer is the question's
  words in order (a word's copies beyond its count in the question are No).

  The question's next word is there to force the lookup: an answer word equals its closest
  question word on nearly every training line, and with ``<word> <closest> <next answer word>``
  alone the sampled rationales wrote the answer's word again and passed miscopies. The word that
  follows in the question can only be copied from the question, after the lookup landed there.
  In the second block it chains the lines (each starts with the word the line above named as
  next), so the walk through the question keeps its place."""
  words = problem.words

  def after(i: int) -> str:
    return words[i + 1] if i + 1 < len(words) else "end"

  lines = []
  left = collections.Counter(words)
  for k, unit in enumerate(units):
    nxt = units[k + 1] if k + 1 < len(units) else "end"
    ok = left[unit] > 0 and (nxt == "end" or unit < nxt or (unit == nxt and left[unit] > 1))
    left[unit] -= 1
    match = _closest(unit, words)
    lines.append(f"{unit} {match} {after(words.index(match))} {nxt}"
                 + formats.verdict_target(ok))
  have = collections.Counter(units)
  for i, word in enumerate(words):
    lines.append(f"{word} {after(i)} {_closest(word, units)}"
                 + formats.verdict_target(have[word] > 0))
    have[word] -= 1
  return "\n".join(lines)


def _closest(word: str, pool) -> str:
  """The word of ``pool`` most like ``word`` (equal, then most letters equal in place, then
  nearest in length, then first); "none" for an empty pool."""
  if not pool:
    return "none"
  return max(pool, key=lambda w: (w == word, sum(a == b for a, b in zip(w, word)),
                                  -abs(len(w) - len(word))))


def parse_solution(solution: str) -> tuple[list[str], str | None]:
  """(step lines, stated answer) of a solution in the compact format (answer None if absent)."""
  steps = [l.strip() for l in solution.strip().split("\n")
           if l.strip() and not _ANSWER_LINE.match(l.strip())]
  return steps, extract_answer(solution)


def answer_parts(task: str, answer: str) -> list[str]:
  """The units of an answer that match one step each: letters (last letters) or words (sorting)."""
  return answer.split() if task == WORD_SORTING else list(answer)


def _join(task: str, parts: list[str]) -> str:
  return " ".join(parts) if task == WORD_SORTING else "".join(parts)


def solution_features(task: str, question: str, solution: str) -> dict[str, int]:
  """What a verifier could read without checking: problem length, steps, answer length, and
  the differences that a solution of the right shape has at 0 (steps - words, answer units -
  steps): a set where P(correct) moves with these teaches a verifier to prefer a shape."""
  steps, answer = parse_solution(solution)
  words = len(question.split())
  units = len(answer_parts(task, answer)) if answer is not None else -1
  return {"words": words, "steps": len(steps), "answer_length": units,
          "steps_minus_words": len(steps) - words,
          "answer_minus_steps": units - len(steps) if answer is not None else -99}


def _drop_step(task: str, steps: list[str], answer: str, k: int) -> str:
  """``steps`` without step k; the answer loses its k-th unit when it has one per step."""
  parts = answer_parts(task, answer)
  if len(parts) == len(steps):
    parts = parts[:k] + parts[k + 1:]
  kept = steps[:k] + steps[k + 1:]
  if task == WORD_SORTING:  # steps are numbered: renumber after the gap
    kept = [f"{i} {s.split(' ', 1)[-1]}" for i, s in enumerate(kept, start=1)]
  return render(kept, _join(task, parts))


# One-edit wrong solutions for verifier training ("hard negatives"), each leaving the rest of the
# solution intact so that only checking tells them from the correct solution: an answer unit
# repeated, dropped, replaced by its neighbour, miscopied (a letter from nowhere) or swapped with
# its neighbour; a step's unit or word wrong; a step hallucinated or dropped. Insertions and
# deletions come in equal measure: with insertions alone (the tiny policy's usual mistake) the
# verifiers learnt that shorter answers are right. Without the miscopied unit, a same-length
# answer with a wrong letter was the verifiers' blind spot (docs/experiments.md: a quarter of
# one policy's wrong letters come from nowhere).
HARD_NEGATIVES = ("answer_repeat", "answer_drop", "answer_neighbor", "answer_letter",
                  "answer_swap", "step_unit", "step_word", "extra_step", "drop_step")


def _pairs(task: str, problem: Problem) -> list[tuple[str, str]]:
  """(word, answer unit) per step of the reference solution."""
  if task == LAST_LETTERS:
    return [(w, w[-1]) for w in problem.words]
  return [(w, w) for w in sorted(problem.words)]


def _render_pairs(task: str, pairs: list[tuple[str, str]]) -> str:
  if task == LAST_LETTERS:
    return render([f"{w}:{u}" for w, u in pairs], "".join(u for _, u in pairs))
  return render([f"{i} {u}" for i, (_, u) in enumerate(pairs, start=1)],
                " ".join(u for _, u in pairs))


def hard_negative(problem: Problem, rng: random.Random, kind: str | None = None
                  ) -> tuple[str, str]:
  """(kind, a wrong solution one edit away from the reference); ``kind`` from
  ``HARD_NEGATIVES`` (drawn with ``rng`` when None)."""
  task, steps = problem.task, problem.steps()
  units = answer_parts(task, problem.answer)
  for _ in range(100):
    k = kind or rng.choice(HARD_NEGATIVES)
    i = rng.randrange(len(units))
    edited = list(units)
    if k == "answer_repeat":
      edited.insert(i, units[i])
    elif k == "answer_drop":
      del edited[i]
    elif k == "answer_neighbor":
      edited[i] = units[i - 1] if i and (rng.random() < 0.5 or i == len(units) - 1) else (
          units[(i + 1) % len(units)])
    elif k == "answer_letter":  # for word sorting, a word with one letter miscopied
      j = rng.randrange(len(units[i]))
      edited[i] = units[i][:j] + _other_letter(rng, units[i][j]) + units[i][j + 1:]
    elif k == "answer_swap":
      i = min(i, len(units) - 2)
      edited[i], edited[i + 1] = units[i + 1], units[i]
    if k.startswith("answer_"):
      sol = render(steps, _join(task, edited))
    else:
      pairs = _pairs(task, problem)
      w, u = pairs[i]
      if k == "step_unit":  # the right word, a wrong unit: another letter / a miscopied word
        u2 = (rng.choice([c for c in w[:-1] if c != w[-1]] or [_other_letter(rng, w[-1])])
              if task == LAST_LETTERS else w[:-1] + _other_letter(rng, w[-1]))
        pairs[i] = (w, u2)
      elif k == "step_word":  # the word miscopied, its unit following the copy
        j = len(w) - 1 if task == LAST_LETTERS else rng.randrange(len(w))
        w2 = w[:j] + _other_letter(rng, w[j]) + w[j + 1:]
        pairs[i] = (w2, w2[-1] if task == LAST_LETTERS else w2)
      elif k == "extra_step":  # a hallucinated step
        w2 = random_word(rng)
        pairs.insert(i, (w2, w2[-1] if task == LAST_LETTERS else w2))
      else:  # a step left out, the answer following
        del pairs[i]
      sol = _render_pairs(task, pairs)
    if not is_correct(problem, sol):
      return k, sol
  raise ValueError(f"no {kind or 'hard negative'} edit makes {problem.words} wrong")


PROBES = ("drop_answer_letter", "change_answer_letter", "drop_step", "wrong_drop_step")


def counterfactuals(problem: Problem, rng: random.Random, wrong: str | None = None
                    ) -> dict[str, str]:
  """Wrong solutions made by one edit, keyed by ``PROBES`` name.

  Of the reference solution (so each differs from a correct one in one place): one answer letter
  dropped, one answer letter changed, one step dropped with the answer still agreeing with the
  steps. Of ``wrong`` (a wrong candidate), when given: one more step dropped, the answer
  following where it has a unit per step; left out when every such edit would make it right.
  """
  steps, answer = problem.steps(), problem.answer
  letters = [i for i, ch in enumerate(answer) if ch.isalpha()]
  i, j = rng.choice(letters), rng.choice(letters)
  out = {"drop_answer_letter": render(steps, answer[:i] + answer[i + 1:]),
         "change_answer_letter": render(
             steps, answer[:j] + _other_letter(rng, answer[j]) + answer[j + 1:]),
         "drop_step": _drop_step(problem.task, steps, answer, rng.randrange(len(steps)))}
  if wrong is not None:
    w_steps, w_answer = parse_solution(wrong)
    order = list(range(len(w_steps)))
    rng.shuffle(order)
    for k in order if w_answer is not None and len(w_steps) > 1 else ():
      edited = _drop_step(problem.task, w_steps, w_answer, k)
      if not is_correct(problem, edited):
        out["wrong_drop_step"] = edited
        break
  for name, sol in out.items():
    if is_correct(problem, sol):  # an edit that cannot break the solution is a bug here
      raise AssertionError(f"{name} of {problem.words} left it correct: {sol!r}")
  return out


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
    # Every style writes the same characters; the pieces' ids follow their counts, so the style
    # is fixed here: with the default's, a new default style moved every id, and with them the
    # policy's initialisation and every stage after it.
    problem = problem_from_question(task, c["question"])
    out.append(prompt + rationale(problem, c["solution"], VOCAB_RATIONALE_STYLE))
  return out
