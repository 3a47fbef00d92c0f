"""Outputs that appear whole or not at all: files, JSON lines and directories.

A file is written to a temporary sibling and renamed into place, so a reader (or a rerun after a
crash) sees the old file or the new one, never half of one. Object stores (``gs://``) write an
object atomically already; there a directory cannot be renamed, and its marker file, written
last, says it is complete (``atomic_dir``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator

from etils import epath


def is_remote(path: str) -> bool:
  """A URL-style path (gs://...) that os and shutil cannot handle."""
  return "://" in str(path)


def abspath(path: str) -> str:
  return str(path) if is_remote(path) else os.path.abspath(path)


@contextlib.contextmanager
def atomic_dir(out: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary directory beside ``out``; renames it to ``out`` only on success.

  With several JAX processes, all of them must enter: they share one temporary directory (on a
  filesystem they all see), which process 0 creates and renames. Object stores (gs://) cannot
  rename a directory, so there the directory is written in place and its marker file (a model
  directory's ``genrm_model.json``), written last, marks it complete.
  """
  # Imported here: this module's file writers serve light modules that must not load JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from genrm_jax import distributed  # pylint: disable=g-import-not-at-top
  if is_remote(out):
    target = epath.Path(out)
    if target.exists() and any(target.iterdir()) and not overwrite:
      raise FileExistsError(f"output directory {out} exists and is not empty")
    distributed.sync(f"atomic_dir checked {out}")
    yield out
    distributed.sync(f"atomic_dir written {out}")
    return
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    if os.listdir(out):
      raise FileExistsError(f"output directory {out} exists and is not empty")
  parent = os.path.dirname(out)
  main = distributed.is_main()
  if jax.process_count() > 1:
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp-shared")
    if main:
      shutil.rmtree(tmp, ignore_errors=True)
      os.makedirs(tmp)
    distributed.sync(f"atomic_dir created {out}")
  else:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
  try:
    yield tmp
  except BaseException:
    if main:
      shutil.rmtree(tmp, ignore_errors=True)
    raise
  distributed.sync(f"atomic_dir written {out}")
  if main:
    if os.path.exists(out):
      shutil.rmtree(out)
    os.rename(tmp, out)
  distributed.sync(f"atomic_dir renamed {out}")


def write_atomic(path: str, data: str | bytes) -> None:
  """Writes ``data`` (text or bytes) to ``path`` through a temporary sibling."""
  if is_remote(path):
    p = epath.Path(path)
    p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data)
    return
  with _replacing(path, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)


def write_jsonl(path: str, records: Iterable[dict[str, Any]]) -> None:
  """Writes one JSON object a line (gzip-compressed when ``path`` ends in .gz), atomically."""
  with _replacing(path, "wb") as raw:
    f = gzip.open(raw, "wt", encoding="utf-8") if path.endswith(".gz") else None
    for rec in records:
      line = json.dumps(rec) + "\n"
      f.write(line) if f else raw.write(line.encode())
    if f:
      f.close()


@contextlib.contextmanager
def _replacing(path: str, mode: str) -> Iterator[Any]:
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, mode) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
