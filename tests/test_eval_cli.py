"""The generate / eval command lines: released GSM8K pools, bad inputs, a tiny random policy."""

from __future__ import annotations

import collections
import glob
import gzip
import json
import math
import re

import gin
import jax
import numpy as np
import pytest

from genrm_jax import answers, checkpoint, config, gsm8k_release, model, word_puzzles
from genrm_jax import best_of_n as ev
from genrm_jax import candidates as cands
from genrm_jax import eval as eval_cli
from genrm_jax import generate
from genrm_jax import task_rules
from genrm_jax import vocab as vocab_lib

HEADER = "Q: "
THINK = "\nA: Let's think step by step.\n"


@pytest.fixture(autouse=True)
def _fresh_gin():
  """The CLIs parse (and lock) the global gin config; leave it clear for other tests."""
  yield
  gin.clear_config()


@pytest.fixture(scope="module")
def released(shared_data, tmp_path_factory):
  """48 held-out questions' released pools and their model-free eval results."""
  tmp = tmp_path_factory.mktemp("released")
  path = str(tmp / "cands.jsonl")
  cands.main(["from-released", "--rm_dir", str(shared_data / "genrm-critiques" / "rm"),
              "--questions", "48", "--seed", "3", "--out", path])
  eval_cli.main(["--task", "gsm8k", "--candidates", path, "--out", str(tmp / "eval")])
  with open(tmp / "eval" / "results.json") as f:
    return path, json.load(f)["best_of_n"], shared_data


def _raw_pools(shared_data, qids):
  """question_id -> [(final answer, correct)] straight from the released gzip files."""
  pools = collections.defaultdict(list)
  for path in sorted(glob.glob(str(shared_data / "genrm-critiques" / "rm" / "*.jsonl.gz"))):
    with gzip.open(path, "rt") as f:
      for line in f:
        rec = json.loads(line)
        if rec["question_id"] in qids:
          body = rec["inputs"].split(THINK, 1)[1]
          question = rec["inputs"].split(HEADER, 1)[1].split(THINK, 1)[0]
          pools[rec["question_id"]].append(
              (answers.extract_answer(body), rec["targets"] == " Yes", question))
  return pools


def _majority(votes):
  tally = collections.Counter((a, c) for a, c in votes if a is not None)
  if not tally:
    return np.mean([c for _, c in votes])
  top = max(tally.values())
  return np.mean([c for (a, c), v in tally.items() if v == top])


def test_model_free_rows_match_independent_computation(released):
  path, results, shared_data = released
  qids = {json.loads(l)["question_id"] for l in open(path)}
  raw = _raw_pools(shared_data, qids)
  assert len(raw) == 48
  assert all(gsm8k_release.is_heldout(v[0][2], 0.05) for v in raw.values())
  assert set(results) == {"pass@1", "pass@n", "self_consistency"}
  largest = max(len(v) for v in raw.values())
  assert list(results["pass@n"]) == [str(n) for n in ev.report_ns([largest])]
  rng = np.random.default_rng(0)
  for n_str in results["pass@n"]:
    n = int(n_str)
    p1, pn, sc = [], [], []
    for pool in raw.values():
      k = min(n, len(pool))
      c = sum(x[1] for x in pool)
      p1.append(c / len(pool))
      # pass@k: 1 - P(all k drawn are wrong), as a product of draws without replacement.
      pn.append(1 - math.prod((len(pool) - c - i) / (len(pool) - i) for i in range(k)))
      if k == len(pool):
        sc.append(_majority([x[:2] for x in pool]))
      else:
        sc.append(np.mean([_majority([pool[i][:2] for i in rng.choice(len(pool), k, False)])
                           for _ in range(300)]))
    assert results["pass@1"][n_str] == pytest.approx(np.mean(p1), abs=1e-12)
    assert results["pass@n"][n_str] == pytest.approx(np.mean(pn), abs=1e-12)
    tol = 1e-12 if n >= largest else 0.015  # Monte Carlo reference below the full pool
    assert results["self_consistency"][n_str] == pytest.approx(np.mean(sc), abs=tol)


def test_released_candidates_have_gold_answers_that_agree(released):
  path, _, _ = released
  pools = cands.read_candidates(path, require_gold=True)
  task = task_rules.get_task("gsm8k")
  labels = [(c["correct"], task.check(c["extracted_answer"], p.gold_answer))
            for p in pools for c in p.candidates]
  # The released labels came from the authors' checker; ours disagrees on a handful at most.
  assert np.mean([a == b for a, b in labels]) > 0.99
  assert [p.question_id for p in pools] == sorted(p.question_id for p in pools)


