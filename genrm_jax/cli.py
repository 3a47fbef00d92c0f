"""What every command-line entry point shares: gin files and bindings, config dataclasses bound by
gin, the device mesh from flags, and one face for failures.

Gin stays here and in the entry points: a parsed command line becomes typed config dataclasses
(``configure``), and the code below the CLI sees only those. A failure the user can fix (bad
input, a missing file, a precondition) is one line ``error: ...`` naming the file, line, field or
tensor, with exit status 2 and no traceback (``main``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import types
import typing
from typing import Any, Callable, NoReturn, Sequence

import gin

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "gin_configs")
EXIT_USAGE = 2

# What a user can fix: bad input or a failed precondition. Anything else is a bug and keeps its
# traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError)


# ----------------------------------------------------------------------------- gin


def gin_path(path: str) -> str:
  """A gin file as given, or else relative to gin_configs/ (``tiny.gin``, ``pipeline/quick.gin``)."""
  if os.path.isabs(path) or os.path.exists(path):
    return path
  inside = os.path.join(GIN_DIR, path)
  if not os.path.exists(inside):
    raise FileNotFoundError(f"gin file {path} does not exist (looked here and in {GIN_DIR})")
  return inside


def _not_gin_package_probe(record: logging.LogRecord) -> bool:
  """False for gin's "Path not found" error: gin first tries each ``include`` as a Python
  package resource and logs that error before finding the file in gin_configs/, so every run
  that includes a file printed an ERROR line about a file that was there. A file that is really
  missing still fails, with gin's own exception."""
  return not (record.levelno == logging.ERROR and record.getMessage().startswith("Path not found")
              and record.pathname.endswith(os.path.join("gin", "resource_reader.py")))


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses gin files and bindings, replacing earlier ones: a command line is one configuration.
  ``include`` lines inside the files are found in gin_configs/ too."""
  gin.clear_config()
  gin.add_config_file_search_path(GIN_DIR)
  root = logging.getLogger()
  root.addFilter(_not_gin_package_probe)
  try:
    gin.parse_config_files_and_bindings([gin_path(f) for f in gin_files], list(bindings))
  except (ValueError, KeyError, SyntaxError, NameError) as e:
    # gin names the binding and its line on lines of their own: one line here. (A KeyError's
    # str() would quote the message again.)
    lines = str(e.args[0] if e.args else e).splitlines()
    raise ValueError("gin: " + "; ".join(l.strip() for l in lines if l.strip())) from e
  finally:
    root.removeFilter(_not_gin_package_probe)


_REGISTERED: dict[type, Any] = {}


def register(cls, name: str | None = None) -> None:
  """Makes config dataclass ``cls`` gin-configurable as ``<ClassName>.<field> = ...``."""
  if cls not in _REGISTERED:
    with gin.unlock_config():
      _REGISTERED[cls] = gin.external_configurable(cls, name=name or cls.__name__,
                                                   module="genrm_jax")


def configure(cls, **overrides: Any):
  """An instance of config dataclass ``cls``: defaults, then gin bindings, then non-None
  ``overrides`` (the explicit command-line flags). A value of another type than its field's
  is an error naming the field, before any work starts."""
  register(cls)
  cfg = _REGISTERED[cls]()
  cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
  check_types(cfg)
  return cfg


def _fits(value: Any, hint: Any) -> bool:
  """Whether ``value`` is of type ``hint`` as a gin binding writes it (an int for a float, a
  list for a tuple); hints other than scalars, tuples and unions are left to the class."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    return any(_fits(value, h) for h in args)
  if hint is type(None):
    return value is None
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint in (str, bool):
    return isinstance(value, hint)
  if origin is tuple:
    if not isinstance(value, (tuple, list)):
      return False
    if len(args) == 2 and args[1] is Ellipsis:
      return all(_fits(v, args[0]) for v in value)
    return len(args) == len(value) and all(_fits(v, h) for v, h in zip(value, args))
  return True


def check_types(cfg: Any) -> None:
  """Raises ValueError naming the first field of dataclass ``cfg`` whose value is not of its
  annotated type: without it, a string bound to a seed failed deep in JAX after earlier stages
  had run."""
  hints = typing.get_type_hints(type(cfg))
  for f in dataclasses.fields(cfg):
    value = getattr(cfg, f.name)
    if not _fits(value, hints[f.name]):
      raise ValueError(f"{type(cfg).__name__}.{f.name} = {value!r}: expected {f.type}")


# ----------------------------------------------------------------------------- mesh


def mesh(sizes: Sequence[int], devices=None):
  """The (data, fsdp, tensor) mesh of a config's sizes (one may be -1: the devices left over),
  over ``devices`` (default: all); None for empty sizes (no mesh: the default device)."""
  if not sizes:
    return None
  from genrm_jax import sharding  # pylint: disable=g-import-not-at-top  (JAX: not for --help)
  return sharding.make_mesh(*sizes, devices=devices)


def int_tuple(flag: str, text: str | None, minimum: int = 1) -> tuple[int, ...] | None:
  """A flag's comma-separated integers, each at least ``minimum``; None when the flag was not
  given. (A mesh flag takes -1: the devices left over.)"""
  if text is None:
    return None
  try:
    values = tuple(int(x) for x in text.split(","))
  except ValueError:
    fail(f"{flag} {text!r}: expected comma-separated integers")
  if not values or min(values) < minimum:
    fail(f"{flag} {text!r}: expected integers of at least {minimum}")
  return values


# ----------------------------------------------------------------------------- failures


def fail(message: str) -> NoReturn:
  """Ends the command with ``error: message`` and status 2."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  raise SystemExit(EXIT_USAGE)


def main(run: Callable[[], int | None]) -> int:
  """Runs a command's body; a user error becomes one ``error:`` line and status 2."""
  try:
    return run() or 0
  except USER_ERRORS as e:
    # FileNotFoundError from open() reads "[Errno 2] No such file or directory: 'x'".
    message = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename else str(e)
    # gin appends "In call to configurable 'X'" on a line of its own; the message names X.
    fail("\n".join(line for line in message.splitlines()
                   if not line.strip().startswith("In call to configurable")))
