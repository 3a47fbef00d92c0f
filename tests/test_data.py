"""Tasks, mixtures and batches of genrm_jax.data on tiny generated algorithmic data."""

from __future__ import annotations

import collections

import numpy as np
import pytest

import tasks  # noqa: F401  (registers every task)
from genrm_jax import word_puzzles
from genrm_jax import candidates as candidates_lib
from genrm_jax import data
from genrm_jax import formats
from genrm_jax import records
from genrm_jax.objectives import lm as lm_objective
from genrm_jax import vocab as vocab_lib
from tasks import algorithmic as alg_tasks

SUFFIXES = {"verify": "lm", "verify_cot": "lm", "correct": "lm", "genrm": "lm", "genrm_cot": "lm",
            "discriminative": "disc", "dpo_pairs": "dpo"}
SMALL = dict(problems_per_length=12, samples_per_problem=3, seed=0)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  texts = [t for task in word_puzzles.TASKS for t in word_puzzles.texts_for_vocab(task, count=10)]
  v = vocab_lib.train_char_vocab(texts, str(tmp_path_factory.mktemp("vocab") / "char.model"))
  for task in word_puzzles.TASKS:
    alg_tasks.register_algorithmic(task, **SMALL)
  return v


def _batch(name, vocab, **kw):
  kw = {"batch_size": 4, "seq_len": 320, "objective": data.TASK_KIND[name], **kw}
  return next(data.get_batches(name, "train", vocab=vocab, **kw))


def _segments(row):
  """[(start, end)] of each packed segment of a row."""
  sids = row["segment_ids"]
  return [(int(np.flatnonzero(sids == s)[0]), int(np.flatnonzero(sids == s)[-1]) + 1)
          for s in np.unique(sids[sids > 0])]


@pytest.mark.parametrize("task", word_puzzles.TASKS)
def test_every_task_and_mixture_yields_batches(vocab, task):
  for suffix, kind in SUFFIXES.items():
    b = _batch(f"{task}_{suffix}", vocab, seq_len=400)
    key = {"lm": "inputs", "disc": "inputs", "dpo": "chosen_inputs"}[kind]
    assert b[key].shape == (4, 400) and b[key].dtype == np.int32
    if kind == "lm":
      assert b["loss_weights"].sum() > 0
      assert set(b) == {"inputs", "targets", "loss_weights", "positions", "segment_ids",
                        "verdict_weights"}
    elif kind == "disc":
      assert set(np.unique(b["labels"])) <= {0.0, 1.0}
      assert b["score_weights"].sum() >= 4 and not b["labels"][b["segment_ids"] == 0].any()
      for i, row in enumerate(b["segment_ids"]):  # each example: one label, token weights sum to 1
        for sid in np.unique(row[row > 0]):
          where = row == sid
          assert len(np.unique(b["labels"][i][where])) == 1
          np.testing.assert_allclose(b["token_weights"][i][where].sum(), 1.0, rtol=1e-6)
    else:
      assert b["chosen_loss_weights"].sum() > 0 and b["rejected_loss_weights"].sum() > 0


def test_loss_mask_covers_exactly_the_targets(vocab):
  cands = word_puzzles.candidates("last_letters", "train", **SMALL)
  want = {(r["inputs"], r["targets"]) for r in records.verify(cands, word_puzzles.INSTRUCTIONS[
      "last_letters"])}
  yes, no = vocab_lib.verdict_token_ids(vocab)
  b = _batch("last_letters_verify", vocab, batch_size=8)
  seen = 0
  for i in range(8):
    row = {k: v[i] for k, v in b.items()}
    for s, e in _segments(row):
      inp, tgt = row["inputs"][s:e], row["targets"][s:e]
      lw, vw = row["loss_weights"][s:e], row["verdict_weights"][s:e]
      assert inp[0] == vocab.bos_id
      np.testing.assert_array_equal(tgt[:-1], inp[1:])  # next-token targets within the segment
      assert tgt[-1] == vocab.eos_id
      k = int(np.argmax(lw))
      assert lw[:k].sum() == 0 and lw[k:].all()  # the loss is one contiguous suffix
      prompt = vocab.sp.decode(inp[1:k + 1].tolist())
      target = vocab.sp.decode(tgt[k:-1].tolist())
      assert (prompt, target) in want
      assert vw.sum() == 1 and tgt[np.argmax(vw)] == (yes if target == formats.YES else no)
      seen += 1
  assert seen >= 8


