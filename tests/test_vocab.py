"""genrm_jax.vocab: char-level SentencePiece training, verdict tokens, seqio agreement."""

from __future__ import annotations

import io

import pytest
import sentencepiece as spm

from genrm_jax import formats
from genrm_jax import vocab as vocab_lib

TEXTS = ["Q: abc def\nA: Let's think step by step.\nabc:c\nThe answer is cf.\n"
         "Verification: Is the answer correct (Yes/No)? Yes", "Yes No maybe"]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  return vocab_lib.train_char_vocab(TEXTS, str(tmp_path_factory.mktemp("v") / "char.model"))


def test_verdict_tokens_are_single_user_symbols(vocab):
  yes, no = vocab_lib.verdict_token_ids(vocab)
  assert vocab.sp.id_to_piece(yes) == "▁Yes" and vocab.sp.id_to_piece(no) == "▁No"
  assert vocab.encode(formats.YES) == [yes] and vocab.encode(formats.NO) == [no]
  assert (vocab.pad_id, vocab.eos_id, vocab.bos_id) == (0, 1, 2)


def test_split_tokenization_equals_joint(vocab):
  prompt = formats.direct_prompt("abc def", "abc:c\nThe answer is cf.", "Do it.\n")
  for target in (formats.YES, formats.NO):
    assert vocab.encode(prompt) + vocab.encode(target) == vocab.encode(prompt + target)
  assert vocab.decode(vocab.encode(prompt) + [vocab.eos_id, 7]) == prompt


def test_unseen_characters_round_trip_as_bytes(vocab):
  text = "Zoë paid €5 — ok"
  assert vocab.sp.unk_id() not in vocab.encode(text)
  assert vocab.decode(vocab.encode(text)) == text


def test_seqio_vocabulary_agrees(vocab):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  text = (formats.cot_prompt("xy zw", "xy:y\nThe answer is yw.") + "ok\n" + formats.VERDICT_QUESTION
          + formats.NO)
  assert vocab.seqio().encode_tf(tf.constant(text)).numpy().tolist() == vocab.encode(text)


def test_vocab_without_single_verdict_token_is_rejected(tmp_path):
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_writer=buf, model_type="char",
                                 vocab_size=40, hard_vocab_limit=False, minloglevel=2)
  path = tmp_path / "plain.model"
  path.write_bytes(buf.getvalue())
  with pytest.raises(ValueError, match="not a single token"):
    vocab_lib.verdict_token_ids(str(path))


def test_default_vocab_resolution(vocab, monkeypatch):
  monkeypatch.delenv(vocab_lib.VOCAB_ENV, raising=False)
  vocab_lib.set_default_vocab(None)
  with pytest.raises(ValueError, match="no vocabulary"):
    vocab_lib.default_vocab()
  monkeypatch.setenv(vocab_lib.VOCAB_ENV, vocab.path)
  assert vocab_lib.default_vocab().path == vocab.path
  with vocab_lib.using(vocab.path) as v:
    assert v.path == vocab.path
  vocab_lib.set_default_vocab(None)
  with pytest.raises(FileNotFoundError):
    vocab_lib.load_vocab(str(vocab.path) + ".missing")


def test_phrases_are_single_pieces_and_split_tokenization_still_holds(tmp_path):
  v = vocab_lib.train_char_vocab(TEXTS, str(tmp_path / "p.model"), phrases=formats.PHRASES)
  for phrase in formats.PHRASES:
    (piece,) = v.encode(phrase)
    assert v.decode([piece]) == phrase
  q, s = "abc def", "abc:c\ndef:f\nThe answer is cf."
  pairs = [(formats.direct_prompt(q, s, ""), formats.YES),
           (formats.cot_prompt(q, s, ""), formats.cot_target("abc:c ok\nanswer cf ok", True)),
           (formats.question_prompt(q, ""), s)]
  for prompt, target in pairs:
    assert v.encode(prompt) + v.encode(target) == v.encode(prompt + target)
    assert v.decode(v.encode(prompt + target)) == prompt + target
  # Half the tokens of a verification record were the format's fixed text.
  plain = vocab_lib.train_char_vocab(TEXTS, str(tmp_path / "c.model"))
  direct = formats.direct_prompt(q, s, "")
  assert len(v.encode(direct)) < 0.6 * len(plain.encode(direct))
  assert vocab_lib.verdict_token_ids(v) == vocab_lib.verdict_token_ids(plain)
  with pytest.raises(ValueError, match="no newline"):
    vocab_lib.train_char_vocab(TEXTS, str(tmp_path / "bad.model"), phrases=("a\nb",))
