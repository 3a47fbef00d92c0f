"""genrm_jax.train_checkpoints: a run whose newest checkpoint fails to restore resumes from the
one before it, and ends where an uninterrupted run ends."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from genrm_jax import checkpoint, config, objectives, optim, sharding, train, train_checkpoints

MICRO = dict(vocab_size=32, num_layers=1, embed_dim=32, hidden_dim=64, num_heads=2, head_dim=16)


def _exp(steps: int) -> train.Experiment:
  return train.Experiment(
      model=config.tiny(**MICRO),
      train=train.TrainConfig(batch_size=4, num_steps=steps, log_every=1, checkpoint_every=2,
                              tensorboard=False),
      data=train.DataConfig(name="synthetic", seq_len=16),
      optim=optim.OptimConfig(peak_lr=1e-2, warmup_steps=1, decay_steps=8),
      objective=objectives.ObjectiveConfig("lm"))


def _mesh():
  return sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def _truncate_largest_file(step_dir):
  data = max((f for f in step_dir.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
  return data


@pytest.mark.parametrize("damage", ["truncate", "meta"])
def test_an_unreadable_newest_checkpoint_is_moved_aside_and_the_one_before_resumes(
    tmp_path, capsys, damage):
  want = train.run(_exp(8), str(tmp_path / "reference"), mesh=_mesh()).state.params
  workdir = tmp_path / "run"
  train.run(_exp(6), str(workdir), mesh=_mesh())  # checkpoints 2, 4 and 6
  newest = workdir / "checkpoints" / "6"
  if damage == "truncate":
    _truncate_largest_file(newest / "state")
  else:
    (newest / "meta" / "metadata").write_text("{not json")
  capsys.readouterr()
  result = train.run(_exp(8), str(workdir), mesh=_mesh())
  out = capsys.readouterr().out
  moved = workdir / train_checkpoints.UNREADABLE / "6"
  assert (f"checkpoint step 6 in {workdir / 'checkpoints'} failed to restore" in out
          and f"moved it to {moved}, trying the one before" in out), out
  assert moved.is_dir()  # kept, not deleted (the resumed run has written a new step 6 since)
  assert "step 5/8" in out and "step 3/8" not in out  # resumed from step 4
  jax.tree.map(np.testing.assert_array_equal, result.state.params, want)
  _, params, _ = checkpoint.load_model_dir(result.model_dir)
  jax.tree.map(np.testing.assert_array_equal, params, want["model"])


def test_a_checkpoint_of_another_run_is_refused_not_moved(tmp_path):
  train.run(_exp(2), str(tmp_path), mesh=_mesh())
  other = _exp(4)
  other = dataclasses.replace(other, model=other.model.replace(num_layers=2))
  with pytest.raises(ValueError, match="refusing to resume"):
    train.run(other, str(tmp_path), mesh=_mesh())
  assert (tmp_path / "checkpoints" / "2").is_dir()
  assert not (tmp_path / train_checkpoints.UNREADABLE).exists()