def test_scores_file_rows_plot_and_recompute(released, tmp_path):
  path, results, _ = released
  pools = cands.read_candidates(path)
  rng = np.random.default_rng(1)
  # A noisy oracle: correct candidates score higher on average; ties on a coarse grid.
  with open(tmp_path / "scores.jsonl", "w") as f:
    for p in pools:
      for c in p.candidates:
        s = np.clip(np.round(0.6 * c["correct"] + rng.random() * 0.6, 1), 0, 1)
        # and one that prefers wrong candidates, for the paired differences between verifiers
        anti = np.clip(np.round(0.5 - 0.4 * c["correct"] + rng.random() * 0.5, 1), 0, 1)
        f.write(json.dumps({"question_id": p.question_id, "candidate_id": c["candidate_id"],
                            "scores": {"noisy": float(s), "anti": float(anti)}}) + "\n")
  out = tmp_path / "eval"
  eval_cli.main(["--task", "gsm8k", "--candidates", path, "--out", str(out),
             "--scores_file", str(tmp_path / "scores.jsonl"),
             "--gin_bindings", "EvalConfig.mc_samples = 300"])
  full = json.load(open(out / "results.json"))
  got = full["best_of_n"]
  assert set(got) == {"pass@1", "pass@n", "self_consistency", "noisy", "noisy+weighted_sc",
                      "anti", "anti+weighted_sc"}
  assert got["pass@n"] == results["pass@n"]
  saved = [json.loads(l) for l in open(out / "scores.jsonl")]
  by_key = {(r["question_id"], r["candidate_id"]): r["scores"]["noisy"] for r in saved}
  curves = [ev.best_of_k_curve([by_key[p.question_id, c["candidate_id"]] for c in p.candidates],
                               p.correct) for p in pools]
  assert got["noisy"] == pytest.approx(ev.at_ns(curves, [int(n) for n in got["noisy"]]))
  assert got["pass@1"]["16"] < got["noisy"]["16"] <= got["pass@n"]["16"]
  # Diagnostics of a score file: AUC against pair counting; no probes (they need the model).
  flat_s = [by_key[p.question_id, c["candidate_id"]] for p in pools for c in p.candidates]
  flat_c = [c["correct"] for p in pools for c in p.candidates]
  pos = [s for s, c in zip(flat_s, flat_c) if c]
  neg = [s for s, c in zip(flat_s, flat_c) if not c]
  pairs = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg])
  assert full["diagnostics"]["noisy"]["pooled_auc"] == pytest.approx(pairs)
  assert "probes" not in full["diagnostics"]["noisy"]
  # The paired difference from pass@1 at the largest N, recomputed per problem.
  d = [c[-1] - p.correct.mean() for c, p in zip(curves, pools)]
  assert full["vs_pass@1"]["noisy"]["diff"] == pytest.approx(np.mean(d))
  assert full["vs_pass@1"]["noisy"]["se"] == pytest.approx(np.std(d, ddof=1) / np.sqrt(len(d)))
  # Between methods, at the largest N (every pool whole), counted by hand: a verifier picks its
  # top-scored candidates (ties share); self-consistency the most voted answer (ties share).
  assert max(len(p) for p in pools) <= int(max(got["noisy"], key=int))
  task = task_rules.get_task("gsm8k")
  def whole_pool(p, name):
    s = np.array([by_name[name][p.question_id, c["candidate_id"]] for c in p.candidates])
    return p.correct[s == s.max()].mean()
  by_name = {n: {(r["question_id"], r["candidate_id"]): r["scores"][n] for r in saved}
             for n in ("noisy", "anti")}
  sc = []
  for p in pools:
    votes = collections.Counter(task.normalize(a) for a in p.answers if a)
    top = [a for a, k in votes.items() if k == max(votes.values())]
    right = {task.normalize(a) for a, c in zip(p.answers, p.correct) if a and c}
    sc.append(np.mean([a in right for a in top]))
  noisy, anti = ([whole_pool(p, n) for p in pools] for n in ("noisy", "anti"))
  between = full["between_methods"]
  assert list(between) == ["self_consistency", "noisy", "noisy+weighted_sc", "anti"]
  assert list(between["noisy"]) == ["noisy+weighted_sc", "anti", "anti+weighted_sc"]
  for got_d, d in ((between["self_consistency"]["anti"], np.subtract(sc, anti)),
                   (between["noisy"]["anti"], np.subtract(noisy, anti))):
    assert d.std() > 0
    assert got_d["diff"] == pytest.approx(d.mean())
    assert got_d["se"] == pytest.approx(np.std(d, ddof=1) / np.sqrt(len(d)))
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  assert matplotlib.image.imread(str(out / "best_of_n.png")).shape[2] in (3, 4)
  # Re-running on the saved scores reproduces the results exactly.
  eval_cli.main(["--task", "gsm8k", "--candidates", path, "--out", str(tmp_path / "again"),
             "--scores_file", str(out / "scores.jsonl"),
             "--gin_bindings", "EvalConfig.mc_samples = 300"])
  assert json.load(open(tmp_path / "again" / "results.json")) == full


