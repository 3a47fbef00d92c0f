"""Final-answer extraction and numeric comparison for GSM8K-style solutions (no TensorFlow).

The final answer is the text after the last "(The) answer is" (model solutions) or "####" (GSM8K
gold solutions), whichever comes last. Numerically it is the first number in that text, after the
last "=" if there is one ("The answer is 3 * 4 = 12."), read with "$", thousands commas, "%",
trailing units and periods ignored; fractions ("3/4") and negatives ("-5", "−5") are exact. Numbers
compare as exact fractions, so "0.5" == "1/2" and "1,000.00" == "1000".
"""

from __future__ import annotations

import fractions
import re

_FINAL_RE = re.compile(r"(?:answer\s+is|####)", re.IGNORECASE)
# Thousands may be grouped by commas or single spaces ("325 000"); fractions spaced ("3 / 2").
_NUMBER_RE = re.compile(r"[-−]?\s*\$?\s*(?:\d{1,3}(?: \d{3})+(?!\d)|\d[\d,]*(?:\.\d+)?|\.\d+)"
                        r"(?:\s*/\s*\d+(?:\.\d+)?)?")


def extract_answer(text: str, numeric: bool = True) -> str | None:
  """The final-answer text of a solution (numeric: just its number, normalized), None if absent."""
  matches = list(_FINAL_RE.finditer(text))
  if not matches:
    return None
  rest = text[matches[-1].end():].split("\n", 1)[0].strip().lstrip(":").strip()
  if not numeric:
    rest = rest.rstrip(".").strip()
    return rest or None
  value = parse_number(rest)
  return None if value is None else format_number(value)


def parse_number(text: str) -> fractions.Fraction | None:
  """The first number of ``text`` (after its last "="), or None when there is none."""
  if "=" in text:
    text = text.rsplit("=", 1)[1]
  m = _NUMBER_RE.search(text)
  if not m:
    return None
  s = re.sub(r"[\s$,]", "", m.group(0)).replace("−", "-")
  try:
    if "/" in s:
      num, den = s.split("/")
      den_value = fractions.Fraction(den)
      if den_value == 0:
        return None
      return fractions.Fraction(num) / den_value
    return fractions.Fraction(s)
  except (ValueError, ZeroDivisionError):
    return None


def format_number(value: fractions.Fraction) -> str:
  """A canonical string: integers plain, other values as a reduced fraction."""
  if value.denominator == 1:
    return str(value.numerator)
  return f"{value.numerator}/{value.denominator}"


def gold_answer(gsm8k_answer: str) -> str:
  """The normalized ``####`` answer of a GSM8K gold solution; an error if it has none."""
  matches = re.findall(r"^####\s*(.+)$", gsm8k_answer, re.MULTILINE)
  if not matches:
    raise ValueError(f"GSM8K answer has no '#### <number>' line: ...{gsm8k_answer[-80:]!r}")
  value = parse_number(matches[-1])
  if value is None:
    raise ValueError(f"GSM8K '####' line is not a number: {matches[-1]!r}")
  return format_number(value)


def is_correct(solution: str, gold: str) -> bool:
  """Whether a solution's final answer equals ``gold`` (a number as text) numerically."""
  got = extract_answer(solution)
  want = parse_number(gold)
  return got is not None and want is not None and parse_number(got) == want
