"""The train state, its shardings and the one jitted train step.

Everything here works on abstract inputs too (``jax.ShapeDtypeStruct`` with shardings), so the
planner can lower and compile the exact step the trainer runs for a mesh it does not have.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from genrm_jax import model as model_lib
from genrm_jax import objectives
from genrm_jax import optim
from genrm_jax import sharding
from genrm_jax.config import ModelConfig


@flax.struct.dataclass
class TrainState:
  """step: updates done. params: {"model": Gemma tree, **the objective's ``init_params``}.

  ref_params: the objective's frozen reference (a model tree; DPO's pi_ref) or None; it rides in
  the state so that a resumed run restores the very reference it started from.
  """
  step: jax.Array
  params: dict[str, Any]
  opt_state: Any
  ref_params: Any = None


def _replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def params_shardings(cfg: ModelConfig, objective: objectives.Objective, mesh: Mesh) -> dict:
  return {"model": model_lib.param_shardings(cfg, mesh),
          **objective.param_shardings(cfg, mesh)}


def abstract_params(cfg: ModelConfig, objective: objectives.Objective) -> dict:
  return {"model": sharding.unbox(model_lib.abstract_params(cfg)),
          **jax.eval_shape(lambda: objective.init_params(cfg))}


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """What a training run derives from its configs and mesh, built once (``make_setup``) and shared
  by initialisation, restoring, the step and the planner."""
  cfg: ModelConfig
  obj: objectives.ObjectiveConfig
  opt: optim.OptimConfig
  mesh: Mesh
  tx: optax.GradientTransformation
  lr_at: optax.Schedule
  state_shardings: TrainState  # a NamedSharding a leaf; optimizer moments follow their params
  batch_shardings: dict[str, NamedSharding]
  abstract_state: TrainState  # ShapeDtypeStructs carrying those shardings

  @property
  def objective(self) -> objectives.Objective:
    return objectives.get(self.obj.kind)


def make_setup(cfg: ModelConfig, obj: objectives.ObjectiveConfig, opt: optim.OptimConfig,
               mesh: Mesh) -> TrainSetup:
  tx = optim.optimizer(opt)
  objective = objectives.get(obj.kind)
  params = abstract_params(cfg, objective)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=jax.eval_shape(tx.init, params),
                        ref_params=params["model"] if objective.frozen_reference else None)
  p_shard = params_shardings(cfg, objective, mesh)
  opt_shard = optax.tree_map_params(
      tx, lambda _, s: s, abstract.opt_state, p_shard,
      transform_non_params=lambda _: _replicated(mesh))
  shardings = TrainState(step=_replicated(mesh), params=p_shard, opt_state=opt_shard,
                         ref_params=p_shard["model"] if objective.frozen_reference else None)
  return TrainSetup(
      cfg=cfg, obj=obj, opt=opt, mesh=mesh, tx=tx, lr_at=optim.schedule(opt),
      state_shardings=shardings,
      batch_shardings={name: sharding.batch_sharding(mesh, ndim)
                       for name, (ndim, _) in objective.batch_fields.items()},
      abstract_state=jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings))


def init_state(setup: TrainSetup, model_params: Any) -> TrainState:
  """A fresh state around ``model_params`` (already sharded or host arrays), laid out on the
  setup's mesh."""
  objective = setup.objective

  def build(mp):
    params = {"model": mp, **objective.init_params(setup.cfg)}
    # The reference is a copy taken before any update: DPO's frozen pi_ref.
    ref = jax.tree.map(jnp.copy, mp) if objective.frozen_reference else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=setup.tx.init(params), ref_params=ref)

  with sharding.use_mesh(setup.mesh):
    return jax.jit(build, out_shardings=setup.state_shardings)(model_params)


def _microbatches(batch: dict[str, jax.Array], accum: int) -> dict[str, jax.Array]:
  """[B, ...] -> [accum, B / accum, ...], micro-batch j = rows j, j + accum, ...

  Strided, not contiguous: each device's block of rows holds a part of every micro-batch, so
  every micro-batch stays spread over the whole batch axis of the mesh.
  """

  def split(x):
    b = x.shape[0]
    x = x.reshape((b // accum, accum) + x.shape[1:]).swapaxes(0, 1)
    return sharding.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))

  return jax.tree.map(split, batch)


def make_train_step(setup: TrainSetup, grad_accum: int = 1) -> Callable:
  """The jitted ``step(state, batch) -> (state, metrics)``; the state argument is donated.

  Metrics (replicated fp32 scalars): loss, accuracy (NaN when the batch has nothing to score),
  grad_norm (before clipping), lr (of this update).
  """
  if grad_accum < 1:
    raise ValueError(f"grad_accum={grad_accum} must be >= 1")
  mesh, tx, lr_at = setup.mesh, setup.tx, setup.lr_at
  terms_fn = objectives.loss_terms_fn(setup.obj, setup.cfg)

  def grads_of(params, batch, ref):
    def f(p):
      t = terms_fn(p, batch, ref)
      return t.loss, t
    return jax.grad(f, has_aux=True)(params)

  def step(state: TrainState, batch: dict[str, jax.Array]):
    with sharding.use_mesh(mesh):
      if grad_accum == 1:
        grads, terms = grads_of(state.params, batch, state.ref_params)
      else:
        zero = (jax.tree.map(jnp.zeros_like, state.params),
                objectives.Terms(*(jnp.zeros((), jnp.float32),) * 4))

        def body(carry, micro):
          g, t = grads_of(state.params, micro, state.ref_params)
          return jax.tree.map(jnp.add, carry, (g, t)), None

        (grads, terms), _ = jax.lax.scan(body, zero, _microbatches(batch, grad_accum))
      # Gradients of loss sums: one division turns them into the gradient of the batch mean.
      denom = jnp.maximum(terms.weight, 1.0)
      grads = jax.tree.map(lambda g: g / denom, grads)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": terms.loss / denom,
        "accuracy": jnp.where(terms.count > 0, terms.correct / jnp.maximum(terms.count, 1.0),
                              jnp.nan),
        "grad_norm": optax.tree.norm(grads),
        "lr": jnp.asarray(lr_at(state.step), jnp.float32),
    }
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new, metrics

  m_shard = {k: _replicated(mesh) for k in ("loss", "accuracy", "grad_norm", "lr")}
  return jax.jit(step, in_shardings=(setup.state_shardings, setup.batch_shardings),
                 out_shardings=(setup.state_shardings, m_shard), donate_argnums=(0,))


def compiled_memory(setup: TrainSetup, batch_size: int, seq_len: int) -> tuple[int, int]:
  """(temporary bytes, arguments + outputs not aliased + temporaries) per device of the train
  step compiled for abstract inputs of that shape: XLA's peak without running anything."""
  data = setup.objective.abstract_batch(batch_size, seq_len, setup.batch_shardings)
  mem = make_train_step(setup).lower(setup.abstract_state, data).compile().memory_analysis()
  return mem.temp_size_in_bytes, (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                  - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