def _rec(qid, i, **kw):
  return dict(question_id=qid, question=f"q{qid}", solution=f"The answer is {i}.",
              extracted_answer=str(i), correct=i == 1, **kw)


@pytest.mark.parametrize("lines,flags,match", [
    ([_rec(1, 0, gold_answer="1"), _rec(2, 1)], ["--require_gold"],
     r"c\.jsonl:2: question_id 2 has no gold_answer"),
    ([_rec(1, 0, candidate_id=0), _rec(1, 1, candidate_id=0)], [],
     r"c\.jsonl:2: duplicate candidate \(question_id 1, candidate_id 0\)"),
    ([], [], r"c\.jsonl: empty pool"),
    ([_rec(1, 0)], ["--verifier", "x=/nowhere"], r"expected NAME=MODEL_DIR:METHOD"),
    ([_rec(1, 0)], ["--verifier", "pass@1=/d:direct"], r"name 'pass@1' is reserved"),
])
def test_bad_inputs_fail_clearly_without_output(tmp_path, capsys, lines, flags, match):
  src = tmp_path / "c.jsonl"
  src.write_text("".join(json.dumps(l) + "\n" for l in lines))
  with pytest.raises(SystemExit):
    eval_cli.main(["--task", "gsm8k", "--candidates", str(src), "--out", str(tmp_path / "o"), *flags])
  assert re.search(match, capsys.readouterr().err)
  assert not (tmp_path / "o").exists()


def test_bad_scores_file(tmp_path, capsys):
  src = tmp_path / "c.jsonl"
  src.write_text("".join(json.dumps(_rec(1, i)) + "\n" for i in range(2)))
  cases = [([{"question_id": 1, "candidate_id": 0, "scores": {"v": 0.5}}], "no scores for 1"),
           ([{"question_id": 1, "candidate_id": 0, "scores": {"v": "high"}}], r"s\.jsonl:1: not a"),
           ([{"question_id": 2, "candidate_id": 0, "scores": {}}], r"s\.jsonl:1: candidate \('2'")]
  for i, (lines, match) in enumerate(cases):
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    with pytest.raises(SystemExit):
      eval_cli.main(["--candidates", str(src), "--out", str(tmp_path / f"o{i}"),
                     "--scores_file", str(tmp_path / "s.jsonl")])
    assert re.search(match, capsys.readouterr().err)


def _model_dir(tmp_path, name, vocab_path, vocab_size):
  cfg = config.tiny(vocab_size=vocab_size, num_layers=1, embed_dim=32, hidden_dim=64,
                    num_heads=2, num_kv_heads=1, head_dim=16, max_seq_len=512)
  # Random normal weights from the abstract tree (model.init_params compiles for seconds).
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: (rng.normal(size=a.shape) * 0.3).astype(a.dtype),
                        model.sharding.unbox(model.abstract_params(cfg)))
  return checkpoint.save_model_dir(str(tmp_path / name), cfg, params, tokenizer_path=vocab_path)


def test_a_verifier_trained_on_another_task_is_refused(tmp_path, capsys):
  """A last-letters verifier scored as GSM8K would get the GSM8K instruction it never saw."""
  vocab = vocab_lib.train_char_vocab(["abc Yes No"], str(tmp_path / "v.model"))
  model_dir = _model_dir(tmp_path, "verifier", vocab.path, vocab.vocab_size)
  meta_path = tmp_path / "verifier" / checkpoint.META_FILE
  meta = json.loads(meta_path.read_text())
  meta_path.write_text(json.dumps({**meta, "train": {"data": "policy_genrm", "task": "last_letters"}}))
  src = tmp_path / "c.jsonl"
  src.write_text(json.dumps(_rec(1, 0)) + "\n")
  with pytest.raises(SystemExit):
    eval_cli.main(["--task", "gsm8k", "--candidates", str(src), "--out", str(tmp_path / "o"),
                   "--verifier", f"v={model_dir}:direct"])
  assert re.search(r"verifier v .*trained on last_letters prompts .*use --task last_letters",
                   capsys.readouterr().err)
  assert not (tmp_path / "o").exists()


