"""Keeps TensorFlow's, XLA's and libtpu's start-up noise out of the user's terminal.

``quiet_environment`` runs when the package is imported (``genrm_jax/__init__.py``), the one place
that is sure to come before JAX or TensorFlow load: their C++ loggers read the environment once.
Every setting is a default: a variable the user has set wins (``TF_CPP_MIN_LOG_LEVEL=0`` brings
TensorFlow's logs back). What the environment cannot reach (lines that shared libraries print as
they load) is caught by ``captured_stderr`` around that load and shown only if it fails.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import sys
import tempfile
from typing import Iterator


def _tpu_present() -> bool:
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def quiet_environment() -> None:
  # TensorFlow serves only the input pipeline here: its oneDNN / CPU-feature notices and, on a
  # machine without a GPU, "failed call to cuInit" say nothing about this program.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  # With libtpu installed (the tpu-plan extra) JAX initialises the TPU backend at every start and
  # libtpu, finding no TPU, prints "could not determine TPU accelerator type". Off a TPU VM and
  # with no GPU plugin, the CPU is all there is; the planner's ahead-of-time TPU compilation does
  # not need the TPU backend.
  if ("JAX_PLATFORMS" not in os.environ and importlib.util.find_spec("libtpu") is not None
      and not _tpu_present()
      and not any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                        "jax_rocm60_plugin"))):
    os.environ["JAX_PLATFORMS"] = "cpu"


@contextlib.contextmanager
def captured_stderr() -> Iterator[None]:
  """Sends what C/C++ code writes to file descriptor 2 to a temporary file; replays it on
  failure only, so an import or a backend that breaks still says why."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      sink.seek(0)
      sys.stderr.write(sink.read().decode(errors="replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def import_tensorflow():
  """``tensorflow``, imported without the lines its libraries print as they load."""
  if "tensorflow" in sys.modules:
    return sys.modules["tensorflow"]
  with captured_stderr():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    # Its CUDA probe runs at the first op; with no GPU it only logs (at a level above the
    # environment's reach) that there is none.
    tf.constant(0)
  return tf
