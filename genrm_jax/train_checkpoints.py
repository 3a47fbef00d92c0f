"""A training run's orbax checkpoints: what each holds, and resuming from the newest that restores.

A checkpoint holds the train state (with LoRA: the adapters, a head and their optimizer state)
and a JSON record of what made it: the model config, the objective, the data position, the
vocabulary and, with LoRA, its config and the base model directory's path and content hash. A
resume refuses another model, objective or LoRA config, and a base that has changed.

A checkpoint that fails to restore (a truncated or missing file: a disk filled up, a copy cut
short) is named in one log line and moved aside into ``<workdir>/checkpoints_unreadable/``, never
deleted, and the run resumes from the newest one that restores.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import orbax.checkpoint as ocp
from etils import epath

from genrm_jax import config as config_lib
from genrm_jax import distributed
from genrm_jax import files

UNREADABLE = "checkpoints_unreadable"


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(files.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(mngr: ocp.CheckpointManager, state: Any, meta: dict[str, Any]) -> None:
  mngr.save(int(state.step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)), force=True)


def run_meta(exp, vocab_path: str | None, base: dict[str, str] | None) -> dict[str, Any]:
  """What a checkpoint of ``exp`` records beside its state (``batches_consumed``: set by
  ``save_step``)."""
  meta = {"model": exp.model.to_dict(), "objective": exp.objective.kind,
          "data": exp.data.name, "vocab_path": vocab_path}
  if exp.lora.enabled:
    meta["lora"] = {"config": exp.lora.to_dict(), "base": base}
  return meta


def check_resumable(meta: dict[str, Any], exp, where: str, base: dict[str, str] | None,
                    check_model: Callable[[config_lib.ModelConfig], None]) -> None:
  """Raises ValueError when the checkpoint ``meta`` was made by another run than ``exp``."""
  check_model(config_lib.ModelConfig.from_dict(meta["model"]))
  if meta["objective"] != exp.objective.kind:
    raise ValueError(f"{where} was trained with objective {meta['objective']!r}, not "
                     f"{exp.objective.kind!r}; refusing to resume")
  stored = meta.get("lora")
  lora = config_lib.LoraConfig.from_dict(stored["config"]) if stored else config_lib.LoraConfig()
  if lora != exp.lora:
    raise ValueError(f"{where} was trained with {lora}, not {exp.lora}; refusing to resume: "
                     "use a new --workdir or the old config")
  if stored and stored["base"]["sha256"] != base["sha256"]:
    raise ValueError(f"LoRA base model directory {base['path']} has changed since {where} was "
                     f"written (content sha256 {base['sha256'][:16]}..., the checkpoint's "
                     f"{stored['base']['sha256'][:16]}...); refusing to resume on another base")


def _move_aside(mngr: ocp.CheckpointManager, step: int, workdir: str) -> str:
  """Moves checkpoint ``step`` into ``<workdir>/checkpoints_unreadable/``; returns where."""
  src = epath.Path(mngr.directory) / str(step)
  dest_dir = epath.Path(files.abspath(workdir)) / UNREADABLE
  dest = dest_dir / str(step)
  n = 1
  while dest.exists():
    dest, n = dest_dir / f"{step}.{n}", n + 1
  if distributed.is_main():
    dest_dir.mkdir(parents=True, exist_ok=True)
    src.rename(dest)
  distributed.sync(f"moved checkpoint {step} aside")
  mngr.reload()
  return str(dest)


def restore_newest(mngr: ocp.CheckpointManager, workdir: str, abstract_state: Any,
                   check: Callable[[dict[str, Any], str], None], log: Callable[[str], None]
                   ) -> tuple[Any, dict[str, Any]] | None:
  """(state, meta) of the newest checkpoint that restores, or None when none is left.

  ``check(meta, where)`` raises for a checkpoint of another run: that is the user's to fix, so
  it propagates and nothing is moved. Any failure to read a checkpoint's files is not: the
  checkpoint is moved aside and the one before it tried.
  """
  while (step := mngr.latest_step()) is not None:
    where = f"workdir checkpoint {mngr.directory}/{step}"
    try:
      meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      failure = e
    else:
      check(meta, where)
      try:
        state = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))["state"]
        return state, meta
      except Exception as e:  # pylint: disable=broad-except
        failure = e
    reason = (str(failure).strip().splitlines() or [""])[0][:200]
    moved = _move_aside(mngr, step, workdir)
    log(f"checkpoint step {step} in {mngr.directory} failed to restore "
        f"({type(failure).__name__}: {reason}); moved it to {moved}, trying the one before")
  return None
