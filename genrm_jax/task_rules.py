"""How each task phrases its prompts and judges final answers: GSM8K and the algorithmic tasks.

Sampling (``generate.generate``), scoring (``eval``, ``serve``) and the checks of a candidates file
agree on an answer only through these rules.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from genrm_jax import answers
from genrm_jax import formats
from genrm_jax import word_puzzles


@dataclasses.dataclass(frozen=True)
class Task:
  """How a task phrases prompts and judges final answers."""
  instruction: str
  normalize: Callable[[str], str]  # a final answer's canonical text (votes compare these)
  extract_raw: Callable[[str], str | None]  # solution -> final answer text

  def extract(self, solution: str) -> str | None:
    got = self.extract_raw(solution)
    return None if got is None else self.normalize(got)

  def check(self, got: str | None, gold: str) -> bool:
    """Whether an extracted answer equals the gold answer (both normalized)."""
    return got is not None and self.normalize(got) == self.normalize(gold)


def _number_text(answer: str) -> str:
  value = answers.parse_number(answer)
  return answer.strip() if value is None else answers.format_number(value)


TASKS = {
    "gsm8k": Task(formats.GSM8K_INSTRUCTION, _number_text, answers.extract_answer),
    **{name: Task(word_puzzles.INSTRUCTIONS[name], lambda a: " ".join(a.split()),
                  word_puzzles.extract_answer) for name in word_puzzles.TASKS},
}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
  return TASKS[name]


def trained_task(data_name: str, candidates_task: str | None = None) -> str | None:
  """The task whose prompts a model trained on seqio task/mixture ``data_name`` saw: the task of
  the candidates file it was trained on (``MixtureConfig.candidates_task``) when there was one,
  else the task its name starts with; None for data of unknown origin."""
  if candidates_task:
    return candidates_task
  return next((t for t in TASKS if data_name.startswith(f"{t}_")), None)


def check_trained_task(meta: dict, task: str, what: str) -> None:
  """An error when a model directory's metadata says it was trained on prompts of a task whose
  instruction differs from ``task``'s: scored or sampled as ``task``, it would see prompts it was
  never trained on, and say so only through bad numbers."""
  trained = meta.get("train", {}).get("task")
  if trained in TASKS and get_task(trained).instruction != get_task(task).instruction:
    raise ValueError(f"{what}: trained on {trained} prompts (its train.task), but the task is "
                     f"{task!r}, whose prompts carry another instruction: use --task {trained}")
