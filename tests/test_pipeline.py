"""End-to-end: the quick pipeline runs every stage and writes a Best-of-N table that parses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from genrm_jax import candidates as cands
from genrm_jax import formats
from genrm_jax import objectives
from genrm_jax import pipeline
from genrm_jax import records
from genrm_jax import vocab as vocab_lib
from genrm_jax import word_puzzles

# Best-of-N may fall below pass@1 only by sampling noise: a verifier that ranks at random sits at
# pass@1 in expectation. 4 problems make the noise large, hence the wide margin.
NOISE = 0.25


def _run(out):
  proc = subprocess.run(
      [sys.executable, "-m", "genrm_jax.pipeline", "--gin_file", "pipeline/quick.gin",
       "--out", str(out)], env=dict(os.environ), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def test_quick_pipeline_runs_every_stage_and_reproduces(tmp_path):
  out = tmp_path / "run"
  proc = _run(out)
  for stage in ("a.", "b.", "c.", "d.", "e. select the verifier data",
                "f. train verifier discriminative", "f. train verifier genrm",
                "f. train verifier genrm_cot", "g.", "h. sample test candidates of 6 words",
                "i. Best-of-N evaluation at 6 words"):
    assert f"== {stage}" in proc.stdout

  for path in ("vocab.model", "policy/model/genrm_model.json", "policy/config.gin",
               "verifier_data.jsonl", "verifier_data_card.json", "eval/best_of_n.png",
               "eval/accuracy_vs_tokens.png", "eval/scores.jsonl", "timings.json",
               "test_candidates_6_words.jsonl", "eval_6_words/results.json"):
    assert (out / path).exists(), path
  # The verifiers trained on the policy's candidates file record its task (eval checks it).
  meta = json.loads((out / "verifiers" / "genrm" / "model" / "genrm_model.json").read_text())
  assert meta["train"]["task"] == "last_letters"
  # Each verifier trains at its recipe's rate (direct GenRM at the classifier's, GenRM-CoT at 2e-3),
  # and its config.gin says so.
  for name, rate in (("discriminative", "0.001"), ("genrm", "0.001"), ("genrm_cot", "0.002")):
    config_gin = (out / "verifiers" / name / "config.gin").read_text()
    assert f"OptimConfig.peak_lr = {rate}\n" in config_gin, name
  # The classifier's per-task settings reach its training (last letters: the label at every token).
  assert "ObjectiveConfig.disc_token_weight = 1.0\n" in (
      out / "verifiers" / "discriminative" / "config.gin").read_text()
  card = json.loads((out / "verifier_data_card.json").read_text())
  assert card["selected"]["records"] == len((out / "verifier_data.jsonl").read_text().splitlines())
  assert set(card["sampled"]["by"]) == {"words", "steps", "answer_length", "steps_minus_words",
                                       "answer_minus_steps"}
  for line in (out / "test_candidates.jsonl").read_text().splitlines():
    rec = json.loads(line)
    assert {"question_id", "question", "solution", "extracted_answer", "correct"} <= set(rec)
    assert len(rec["question"].split()) == 5
  longer = [json.loads(l) for l in (out / "test_candidates_6_words.jsonl").read_text().splitlines()]
  assert longer and all(len(r["question"].split()) == 6 for r in longer)
  full = json.loads((out / "eval" / "results.json").read_text())
  results = full["best_of_n"]
  methods = {"pass@1", "pass@n", "self_consistency", *(v.name for v in pipeline.VERIFIERS)}
  assert methods <= set(results)
  largest = max(results["pass@1"], key=int)
  for name in methods:
    for n, acc in results[name].items():
      assert 0.0 <= acc <= 1.0, (name, n, acc)
    assert results[name][largest] >= results["pass@1"][largest] - NOISE, name
  assert np.isclose(results["pass@1"]["1"], results["pass@n"]["1"])
  assert results["pass@n"][largest] >= results["pass@1"][largest]
  for v in pipeline.VERIFIERS:
    assert {"within_pool_auc", "pooled_auc", "probes"} <= set(full["diagnostics"][v.name])
    assert full["tokens_per_problem"][v.name][largest] > 0

  # Same seed, same table: a second run from nothing writes the same candidates and results.
  again = tmp_path / "again"
  _run(again)
  assert (again / "test_candidates.jsonl").read_text() == (out / "test_candidates.jsonl").read_text()
  assert json.loads((again / "eval" / "results.json").read_text()) == full


def test_same_seed_same_config(tmp_path):
  pc = pipeline.parse_config(["pipeline/default.gin"], ["PipelineConfig.seed = 3"],
                             str(tmp_path))
  assert pc.seed == 3 and pc.out == str(tmp_path)
  assert pc.num_samples == 16 and pc.task == "last_letters"


def test_a_stopped_training_stage_says_so_and_keeps_its_checkpoints(tmp_path, monkeypatch):
  """A trainer stopped by SIGTERM returns 0 without a model directory: the pipeline names the
  stage as stopped (to be resumed by the same command), not as a failure without output."""
  from genrm_jax import train  # pylint: disable=g-import-not-at-top
  pc = pipeline.parse_config(["pipeline/quick.gin"], [], str(tmp_path))
  runner = pipeline.Runner(pc)
  monkeypatch.setattr(runner, "experiment", lambda *a, **k: (
      train.Experiment(None, train.TrainConfig(num_steps=7), None, None, None), ""))
  monkeypatch.setattr(train, "launch", lambda exp, workdir, config: 0)
  with pytest.raises(pipeline.StageFailed, match="stopped before step 7 .*same command to resume"):
    runner.train_stage(str(tmp_path / "policy"), "policy.gin", "data", 7)
  monkeypatch.setattr(train, "launch", lambda exp, workdir, config: 1)
  assert runner.train_stage(str(tmp_path / "policy"), "policy.gin", "data", 7) == 1


def test_every_setting_belongs_to_a_stage():
  covered = set().union(*pipeline.STAGE_SETTINGS.values())
  fields = {f.name for f in pipeline.dataclasses.fields(pipeline.PipelineConfig)}
  assert fields - covered == {"out"}, "a PipelineConfig field no stage depends on"
  assert covered <= fields


def test_a_stage_made_with_other_settings_is_not_reused(tmp_path, capsys):
  """A done stage is reused only under the settings that made it, and says which differ."""
  done = tmp_path / "policy" / "model"

  def make():
    done.mkdir(parents=True)
    calls.append(1)

  calls: list[int] = []
  pc = pipeline.parse_config(["pipeline/quick.gin"], [], str(tmp_path))
  pipeline.Runner(pc).stage("b. policy", str(done), make, "policy")
  assert calls == [1]
  recorded = json.loads((tmp_path / pipeline.SETTINGS_FILE).read_text())
  assert recorded["b. policy"]["policy_steps"] == 30
  # Settings of later stages only: reused.
  later = pipeline.dataclasses.replace(pc, verifier_add_layers=3, cot_votes=8)
  pipeline.Runner(later).stage("b. policy", str(done), make, "policy")
  assert calls == [1] and "done already" in capsys.readouterr().out
  # A setting the policy depends on: refused, naming the field and both values.
  longer = pipeline.dataclasses.replace(pc, policy_steps=500)
  with pytest.raises(pipeline.StageFailed, match=r"policy/model was made with other settings "
                     r"\(policy_steps=30 there, 500 now\)"):
    pipeline.Runner(longer).stage("b. policy", str(done), make, "policy")
  assert calls == [1] and done.exists()
  # A folder from before settings were recorded: reused, saying it was not checked.
  (tmp_path / pipeline.SETTINGS_FILE).unlink()
  pipeline.Runner(longer).stage("b. policy", str(done), make, "policy")
  assert calls == [1] and "not checked" in capsys.readouterr().out
  # A verifier's objective settings (its recipe, not PipelineConfig) are checked alike.
  verifier = tmp_path / "verifiers" / "disc" / "model"
  runner = pipeline.Runner(pc)
  runner.stage("f. disc", str(verifier), lambda: verifier.mkdir(parents=True), "verifier",
               recipe={"objective": {"disc_token_weight": 1.0}})
  runner.stage("f. disc", str(verifier), make, "verifier",
               recipe={"objective": {"disc_token_weight": 1.0}})
  with pytest.raises(pipeline.StageFailed, match=r"objective=\{'disc_token_weight': 1.0\} there, "
                     r"\{'disc_token_weight': 0.0\} now"):
    runner.stage("f. disc", str(verifier), make, "verifier",
                 recipe={"objective": {"disc_token_weight": 0.0}})
  assert calls == [1]


def test_every_verifier_recipe_names_a_recorded_steps_field():
  fields = {f.name for f in pipeline.dataclasses.fields(pipeline.PipelineConfig)}
  for recipe in pipeline.VERIFIERS:
    assert recipe.steps in fields and recipe.steps in pipeline.STAGE_SETTINGS["verifier"], recipe


def test_every_verifier_recipe_has_settings_for_every_task():
  for recipe in pipeline.VERIFIERS:
    for task in word_puzzles.TASKS:
      settings = dict(recipe.objective_for(task))
      objectives.ObjectiveConfig(**settings)  # valid fields and values
      assert all(isinstance(v, float) for v in settings.values()), (recipe.name, task)


def test_verifier_rows_fit_the_longest_record(tmp_path):
  """A record longer than the stage gin's rows would be dropped by the trainer: the pipeline
  lengthens the rows to fit it instead (word sorting's records are about twice last letters')."""
  runner = pipeline.Runner(pipeline.PipelineConfig(out=str(tmp_path)))
  vocab_lib.train_char_vocab(word_puzzles.texts_for_vocab("last_letters"),
                             runner.path("vocab.model"), phrases=formats.PHRASES)
  words = ["abc", "de", "fgh"]
  good = word_puzzles.render([f"{w}:{w[-1]}" for w in words], "ceh")
  # A runaway sample: the steps go on far past the question's words.
  runaway = word_puzzles.render([f"{w}:{w[-1]}" for w in words * 40], "ceh" * 40)
  cands.write_candidates(runner.path("verifier_data.jsonl"), [
      {"question_id": "q", "question": " ".join(words), "solution": sol, "correct": ok,
       "extracted_answer": word_puzzles.extract_answer(sol), "candidate_id": i,
       "task": "last_letters"} for i, (sol, ok) in enumerate(((good, True), (runaway, False)))])
  vocab = vocab_lib.load_vocab(runner.path("vocab.model"))
  short = runner.row_length("policy_discriminative", 16, runner.mixture())
  text = records.discriminative([{"question": " ".join(words), "solution": runaway,
                                  "correct": False}], word_puzzles.INSTRUCTIONS["last_letters"])
  need = 1 + len(vocab.sp.encode(text[0]["inputs"])) + len(vocab.sp.encode(text[0]["targets"]))
  assert short % 32 == 0 and need <= short < need + 32
  assert runner.row_length("policy_discriminative", 4096, runner.mixture()) == 4096
  cot = runner.row_length("policy_genrm_cot", 16, runner.mixture())
  assert cot > short  # the rationale of 120 steps is longer still


def test_verifier_seed_sets_stage_f_only(tmp_path, monkeypatch):
  """``verifier_seed`` reseeds the verifiers' trainings (batch order, initialisation) and nothing
  before them, so a second training reuses stages a-e; a verifier made with another seed is not
  reused."""
  seeds: dict[str, int | None] = {}

  def train_stage(self, workdir, *args, **kwargs):
    seeds[os.path.basename(workdir)] = kwargs.get("seed")
    os.makedirs(os.path.join(workdir, "model"))

  def touch(path):
    with open(path, "w") as f:
      f.write("{}")

  monkeypatch.setattr(pipeline.Runner, "train_stage", train_stage)
  monkeypatch.setattr(pipeline.Runner, "sample", lambda self, *a, **k: touch(a[3]))
  monkeypatch.setattr(pipeline.Runner, "select_verifier_data", lambda self, _, out: touch(out))
  monkeypatch.setattr(pipeline.Runner, "evaluate", lambda self, r, c, out: os.makedirs(out)
                      or touch(os.path.join(out, "results.json")))
  pc = pipeline.parse_config(["pipeline/quick.gin"], ["PipelineConfig.verifier_seed = 10"],
                             str(tmp_path))
  pipeline.Runner(pc).run()
  assert seeds == {"policy": None, **{v: 10 for v in pc.verifiers}}
  # The seed reaches the verifier's training and data (its batch order), not the policy's.
  runner = pipeline.Runner(pc)
  exp, text = runner.experiment("pipeline/verifier_genrm.gin", "policy_genrm", 5,
                                init_from="genrm:x", seed=pc.verifier_seed)
  assert (exp.train.seed, exp.data.seed) == (10, 10) and "TrainConfig.seed = 10" in text
  policy, _ = runner.experiment(pc.policy_gin, "last_letters_policy_sft", 5)
  assert (policy.train.seed, policy.data.seed) == (pc.seed, pc.seed)
  # Another verifier seed on the same folder: stages a-e reused, the verifiers refused.
  with pytest.raises(pipeline.StageFailed, match=r"verifier_seed=10 there, 11 now"):
    pipeline.Runner(pipeline.dataclasses.replace(pc, verifier_seed=11)).run()
