"""genrm_jax.files: every output appears whole or not at all."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from genrm_jax import files


def test_jsonl_plain_and_gzip(tmp_path):
  recs = [{"a": 1}, {"b": "é\n"}]
  for name, opener in (("x.jsonl", open), ("x.jsonl.gz", gzip.open)):
    path = str(tmp_path / "sub" / name)
    files.write_jsonl(path, iter(recs))
    with opener(path, "rt", encoding="utf-8") as f:
      assert [json.loads(l) for l in f] == recs


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / "x.jsonl")
  files.write_atomic(path, "old\n")

  def broken():
    yield {"a": 1}
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError):
    files.write_jsonl(path, broken())
  assert open(path).read() == "old\n" and os.listdir(tmp_path) == ["x.jsonl"]
  files.write_atomic(path, b"\x00\x01")
  assert open(path, "rb").read() == b"\x00\x01"


def test_atomic_dir_appears_only_on_success(tmp_path):
  out = tmp_path / "d"
  with pytest.raises(ValueError):
    with files.atomic_dir(str(out)) as tmp:
      (open(os.path.join(tmp, "f"), "w")).close()
      raise ValueError("stop")
  assert os.listdir(tmp_path) == []
  with files.atomic_dir(str(out)) as tmp:
    files.write_atomic(os.path.join(tmp, "f"), "x")
  assert os.listdir(out) == ["f"]
  with pytest.raises(FileExistsError, match="exists and is not empty"):
    with files.atomic_dir(str(out)):
      pass