def test_packed_segments_are_independent(vocab):
  """Positions restart per segment, and a tiny Gemma gives each segment the logits it has alone."""
  import jax  # pylint: disable=g-import-not-at-top
  from genrm_jax import config, model  # pylint: disable=g-import-not-at-top
  b = _batch("last_letters_genrm", vocab, batch_size=2, seq_len=400)
  row = {k: v[0] for k, v in b.items()}
  segs = _segments(row)
  assert len(segs) >= 2
  for s, e in segs:
    np.testing.assert_array_equal(row["positions"][s:e], np.arange(e - s))
  assert (row["segment_ids"][segs[-1][1]:] == 0).all()
  cfg = config.preset("tiny", vocab_size=vocab.vocab_size)
  params = model.init_params(cfg, jax.random.key(0))
  apply = jax.jit(lambda t, p, s: model.Transformer(cfg).apply({"params": params}, t, p, s)[0])
  packed = apply(row["inputs"][None], row["positions"][None], row["segment_ids"][None])
  for s, e in segs:
    # The segment alone at the start of an otherwise empty row (same shape: one compilation).
    alone = {k: np.zeros_like(row[k]) for k in ("inputs", "positions", "segment_ids")}
    alone["inputs"][:e - s], alone["positions"][:e - s] = row["inputs"][s:e], np.arange(e - s)
    alone["segment_ids"][:e - s] = 1
    logits = apply(alone["inputs"][None], alone["positions"][None], alone["segment_ids"][None])
    np.testing.assert_allclose(packed[0, s:e], logits[0, :e - s], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("task,lam", [("last_letters", 1 / 3), ("word_sorting", 1 / 3)])
def test_mixture_proportions_match_lambda(vocab, task, lam):
  n = 3000
  it = data.tokenized_examples(f"{task}_genrm", "train", seed=1, vocab=vocab)
  verdict = np.array([next(it)["verdict"] for _ in range(n)])
  frac_correct = 1 - verdict.mean()
  p = lam / (1 + lam)
  assert abs(frac_correct - p) < 4 * np.sqrt(p * (1 - p) / n), frac_correct


def test_lambda_is_set_by_the_data_config(vocab):
  import gin  # pylint: disable=g-import-not-at-top
  from genrm_jax import cli, train  # pylint: disable=g-import-not-at-top
  cli.parse_gin([], ["MixtureConfig.lam = 1.0"])
  try:
    exp = train.experiment_from_gin()
    assert exp.data.mixture == records.MixtureConfig(lam=1.0)
    tasks.register_all(exp.data.mixture)
    it = data.tokenized_examples("last_letters_genrm", "train", seed=2, vocab=vocab)
    frac = 1 - np.mean([next(it)["verdict"] for _ in range(1000)])
    assert abs(frac - 0.5) < 0.07
    # One place for lambda: the registration functions refuse it from gin.
    with pytest.raises(ValueError, match="lam"):
      cli.parse_gin([], ["import tasks", "register_algorithmic.lam = 1.0"])
  finally:
    gin.clear_config()
    for task in word_puzzles.TASKS:
      alg_tasks.register_algorithmic(task, **SMALL)


def test_deterministic_and_resumable(vocab):
  def take(seed, start, n):
    it = data.get_batches("word_sorting_genrm", "train", batch_size=4, seq_len=320, objective="lm",
                          seed=seed, start_batch=start, vocab=vocab)
    return [next(it) for _ in range(n)]
  full = take(0, 0, 5)
  again = take(0, 0, 5)
  resumed = take(0, 3, 2)
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  for a, b in zip(full[3:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other = take(1, 0, 1)[0]
  assert not np.array_equal(other["inputs"], full[0]["inputs"])


def _all_examples(vocab, **kw):
  it = data.get_batches("last_letters_discriminative", "validation", batch_size=8, seq_len=320,
                        objective="disc", repeat=False, vocab=vocab, **kw)
  rows = []
  for b in it:
    for i in range(len(b["labels"])):
      for start, end in _segments({k: v[i] for k, v in b.items()}):
        assert b["score_weights"][i][end - 1] == 1.0 and b["score_weights"][i][start:end].sum() == 1
        rows.append(vocab.sp.decode(b["inputs"][i][start + 1:end].tolist()))
  return rows, it.stats


def test_shards_are_disjoint_and_cover_the_split(vocab):
  whole, _ = _all_examples(vocab)
  s0, _ = _all_examples(vocab, shard_id=0, num_shards=2)
  s1, _ = _all_examples(vocab, shard_id=1, num_shards=2)
  n = len(word_puzzles.candidates("last_letters", "validation", **SMALL))
  assert len(whole) == n == len(s0) + len(s1)
  assert sorted(whole) == sorted(s0 + s1)
  with pytest.raises(ValueError, match="divisible"):
    data.get_batches("last_letters_verify", "train", batch_size=3, seq_len=64, num_shards=2,
                     vocab=vocab)


def test_truncation_is_counted_and_verdicts_never_cut(vocab):
  it = data.get_batches("word_sorting_genrm_cot", "train", batch_size=4, seq_len=110, vocab=vocab)
  yes, no = vocab_lib.verdict_token_ids(vocab)
  for _ in range(20):
    b = next(it)
    for i in range(4):
      row = {k: v[i] for k, v in b.items()}
      for s, e in _segments(row):
        tgt = row["targets"][s:e]
        # A segment either has its verdict (and EOS right after) or is an SFT segment.
        if row["verdict_weights"][s:e].any():
          assert tgt[-1] == vocab.eos_id and tgt[-2] in (yes, no)
  assert it.stats.dropped > 0 and it.stats.truncated > 0
  assert "dropped" in it.stats.summary()


def test_every_verdict_of_a_rationale_is_weighted(vocab):
  """A "walk" rationale gives a verdict per step: each is a verdict position, as the final one."""
  yes, no = vocab_lib.verdict_token_ids(vocab)
  b = _batch("last_letters_verify_cot", vocab, batch_size=4, seq_len=400)
  per_segment = []
  for i in range(4):
    row = {k: v[i] for k, v in b.items()}
    for s, e in _segments(row):
      tgt, lw, vw = (row[k][s:e] for k in ("targets", "loss_weights", "verdict_weights"))
      np.testing.assert_array_equal(vw > 0, (lw > 0) & np.isin(tgt, [yes, no]))
      per_segment.append(int(vw.sum()))
  # 2-4 words here: at most one verdict per step line (none on a "missing" one), then the final.
  assert max(per_segment) >= 3 and all(1 <= n <= 5 for n in per_segment)
  # Inside running text a " No" is no verdict: only the final one counts there.
  conv = lm_objective.LM().converter(400, vocab, pack=False)
  ids = lambda text: np.asarray(vocab.encode(text), np.int32)
  eos = np.asarray([vocab.eos_id], np.int32)
  target = ids("x No, y\nz Yes\nVerification: Is the answer correct (Yes/No)? No")
  (row,) = conv.add({"inputs": ids("Q?"), "targets": np.concatenate([target, eos]),
                     "verdict": 1}) + conv.flush()
  marked = [vocab.sp.id_to_piece(int(t)) for t in row["targets"][row["verdict_weights"] > 0]]
  assert marked == ["▁Yes", "▁No"]


def test_one_pass_ends_with_padding_rows(vocab):
  rows, stats = _all_examples(vocab)
  assert stats.examples == len(rows) and stats.dropped == 0


def test_bad_records_fail_clearly(vocab):
  bad = [{"inputs": "Q", "targets": " Maybe", "where": "f.jsonl:7"}]
  data.register_task("bad_verify", "lm", lambda split: bad, ["train"], verdict=True)
  with pytest.raises(ValueError, match=r"f\.jsonl:7.*does not end in"):
    data.get_batches("bad_verify", "train", batch_size=1, seq_len=32, vocab=vocab)
  data.register_task("empty_solution", "lm", lambda split: [{"inputs": "Q", "targets": " "}],
                     ["train"])
  with pytest.raises(ValueError, match="'targets' is missing, empty"):
    data.get_batches("empty_solution", "train", batch_size=1, seq_len=32, vocab=vocab)
  # A sampled solution may be empty (a wrong candidate): the classifier scores its prompt's end.
  data.register_task("empty_disc", "disc", lambda split: [{"inputs": "Q", "targets": "",
                                                           "label": 0}], ["train"])
  (b,) = data.get_batches("empty_disc", "train", batch_size=1, seq_len=32, objective="disc",
                          vocab=vocab, repeat=False)
  assert b["score_weights"].sum() == 1 and b["loss_weights"].sum() == 0
  data.register_task("no_solution", "disc", lambda split: [{"inputs": "Q", "label": 0}],
                     ["train"])
  with pytest.raises(ValueError, match="'targets' is missing"):
    data.get_batches("no_solution", "train", batch_size=1, seq_len=32, objective="disc",
                     vocab=vocab)
  with pytest.raises(ValueError, match="not objective"):
    data.get_batches("last_letters_verify", "train", batch_size=1, seq_len=32, objective="dpo",
                     vocab=vocab)


def test_policy_candidates_are_balanced_per_question(vocab, tmp_path):
  # Solved at random: each question gets a different mix of right and wrong samples.
  cands = word_puzzles.candidates("last_letters", "train", problems_per_length=6,
                                 samples_per_problem=6, error_rate=0.5, seed=3)
  path = str(tmp_path / "cands.jsonl")
  candidates_lib.write_candidates(path, [
      {**c, "extracted_answer": word_puzzles.extract_answer(c["solution"])} for c in cands])
  want = collections.Counter()
  for c in cands:
    want[(c["question"], c["correct"])] += 1
  for cap, balance in ((None, False), (2, True), (None, True)):
    alg_tasks.register_policy_candidates("last_letters", path, src="selected",
                                          max_per_class=cap, balance=balance)
    got = collections.Counter()
    for ex in data.tokenized_examples("selected_discriminative", "train", repeat=False,
                                      vocab=vocab):
      text = vocab.sp.decode(ex["inputs"].tolist())
      question = text.split("Q: ", 1)[1].split("\n", 1)[0]
      got[(question, bool(ex["label"]))] += 1
    expect = {}
    for (q, label), n in want.items():
      m = min(want[(q, True)], want[(q, False)]) if balance else n
      m = min(m, cap) if cap is not None else m
      if m:
        expect[(q, label)] = m
    assert got == expect, (cap, balance)
    assert not balance or got  # some questions have both classes