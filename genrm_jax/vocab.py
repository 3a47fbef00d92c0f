"""Vocabularies: a Gemma SentencePiece model, or a character-level one trained here for tiny runs.

A vocabulary is a SentencePiece ``.model`` file. The model directory stores a copy of it
(``checkpoint.save_model_dir(..., tokenizer_path=vocab.path)``), so eval and export always decode
with the vocabulary the parameters were trained with.

GenRM reads P(" Yes") after the verification question, so " Yes" and " No" must each be ONE token.
In Gemma's vocabulary they are the pieces "▁Yes" / "▁No"; the char-level trainer adds them as
user-defined symbols so the same holds for tiny runs. Char-level models use Gemma's conventions
(pad 0, eos 1, bos 2, unk 3; no dummy prefix; whitespace kept as is) so that tokenizing a prompt and
its target separately gives the same ids as tokenizing their concatenation.

This module does not import TensorFlow; ``Vocab.seqio()`` builds the seqio vocabulary on demand.
"""

from __future__ import annotations

import contextlib
import io
import os
import string
from typing import Any, Iterable, Iterator, Sequence

import sentencepiece as spm

from genrm_jax import formats

VOCAB_ENV = "GENRM_VOCAB"
_VERDICT_PIECES = ("▁Yes", "▁No")


class Vocab:
  """A SentencePiece vocabulary loaded from a ``.model`` file (no TensorFlow needed)."""

  def __init__(self, path: str):
    if not os.path.exists(path):
      raise FileNotFoundError(f"SentencePiece model {path} does not exist")
    self.path = os.path.abspath(path)
    self.sp = spm.SentencePieceProcessor(model_file=self.path)
    self._seqio = None

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return max(self.sp.pad_id(), 0)

  @property
  def eos_id(self) -> int:
    return self.sp.eos_id()

  @property
  def bos_id(self) -> int:
    return self.sp.bos_id()

  def encode(self, text: str | list[str]) -> Any:
    return self.sp.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    """Decodes ids, stopping at the first EOS and ignoring padding / BOS."""
    out = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i not in (self.pad_id, self.bos_id):
        out.append(i)
    return self.sp.decode(out)

  def seqio(self):
    """The same model as a ``seqio.SentencePieceVocabulary`` (imports TensorFlow)."""
    if self._seqio is None:
      from genrm_jax import startup  # pylint: disable=g-import-not-at-top
      startup.import_tensorflow()
      import seqio  # pylint: disable=g-import-not-at-top
      startup.quiet_sentencepiece()
      self._seqio = seqio.SentencePieceVocabulary(self.path)
    return self._seqio

  def __repr__(self) -> str:
    return f"Vocab({self.path!r}, size={self.vocab_size})"


def load_vocab(path: str) -> Vocab:
  return Vocab(path)


# Gemma 1 pads its 256,000-piece vocabulary to 256,128 embedding rows, a multimodal Gemma 3 its
# 262,144 to 262,208: more slack than this means a mismatched tokenizer.
MAX_PADDING = 128


def check_fits(rows: int, vocab: Vocab | str, where: str, max_padding: int | None = 0) -> int:
  """Fails unless the vocabulary fits an embedding of ``rows`` (``where``'s ``vocab_size``):
  exactly (``max_padding`` 0), or with at most ``max_padding`` rows to spare (None: any number).
  Returns the number of pieces. Ids past the embedding would turn into NaN losses or garbage
  scores deep inside a jitted step, so every path that pairs a tokenizer with weights asks here."""
  if isinstance(vocab, str):
    vocab = load_vocab(vocab)
  pieces = vocab.vocab_size
  spare = rows - pieces
  if spare < 0 or (max_padding is not None and spare > max_padding):
    need = (f"exactly {pieces}" if max_padding == 0 else f"at least {pieces}"
            if max_padding is None else f"{pieces} to {pieces + max_padding}")
    raise ValueError(f"{where}: field 'vocab_size'={rows} does not match its tokenizer "
                     f"{vocab.path} ({pieces} pieces: the embedding needs {need} rows)")
  return pieces