def test_the_task_a_model_trained_on():
  assert task_rules.trained_task("policy_genrm", "word_sorting") == "word_sorting"
  assert task_rules.trained_task("policy_genrm") is None
  assert task_rules.trained_task("last_letters_policy_sft") == "last_letters"
  assert task_rules.trained_task("gsm8k_genrm_cot") == "gsm8k"
  assert task_rules.trained_task("mine_genrm") is None
  # Same instruction (none): a word-sorting verifier may score last letters.
  task_rules.check_trained_task({"train": {"task": "word_sorting"}}, "last_letters", "x")
  task_rules.check_trained_task({}, "gsm8k", "x")
  with pytest.raises(ValueError, match="x: trained on gsm8k prompts"):
    task_rules.check_trained_task({"train": {"task": "gsm8k"}}, "word_sorting", "x")


def test_a_model_directory_loads_from_a_relative_path(tmp_path, monkeypatch):
  vocab = vocab_lib.train_char_vocab(["abc Yes No"], str(tmp_path / "v.model"))
  _model_dir(tmp_path, "verifier", vocab.path, vocab.vocab_size)
  _, want, _ = checkpoint.load_model_dir(str(tmp_path / "verifier"))
  monkeypatch.chdir(tmp_path)
  _, got, _ = checkpoint.load_model_dir("verifier")
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_verifier_vocabulary_mismatch_is_an_error(tmp_path, capsys):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  good = vocab_lib.train_char_vocab(["abc Yes No"], str(tmp_path / "v.model"))
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(["abc Yes No xyz"] * 5), model_prefix=str(tmp_path / "plain"),
      model_type="char", vocab_size=20, minloglevel=2)
  plain = vocab_lib.load_vocab(str(tmp_path / "plain.model"))
  src = tmp_path / "c.jsonl"
  src.write_text(json.dumps(_rec(1, 1)) + "\n")
  cases = [(_model_dir(tmp_path, "small", good.path, good.vocab_size - 5),
            "'vocab_size'=.* does not match its tokenizer"),
           (_model_dir(tmp_path, "noverdict", plain.path, plain.vocab_size),
            r"' Yes' is not a single token")]
  for i, (model_dir, match) in enumerate(cases):
    with pytest.raises(SystemExit):
      eval_cli.main(["--task", "gsm8k", "--candidates", str(src), "--out", str(tmp_path / f"o{i}"),
                 "--verifier", f"v={model_dir}:direct"])
    err = capsys.readouterr().err
    assert "verifier v" in err and re.search(match, err), err


def test_generate_with_a_tiny_policy(tmp_path):
  vocab = vocab_lib.train_char_vocab(word_puzzles.texts_for_vocab("last_letters", count=5),
                                     str(tmp_path / "v.model"))
  policy = _model_dir(tmp_path, "policy", vocab.path, vocab.vocab_size)
  out = str(tmp_path / "gen.jsonl")
  generate.main(["--checkpoint", policy, "--task", "last_letters", "--split", "test",
                 "--num_problems", "2", "--num_samples", "3", "--out", out,
                 "--gin_bindings", "SamplerConfig.max_new_tokens = 12",
                 "--gin_bindings", "GenerateConfig.problem_seed = 5"])
  pools = cands.read_candidates(out, require_gold=True)
  problems = word_puzzles.split_problems("last_letters", "test", 2, seed=5)
  assert [p.question for p in pools] == [p.question for p in problems]
  for pool, prob in zip(pools, problems):
    assert len(pool) == 3 and pool.gold_answer == prob.answer
    for c in pool.candidates:
      assert c["correct"] == word_puzzles.is_correct(prob, c["solution"])
      assert c["finish_reason"] in ("stop", "length")
  # The same seed gives the same samples.
  generate.main(["--checkpoint", policy, "--task", "last_letters", "--split", "test",
                 "--num_problems", "2", "--num_samples", "3", "--out", out + "2",
                 "--gin_bindings", "SamplerConfig.max_new_tokens = 12",
                 "--gin_bindings", "GenerateConfig.problem_seed = 5"])
  assert open(out).read() == open(out + "2").read()

  # eval can sample the candidates itself (same policy, seed and problems: the same file).
  eval_cli.main(["--task", "last_letters", "--policy", policy, "--num_samples", "3",
             "--num_problems", "2", "--split", "test", "--out", str(tmp_path / "ev"),
             "--gin_bindings", "SamplerConfig.max_new_tokens = 12",
             "--gin_bindings", "GenerateConfig.problem_seed = 5"])
  assert open(tmp_path / "ev" / "candidates.jsonl").read() == open(out).read()
  full = json.load(open(tmp_path / "ev" / "results.json"))
  results = full["best_of_n"]
  assert list(results) == ["pass@1", "pass@n", "self_consistency"]
  assert list(results["pass@n"]) == ["1", "2", "3"]
  # Sampled candidates carry their generated token counts: N samples cost N times their mean.
  recs = [json.loads(l) for l in open(out)]
  mean = np.mean([r["num_tokens"] for r in recs])
  assert full["tokens_per_problem"]["self_consistency"]["3"] == pytest.approx(3 * mean)
  assert full["tokens_per_problem"]["pass@1"]["3"] == pytest.approx(mean)


