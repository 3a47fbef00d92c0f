"""genrm_jax.word_puzzles: generation, splits, the synthetic solver and programmatic rationales."""

from __future__ import annotations

import random

import pytest

from genrm_jax import word_puzzles as alg
from genrm_jax import formats


@pytest.mark.parametrize("task", alg.TASKS)
def test_splits_lengths_determinism_and_disjointness(task):
  train = alg.split_problems(task, "train", 30, seed=3)
  assert train == alg.split_problems(task, "train", 30, seed=3)
  assert train != alg.split_problems(task, "train", 30, seed=4)
  val = alg.split_problems(task, "validation", 30, seed=3)
  test = alg.split_problems(task, "test", 30, seed=3)
  assert sorted({len(p.words) for p in train}) == [2, 3, 4] == sorted({len(p.words) for p in val})
  assert {len(p.words) for p in test} == {alg.TEST_LENGTH[task]}
  assert not {p.words for p in train} & {p.words for p in val}
  assert len({p.words for p in train}) == len(train) == 90


def test_test_split_at_a_training_length_is_held_out():
  train = {p.words for p in alg.split_problems(alg.LAST_LETTERS, "train", 300, seed=1)}
  val = {p.words for p in alg.split_problems(alg.LAST_LETTERS, "validation", 300, seed=1)}
  test = alg.split_problems(alg.LAST_LETTERS, "test", 300, seed=1, test_length=2)
  assert {len(p.words) for p in test} == {2} and len(test) == 300
  assert not {p.words for p in test} & (train | val)
  five = alg.split_problems(alg.LAST_LETTERS, "test", 5, seed=1, test_length=5)
  assert {len(p.words) for p in five} == {5}


def test_reference_solutions():
  p = alg.Problem(alg.LAST_LETTERS, ("apple", "fig"))
  assert p.solution == "apple:e\nfig:g\nThe answer is eg."
  s = alg.Problem(alg.WORD_SORTING, ("pear", "apple", "fig"))
  assert s.solution == "1 apple\n2 fig\n3 pear\nThe answer is apple fig pear."
  assert alg.is_correct(s, s.solution) and alg.is_correct(p, "The answer is  eg .")
  assert not alg.is_correct(p, "apple:e\nThe answer is e.") and not alg.is_correct(p, "eg")


@pytest.mark.parametrize("style", alg.RATIONALE_STYLES)
@pytest.mark.parametrize("task", alg.TASKS)
def test_solver_mistakes_are_caught_by_the_rationale(task, style):
  rng = random.Random(0)
  problems = alg.split_problems(task, "train", 40)
  n_wrong = 0
  for p in problems:
    sol = alg.synthetic_solve(p, rng, error_rate=0.5)
    ok = alg.is_correct(p, sol)
    assert ok == (sol == p.solution)  # every mistake reaches the answer
    rat = alg.rationale(p, sol, style)
    if style == "walk" and task == alg.LAST_LETTERS:  # a line per reference step
      assert all((line.endswith(step + formats.YES) or line.endswith(step + formats.NO)
                  or line == step + " missing")
                 for line, step in zip(rat.split("\n"), p.steps(), strict=False))
      assert len(rat.split("\n")) >= len(p.steps()) + 1
    if style == "walk" and task == alg.WORD_SORTING:  # answer pairs, then the question's words
      lines = rat.split("\n")[:-1]
      words = [line.split(" ", 1)[0] for line in lines[-len(p.words):]]
      assert words == list(p.words)
      assert all(line.endswith((formats.YES, formats.NO)) for line in lines)
    assert formats.parse_verdict(rat) == ok and rat.endswith(formats.VERDICT_QUESTION +
                                                              formats.verdict_target(ok))
    # A rationale sampled up to the verdict's first word, completed with the fixed question,
    # is exactly what the verifier was trained on.
    body = rat[:rat.index(formats.VERDICT_PREFIX)]
    assert formats.ensure_verdict_question(body) + formats.verdict_target(ok) == rat
    body = rat[:-len(formats.verdict_target(ok))]
    if not ok:
      n_wrong += 1
      assert any(w in body for w in ("wrong", "missing", formats.NO))
    else:
      assert not any(w in body for w in ("wrong", "missing", formats.NO))
  assert 0.35 < n_wrong / len(problems) < 0.65


def test_rationale_of_a_policy_sample_with_extra_lines():
  p = alg.Problem(alg.LAST_LETTERS, ("ab", "cd"))
  sol = "ab:b\ncd:d\nxy:y\nThe answer is bdy."
  rat = alg.rationale(p, sol, "check")
  assert "xy:y extra" in rat and rat.endswith("No")
  assert alg.rationale(p, sol, "walk").startswith("b dy ab:b Yes\nd y cd:d Yes\nextra y\n")
  assert alg.rationale(p, "ab:b\nThe answer is bx.", "walk").startswith(
      "b x ab:b Yes\nx cd:d No\n")
  assert alg.rationale(p, "ab:b\nThe answer is b.", "walk").startswith(
      "b ab:b Yes\ncd:d missing\n")


