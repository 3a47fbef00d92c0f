"""Keeps TensorFlow's, XLA's and libtpu's start-up noise out of the user's terminal.

``quiet_environment`` runs when the package is imported (``genrm_jax/__init__.py``), the one place
that is sure to come before JAX or TensorFlow load: their C++ loggers read the environment once.
Every setting is a default: a variable the user has set wins (``TF_CPP_MIN_LOG_LEVEL=0`` brings
TensorFlow's logs back). What the environment cannot reach (lines that shared libraries print as
they load) is caught by ``captured_stderr`` around that load and shown only if it fails.
SentencePiece's INFO lines, printed each time a tf.data pipeline loads a vocabulary, are held back by
``quiet_sentencepiece`` (``GENRM_SENTENCEPIECE_MIN_LOG_LEVEL=0`` brings them back).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import importlib.util
import os
import struct
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


SENTENCEPIECE_LEVEL_ENV = "GENRM_SENTENCEPIECE_MIN_LOG_LEVEL"
# tensorflow_text links its own copy of sentencepiece, so ``sentencepiece.set_min_log_level``
# (the pip package's copy) does not reach it, and it exports no setter: its level is a private
# int, found here through the library's symbol table.
_TF_TEXT_LIBRARY = "_sentencepiece_tokenizer.so"
_LEVEL_SYMBOL = b"_ZN13sentencepiece12_GLOBAL__N_113g_minloglevelE"


def _loaded_path_and_base(name: str) -> tuple[str, int] | None:
  try:
    with open("/proc/self/maps") as f:
      for line in f:
        fields = line.split()
        if len(fields) >= 6 and fields[5].endswith("/" + name) and int(fields[2], 16) == 0:
          return fields[5], int(fields[0].split("-")[0], 16)
  except OSError:
    pass
  return None


def _symbol_offset(path: str, symbol: bytes, size: int) -> int | None:
  """The address of a data symbol of ``size`` bytes in an ELF64 little-endian shared library,
  relative to where its first segment is mapped; None if anything is not as expected."""
  with open(path, "rb") as f:
    elf = f.read()
  if elf[:6] != b"\x7fELF\x02\x01":
    return None
  phoff, shoff = struct.unpack_from("<QQ", elf, 0x20)
  phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", elf, 0x36)
  loads = [struct.unpack_from("<IIQQ", elf, phoff + i * phentsize) for i in range(phnum)]
  first_load = next((p for p in loads if p[0] == 1), None)  # PT_LOAD
  if first_load is None or first_load[2:] != (0, 0):  # mapped from offset 0 at address 0
    return None
  sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
  for sh in sections:
    if sh[1] != 2:  # SHT_SYMTAB
      continue
    strtab = sections[sh[6]]
    names = elf[strtab[4]:strtab[4] + strtab[5]]
    at = names.find(b"\0" + symbol + b"\0")
    if at < 0:
      return None
    for st_name, st_info, _, _, value, st_size in struct.iter_unpack(
        "<IBBHQQ", elf[sh[4]:sh[4] + sh[5]]):
      if st_name == at + 1:
        return value if (st_info & 0xF) == 1 and st_size == size else None  # STT_OBJECT
  return None


@functools.cache  # the library loads once a process; its symbol table is read once
def quiet_sentencepiece() -> None:
  """Sets the minimum log level of tensorflow_text's sentencepiece (default 1: warnings and up),
  as its own ``logging::SetMinLogLevel`` would. Does nothing where the library is not loaded or
  is not laid out as expected (the lines then show, nothing else changes)."""
  import tensorflow_text  # pylint: disable=g-import-not-at-top,unused-import
  try:
    level = int(os.environ.get(SENTENCEPIECE_LEVEL_ENV, "1"))
  except ValueError:
    return
  loaded = _loaded_path_and_base(_TF_TEXT_LIBRARY)
  if loaded is None:
    return
  offset = _symbol_offset(loaded[0], _LEVEL_SYMBOL, ctypes.sizeof(ctypes.c_int))
  if offset is not None:
    ctypes.c_int.from_address(loaded[1] + offset).value = level