def test_gsm8k_problems_and_answer_checks(tmp_path):
  src = tmp_path / "g.jsonl"
  src.write_text(json.dumps({"question": "How many?", "answer": "2 + 2 = <<2+2=4>>4\n#### 1,000"})
                 + "\n")
  probs = generate.load_problems(
      generate.GenerateConfig(task="gsm8k", data_file=str(src)))
  assert probs == [{"question_id": "test-0", "question": "How many?", "gold_answer": "1000"}]
  task = task_rules.get_task("gsm8k")
  assert task.extract("So 1,000 in all. The answer is $1,000.") == "1000"
  assert task.check("1000.0", "1,000") and not task.check("999", "1000")
  assert not task.check(None, "1000")
  words = task_rules.get_task("word_sorting")
  assert words.extract("1 a\nThe answer is  apple  fig.") == "apple fig"
  assert words.check("apple fig", "apple  fig")
  with pytest.raises(ValueError, match="--data_file"):
    generate.load_problems(generate.GenerateConfig(task="gsm8k"))


def test_eval_with_tiny_random_verifiers(tmp_path):
  from genrm_jax import scoring  # pylint: disable=g-import-not-at-top
  vocab = vocab_lib.train_char_vocab(word_puzzles.texts_for_vocab("last_letters", count=5),
                                     str(tmp_path / "v.model"))
  verifier = _model_dir(tmp_path, "verifier", vocab.path, vocab.vocab_size)
  recs = word_puzzles.candidates("last_letters", "test", problems_per_length=3,
                                samples_per_problem=4, seed=1)
  for r in recs:
    r["extracted_answer"] = task_rules.get_task("last_letters").extract(r["solution"])
    del r["rationale"]
  src = str(tmp_path / "c.jsonl")
  pools = cands.write_candidates(src, recs, require_gold=True)
  out = tmp_path / "eval"
  eval_cli.main(["--task", "last_letters", "--candidates", src, "--out", str(out),
             "--verifier", f"gen={verifier}:direct", "--verifier", f"dpo={verifier}:dpo",
             "--verifier", f"cot={verifier}:cot", "--cot_votes", "2",
             "--gin_bindings", "ScoringConfig.rationale = @SamplerConfig()",
             "--gin_bindings", "SamplerConfig.max_new_tokens = 6"])
  # Strict JSON (what jq reads): 3 problems leave reliability bins empty, and they are null.
  full = json.loads((out / "results.json").read_text(), parse_constant=pytest.fail)
  assert any(b["confidence"] is None for b in full["diagnostics"]["gen"]["reliability"])
  results = full["best_of_n"]
  assert list(results) == ["pass@1", "pass@n", "self_consistency", "gen", "gen+weighted_sc",
                           "dpo", "cot", "cot[K=1]", "cot+weighted_sc"]
  assert all(list(row) == ["1", "2", "4"] and all(0 <= v <= 1 for v in row.values())
             for row in results.values())
  # Paired between methods: every pair once, CoT's first-k-votes rows not among them.
  rivals = ["self_consistency", "gen", "gen+weighted_sc", "dpo", "cot", "cot+weighted_sc"]
  assert list(full["between_methods"]) == rivals[:-1]
  assert all(list(row) == rivals[i + 1:]
             for i, row in enumerate(full["between_methods"].values()))
  diag = full["diagnostics"]
  assert set(diag) == {"gen", "dpo", "cot"} and "brier" not in diag["dpo"]
  for name in diag:
    assert set(diag[name]["probes"]) >= {"drop_answer_letter", "change_answer_letter",
                                         "drop_step"}
    assert all(0 <= v["rate"] <= 1 and v["problems"] == 3 for v in diag[name]["probes"].values())
  # Tokens: solutions counted in the verifier's vocabulary (plus EOS); CoT adds its K votes.
  sol = [len(vocab.encode(c["solution"])) + 1 for p in pools for c in p.candidates]
  saved_lines = [json.loads(l) for l in open(out / "scores.jsonl")]
  rat = np.array([r["rationale_tokens"]["cot"] for r in saved_lines])
  assert rat.shape == (len(sol), 2) and (rat >= 1).all() and (rat <= 6).all()
  tokens = full["tokens_per_problem"]
  assert tokens["gen"]["4"] == pytest.approx(4 * np.mean(sol))
  assert tokens["cot"]["4"] == pytest.approx(4 * np.mean(sol) + 4 * rat.sum(axis=1).mean())
  assert tokens["cot[K=1]"]["4"] == pytest.approx(4 * np.mean(sol) + 4 * rat[:, 0].mean())
  for png in ("best_of_n.png", "accuracy_vs_tokens.png", "reliability.png"):
    assert (out / png).exists(), png
  meta = json.load(open(out / "meta.json"))
  assert any("dpo: scores are not probabilities" in n for n in meta["notes"])
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  assert matplotlib.image.imread(str(out / "best_of_n.png")).ndim == 3
  # Each saved score belongs to its own candidate: recompute a pool's direct scores here.
  cfg, params, _, v = checkpoint.load_model_and_vocab(verifier)
  pool = pools[1]
  opts = config.ScoringConfig(instruction=word_puzzles.INSTRUCTIONS["last_letters"])
  want = scoring.score("genrm", cfg, params, v, [c["question"] for c in pool.candidates],
                       [c["solution"] for c in pool.candidates], opts).scores
  saved = {(r["question_id"], r["candidate_id"]): r["scores"]
           for r in map(json.loads, open(out / "scores.jsonl"))}
  got = [saved[pool.question_id, c["candidate_id"]]["gen"] for c in pool.candidates]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert all(s["dpo"] < 0 for s in saved.values())