def test_word_sorting_walk_checks_words_and_pairs():
  p = alg.Problem(alg.WORD_SORTING, ("pear", "apple", "fig"))
  body = lambda sol: alg.rationale(p, sol, "walk").split("\nVerification")[0]  # noqa: E731
  # Each answer line: the word, its closest question word and the question's word after that
  # one, the next answer word; each question line: the word, the question's next, its closest
  # answer word.
  assert body(p.solution) == ("apple apple fig fig Yes\nfig fig end pear Yes\n"
                              "pear pear apple end Yes\n"
                              "pear apple pear Yes\napple fig apple Yes\nfig end fig Yes")
  assert body("The answer is apple pear fig.").startswith(
      "apple apple fig pear Yes\npear pear apple fig No\nfig fig end end Yes\n")
  # A dropped word: the question's line for it finds no equal word in the answer.
  assert body("The answer is apple fig.").endswith(
      "fig fig end end Yes\npear apple apple No\napple fig apple Yes\nfig end fig Yes")
  # A repeated word is not before its twin, and its second copy exceeds the question's count.
  assert "fig fig end fig No\nfig fig end pear No" in body("The answer is apple fig fig pear.")
  # A changed word: its closest question word differs, and that word's line finds it missing.
  changed = body("The answer is apple fjg pear.")
  assert changed.startswith("apple apple fig fjg Yes\nfjg fig end pear No\n")
  assert changed.endswith("fig end fjg No")
  assert "banana apple fig fig No" in body("The answer is apple banana fig pear.")
  assert body("no answer") == "pear apple none No\napple fig none No\nfig end none No"


@pytest.mark.parametrize("task", alg.TASKS)
def test_candidates_are_labelled_and_balanced(task):
  cands = alg.candidates(task, "test", problems_per_length=50, samples_per_problem=4, seed=1)
  assert len(cands) == 200
  assert cands == alg.candidates(task, "test", problems_per_length=50, samples_per_problem=4,
                                 seed=1)
  frac = sum(c["correct"] for c in cands) / len(cands)
  assert 0.4 < frac < 0.6
  gold = alg.gold_candidates(task, "test", problems_per_length=50, seed=1)
  assert all(c["correct"] and c["solution"].endswith(f"The answer is {c['gold_answer']}.")
             for c in gold)
  with pytest.raises(ValueError, match="unknown algorithmic task"):
    alg.split_problems("addition", "train", 1)


@pytest.mark.parametrize("task", alg.TASKS)
def test_hard_negatives_are_one_edit_wrong_and_caught_by_the_rationale(task):
  rng = random.Random(1)
  for p in alg.split_problems(task, "train", 15, seed=4):
    ref_steps, ref_answer = alg.parse_solution(p.solution)
    for kind in alg.HARD_NEGATIVES:
      got, sol = alg.hard_negative(p, rng, kind)
      assert got == kind and not alg.is_correct(p, sol), (kind, sol)
      steps, answer = alg.parse_solution(sol)
      if kind.startswith("answer_"):
        assert steps == ref_steps and answer != ref_answer
        if kind == "answer_letter":  # one character miscopied, the length kept
          assert len(answer) == len(ref_answer)
          assert sum(a != b for a, b in zip(answer, ref_answer)) == 1
      else:  # a step edit: the answer still agrees with the edited steps
        units = [s.split(":")[-1] if task == alg.LAST_LETTERS else s.split(" ", 1)[1]
                 for s in steps]
        assert alg.answer_parts(task, answer) == units
        changed = sum(a != b for a, b in zip(steps, ref_steps)) + abs(len(steps) - len(ref_steps))
        assert 1 <= changed <= len(ref_steps) + 1
      assert alg.rationale(p, sol).endswith(formats.VERDICT_QUESTION + formats.NO)
  kinds = {alg.hard_negative(p, rng)[0] for _ in range(200)}
  assert kinds == set(alg.HARD_NEGATIVES)  # drawn at random when no kind is asked for


def test_vocabulary_texts_do_not_follow_the_default_rationale_style():
  """The vocabulary stage depends on task and seed only: its texts use a fixed rationale style,
  so a new default style (a verifier-stage setting) cannot move the pieces' ids."""
  texts = alg.texts_for_vocab(alg.LAST_LETTERS, count=5)
  cands = alg.candidates(alg.LAST_LETTERS, "train", problems_per_length=5, samples_per_problem=1)
  for text, c in zip(texts, cands, strict=True):
    p = alg.problem_from_question(alg.LAST_LETTERS, c["question"])
    assert text.endswith(alg.rationale(p, c["solution"], alg.VOCAB_RATIONALE_STYLE))
    if alg.VOCAB_RATIONALE_STYLE != alg.DEFAULT_RATIONALE_STYLE:
      assert not text.endswith(c["rationale"])
