"""The GenRM prompt formats, exactly as in the paper's released GSM8K data.

Every record is ``instruction + "Q: {question}\\nA: Let's think step by step.\\n{solution}\\n"``
followed by the verification request. Targets of the direct verifier are " Yes" / " No" (leading
space); CoT targets are a rationale that ends in ``VERDICT_QUESTION`` + " Yes" / " No".
"""

from __future__ import annotations

import re

GSM8K_INSTRUCTION = (
    'Solve the math problems and provide step-by-step solutions, ending with "The answer is '
    '[Insert Final Answer Here]".\n'
    'When asked "Verification: Is the answer correct (Yes/No)?", respond with " Yes" or " No" '
    "based on the answer's correctness.\n"
    'When asked "Verification: Let\'s verify step by step.", verify every step of the solution '
    'and conclude with "Verification: Is the answer correct (Yes/No)?" followed by " Yes" or '
    '" No".\n\n')

THINK = "A: Let's think step by step.\n"
VERDICT_QUESTION = "Verification: Is the answer correct (Yes/No)?"
# Where a sampled rationale may stop: the rest of the verdict question is fixed text, appended by
# ``ensure_verdict_question`` instead of being decoded token by token.
VERDICT_PREFIX = "\nVerification:"
COT_REQUEST = "Verification: Let's verify step by step.\n"
YES = " Yes"
NO = " No"
ANSWER_IS = "The answer is"
# The fixed text of every record, which a task vocabulary may make single pieces (vocab.PHRASES).
PHRASES = (VERDICT_QUESTION, COT_REQUEST.rstrip("\n"), THINK.rstrip("\n"), ANSWER_IS)


def question_prompt(question: str, instruction: str = GSM8K_INSTRUCTION) -> str:
  """The prompt a policy (or the SFT-on-correct-solutions task) continues with a solution."""
  return f"{instruction}Q: {question}\n{THINK}"


def solution_block(question: str, solution: str, instruction: str = GSM8K_INSTRUCTION) -> str:
  return f"{question_prompt(question, instruction)}{solution.rstrip(chr(10))}\n"


def direct_prompt(question: str, solution: str, instruction: str = GSM8K_INSTRUCTION) -> str:
  """Inputs of a direct verification record; P(" Yes") is read right after it."""
  return solution_block(question, solution, instruction) + VERDICT_QUESTION


def cot_prompt(question: str, solution: str, instruction: str = GSM8K_INSTRUCTION) -> str:
  """Inputs of a CoT verification record; a rationale is sampled after it."""
  return solution_block(question, solution, instruction) + COT_REQUEST


def verdict_target(correct: bool) -> str:
  return YES if correct else NO


def cot_target(rationale: str, correct: bool) -> str:
  """A rationale completed with the verdict question and answer (when it lacks them)."""
  return ensure_verdict_question(rationale) + verdict_target(correct)


def ensure_verdict_question(rationale: str) -> str:
  """Appends the verdict question to a sampled rationale that does not already end in it."""
  body = rationale.rstrip()
  if body.endswith(VERDICT_QUESTION):
    return body
  return f"{body}\n{VERDICT_QUESTION}" if body else VERDICT_QUESTION


_VERDICT_RE = re.compile(
    r"Verification:\s*\**\s*Is the answer correct \(Yes/No\)\?\s*\**\s*(Yes|No)\b\**\s*$")


def parse_verdict(text: str) -> bool | None:
  """The final Yes/No verdict of a rationale (markdown ``**`` tolerated), None if absent."""
  m = _VERDICT_RE.search(text.strip())
  if not m:
    return None
  return m.group(1) == "Yes"
