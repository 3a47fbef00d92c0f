"""genrm_jax.answers: extraction and numeric comparison, and GSM8K's own gold answers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from genrm_jax import answers


@pytest.mark.parametrize("text,want", [
    ("So 3 + 4 = 7. The answer is 7.", "7"),
    ("The answer is $1,250.", "1250"),
    ("The answer is 1,000.00 dollars.", "1000"),
    ("The answer is 50%.", "50"),
    ("The answer is 18 apples.", "18"),
    ("The answer is -5.", "-5"),
    ("The answer is −5.", "-5"),
    ("The answer is 3/4.", "3/4"),
    ("The answer is 3 / 4 of a cake.", "3/4"),
    ("The answer is 0.5.", "1/2"),
    ("The answer is: 12", "12"),
    ("The answer is 3 * 4 = 12.", "12"),
    ("Answer is 9.", "9"),
    ("The answer is 325 000 cars.", "325000"),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
    ("The answer is 5. Wait, the answer is 6.", "6"),
    ("The answer is twelve.", None),
    ("No final answer here: 42", None),
])
def test_extract_answer(text, want):
  assert answers.extract_answer(text) == want


def test_is_correct_compares_numbers():
  assert answers.is_correct("The answer is $1,000.", "1000")
  assert answers.is_correct("The answer is 0.50.", "1/2")
  assert not answers.is_correct("The answer is 1001.", "1000")
  assert not answers.is_correct("no answer", "1000")
  assert answers.extract_answer("The answer is  abc .", numeric=False) == "abc"


def test_gold_answer_errors():
  with pytest.raises(ValueError, match="no '#### <number>'"):
    answers.gold_answer("5 + 5 = 10")
  with pytest.raises(ValueError, match="not a number"):
    answers.gold_answer("#### ten")


def test_light_modules_do_not_import_tensorflow():
  code = ("import sys; import genrm_jax.answers, genrm_jax.word_puzzles, genrm_jax.formats, "
          "genrm_jax.records, genrm_jax.gsm8k_release, genrm_jax.vocab; "
          "print(json.dumps([m for m in ('tensorflow', 'seqio', 'jax') if m in sys.modules]))")
  out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True,
                       text=True, check=True)
  assert json.loads(out.stdout) == []


def test_gsm8k_gold_solutions_agree_with_the_hash_line(shared_data):
  from genrm_jax import gsm8k_release  # pylint: disable=g-import-not-at-top
  n = 0
  for split in ("train", "test"):
    for p in gsm8k_release.load_gsm8k(str(shared_data / "gsm8k" / f"{split}.jsonl")):
      hash_line = p["answer"].rsplit("####", 1)[1].strip()
      assert answers.extract_answer(p["answer"]) == answers.gold_answer(p["answer"]) == p["gold"]
      assert answers.parse_number(hash_line) == answers.parse_number(p["gold"])
      assert answers.is_correct(gsm8k_release.gold_solution(p["answer"]), hash_line)
      n += 1
  assert n == 8792
