"""genrm_jax.startup: TensorFlow's and libtpu's start-up lines stay out of the terminal, except
when the start-up itself fails."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from genrm_jax import startup

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_importing_the_input_pipeline_prints_nothing():
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  r = subprocess.run([sys.executable, "-c", "import tasks, genrm_jax.data; print('ok')"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300,
                     env={**env, "PYTHONPATH": str(ROOT)})
  assert r.returncode == 0 and r.stdout == "ok\n" and r.stderr == "", r.stderr


def test_captured_stderr_is_replayed_only_on_failure(capfd):
  with startup.captured_stderr():
    os.write(2, b"noise from a shared library\n")
  assert capfd.readouterr().err == ""
  with pytest.raises(ImportError):
    with startup.captured_stderr():
      os.write(2, b"why it broke\n")
      raise ImportError("broken")
  assert capfd.readouterr().err == "why it broke\n"


_PIPELINE = """
import sys
from genrm_jax import vocab
v = vocab.train_char_vocab(["ab c"], sys.argv[1])
s = v.seqio()
import tensorflow as tf
ds = tf.data.Dataset.from_tensor_slices(["ab", "c"]).map(s.encode_tf)
print([x.tolist() for x in ds.as_numpy_iterator()])
"""


@pytest.mark.parametrize("level", [None, "0"])
def test_sentencepiece_in_tf_data_is_quiet_unless_asked(tmp_path, level):
  # tensorflow_text's own copy of sentencepiece logs at every vocabulary load in a pipeline.
  env = {k: v for k, v in os.environ.items() if k != startup.SENTENCEPIECE_LEVEL_ENV}
  if level is not None:
    env[startup.SENTENCEPIECE_LEVEL_ENV] = level
  r = subprocess.run([sys.executable, "-c", _PIPELINE, str(tmp_path / "v.model")], cwd=ROOT,
                     capture_output=True, text=True, timeout=300,
                     env={**env, "PYTHONPATH": str(ROOT)})
  assert r.returncode == 0, r.stderr
  if level is None:
    assert r.stderr == "", r.stderr
  else:
    assert "LOG(INFO)" in r.stderr