def verdict_token_ids(vocab: Vocab | str) -> tuple[int, int]:
  """(yes_id, no_id): the single tokens of " Yes" and " No"; an error if either is not one token."""
  if isinstance(vocab, str):
    vocab = load_vocab(vocab)
  ids = []
  for text in (formats.YES, formats.NO):
    # Tokenize after a "?" as in a real prompt: some models treat a leading space specially.
    toks = vocab.encode("?" + text)
    if len(toks) != 2 or vocab.encode("?") != toks[:1]:
      raise ValueError(f"{vocab.path}: {text!r} is not a single token after '?' (got "
                       f"{[vocab.sp.id_to_piece(t) for t in toks]}); GenRM needs one verdict token")
    ids.append(toks[1])
  return ids[0], ids[1]


def train_char_vocab(texts: Iterable[str], out_path: str, byte_fallback: bool = True,
                     phrases: Sequence[str] = ()) -> Vocab:
  """A character-level vocabulary over ``texts`` (+ printable ASCII): see ``train_vocab``."""
  return train_vocab(texts, out_path, "char", byte_fallback=byte_fallback, phrases=phrases)


def train_vocab(texts: Iterable[str], out_path: str, model_type: str = "char", vocab_size: int = 0,
                byte_fallback: bool = True, phrases: Sequence[str] = ()) -> Vocab:
  """Trains a SentencePiece model over ``texts`` (+ printable ASCII) and writes it atomically.

  ``model_type`` "char" takes every character seen (``vocab_size`` ignored); "unigram" / "bpe"
  learn ``vocab_size`` pieces (for benchmarks with realistic token counts). "▁Yes" / "▁No" are
  user-defined symbols (one token each, as in Gemma) and "\\n" is a piece of its own.
  ``byte_fallback`` encodes characters never seen in training as UTF-8 bytes instead of ``<unk>``,
  so no text is silently lost. ``phrases`` (e.g. ``formats.PHRASES``) become one piece each, as
  a word-piece vocabulary makes frequent words one piece: at character level the fixed text of
  the GenRM format would otherwise be half of every verification example.
  """
  for p in phrases:
    if not p or "\n" in p:
      raise ValueError(f"phrase {p!r}: phrases must be non-empty and hold no newline")
  seed_text = string.printable.replace("\n", "").replace("\x0b", "").replace("\x0c", "")
  corpus = [seed_text, *(t for t in texts if t)]
  char = model_type == "char"
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus), model_writer=buf, model_type=model_type,
      vocab_size=100000 if char else vocab_size, hard_vocab_limit=not char,
      user_defined_symbols=[*_VERDICT_PIECES, "\n", *(p.replace(" ", "▁") for p in phrases)],
      pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
      character_coverage=1.0, byte_fallback=byte_fallback, split_by_whitespace=not char,
      max_sentence_length=1 << 20, minloglevel=2)
  from genrm_jax import files  # pylint: disable=g-import-not-at-top  (files imports JAX)
  files.write_atomic(out_path, buf.getvalue())
  return load_vocab(out_path)


# The vocabulary the registered seqio tasks tokenize with. Tasks are registered on import, before
# any vocabulary is known: their output features hold a ``DeferredVocabulary`` resolving here.
_current: list[Vocab] = []


def set_default_vocab(vocab: Vocab | str | None) -> None:
  """Sets (or with None clears) the vocabulary used by registered tasks."""
  _current.clear()
  if vocab is not None:
    _current.append(load_vocab(vocab) if isinstance(vocab, str) else vocab)


def default_vocab() -> Vocab:
  """The vocabulary set by ``set_default_vocab`` or, failing that, the file $GENRM_VOCAB names."""
  if _current:
    return _current[0]
  path = os.environ.get(VOCAB_ENV)
  if not path:
    raise ValueError("no vocabulary: pass vocab= to get_batches, call "
                     "vocab.set_default_vocab(path) "
                     f"or set ${VOCAB_ENV} to a SentencePiece .model file")
  _current.append(load_vocab(path))
  return _current[0]


@contextlib.contextmanager
def using(vocab: Vocab | str | None) -> Iterator[Vocab]:
  """Temporarily makes ``vocab`` the default (no change when None)."""
  if vocab is None:
    yield default_vocab()
    return
  saved = list(_current)
  set_default_vocab(vocab)
  try:
    yield _current[0]
  finally:
    _current[:] = saved