def test_repeated_solutions_are_scored_once(monkeypatch):
  """A pool's repeated (question, solution) texts reach the verifier once and share its outputs."""
  from genrm_jax import scoring  # pylint: disable=g-import-not-at-top
  seen = []

  class Fake:
    def score(self, method, questions, solutions, opts, seed=0):
      del method, opts, seed
      seen.append(list(zip(questions, solutions)))
      n, k = len(solutions), 2
      votes = np.array([[len(s) + j for j in range(k)] for s in solutions], np.float64)
      return scoring.ScoreResult(scores=votes.mean(1), rationale_scores=votes,
                                 rationale_tokens=np.full((n, k), 3.0))

  monkeypatch.setattr(scoring, "load_verifier", lambda *a, **kw: Fake())
  sols = ["a: a\nThe answer is a.", "a: b\nThe answer is b.", "a: a\nThe answer is a."]
  pools = [cands.Pool("q0", "a", "a", tuple({"candidate_id": i, "question": "a", "solution": s}
                                            for i, s in enumerate(sols))),
           cands.Pool("q1", "b", "b", ({"candidate_id": 0, "question": "b", "solution": sols[0]},))]
  spec = eval_cli.VerifierArg("cot", "unused", "cot")
  opts = config.ScoringConfig(instruction=task_rules.get_task("last_letters").instruction,
                              num_rationales=2)
  out = eval_cli.score_pools(spec, pools, eval_cli.EvalConfig(cot_votes=2), opts)
  # Same solution under another question is another item; the repeat inside q0 is not.
  assert seen == [[("a", sols[0]), ("a", sols[1]), ("b", sols[0])]]
  want = np.array([[len(s) + j for j in range(2)] for s in sols + [sols[0]]], np.float64)
  np.testing.assert_array_equal(out["votes"], want)
  np.testing.assert_array_equal(out["score"], want.mean(1))
  assert out["rationale_tokens"].shape == (4, 2)
