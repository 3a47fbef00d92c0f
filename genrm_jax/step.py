"""The train state, its shardings and the one jitted train step.

Everything here works on abstract inputs too (``jax.ShapeDtypeStruct`` with shardings), so the
planner can lower and compile the exact step the trainer runs for a mesh it does not have.

With LoRA (``LoraConfig.rank``) the state's ``params["model"]`` are the adapters alone, so the
optimizer state and the checkpoints hold only them (and an objective's head); the frozen base
is the step's third argument, never donated, differentiated or saved, and serves DPO as its
reference.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from genrm_jax import lora as lora_lib
from genrm_jax import model as model_lib
from genrm_jax import objectives
from genrm_jax import optim
from genrm_jax import sharding
from genrm_jax.config import LoraConfig, ModelConfig


@flax.struct.dataclass
class TrainState:
  """step: updates done. params: {"model": Gemma tree (with LoRA: the adapters), **the
  objective's ``init_params``}.

  ref_params: the objective's frozen reference (a model tree; DPO's pi_ref) or None; it rides in
  the state so that a resumed run restores the very reference it started from.
  """
  step: jax.Array
  params: dict[str, Any]
  opt_state: Any
  ref_params: Any = None


def _replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def params_shardings(cfg: ModelConfig, objective: objectives.Objective, mesh: Mesh,
                     lora: LoraConfig = LoraConfig()) -> dict:
  trained = (lora_lib.adapter_shardings(cfg, lora, mesh) if lora.enabled
             else model_lib.param_shardings(cfg, mesh))
  return {"model": trained, **objective.param_shardings(cfg, mesh)}


def abstract_params(cfg: ModelConfig, objective: objectives.Objective,
                    lora: LoraConfig = LoraConfig()) -> dict:
  trained = (lora_lib.abstract_adapters(cfg, lora) if lora.enabled
             else sharding.unbox(model_lib.abstract_params(cfg)))
  return {"model": trained, **jax.eval_shape(lambda: objective.init_params(cfg))}


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
  lora: LoraConfig = LoraConfig()
  frozen_shardings: Any = None  # of the frozen base (LoRA), as ``lora.quantize_base`` stores it
  abstract_frozen: Any = None  # ShapeDtypeStructs carrying those shardings

  @property
  def objective(self) -> objectives.Objective:
    return objectives.get(self.obj.kind)

  @property
  def ref_in_state(self) -> bool:
    """Whether the state keeps a reference copy (DPO fine-tuning every weight); with LoRA the
    frozen base is the reference."""
    return self.objective.frozen_reference and not self.lora.enabled


def _with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def make_setup(cfg: ModelConfig, obj: objectives.ObjectiveConfig, opt: optim.OptimConfig,
               mesh: Mesh, lora: LoraConfig = LoraConfig()) -> TrainSetup:
  tx = optim.optimizer(opt)
  objective = objectives.get(obj.kind)
  params = abstract_params(cfg, objective, lora)
  ref = objective.frozen_reference and not lora.enabled
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=jax.eval_shape(tx.init, params),
                        ref_params=params["model"] if ref else None)
  p_shard = params_shardings(cfg, objective, mesh, lora)
  opt_shard = optax.tree_map_params(
      tx, lambda _, s: s, abstract.opt_state, p_shard,
      transform_non_params=lambda _: _replicated(mesh))
  shardings = TrainState(step=_replicated(mesh), params=p_shard, opt_state=opt_shard,
                         ref_params=p_shard["model"] if ref else None)
  frozen_shardings = abstract_frozen = None
  if lora.enabled:
    frozen_shardings = lora_lib.frozen_shardings(cfg, lora, mesh)
    abstract_frozen = _with_shardings(
        jax.eval_shape(lambda p: lora_lib.quantize_base(p, lora),
                       sharding.unbox(model_lib.abstract_params(cfg))), frozen_shardings)
  return TrainSetup(
      cfg=cfg, obj=obj, opt=opt, mesh=mesh, tx=tx, lr_at=optim.schedule(opt),
      state_shardings=shardings,
      batch_shardings={name: sharding.batch_sharding(mesh, ndim)
                       for name, (ndim, _) in objective.batch_fields.items()},
      abstract_state=_with_shardings(abstract, shardings), lora=lora,
      frozen_shardings=frozen_shardings, abstract_frozen=abstract_frozen)


def init_state(setup: TrainSetup, model_params: Any) -> TrainState:
  """A fresh state around ``model_params`` (the model's, or with LoRA the adapters; already
  sharded or host arrays), laid out on the setup's mesh."""
  objective = setup.objective

  def build(mp):
    params = {"model": mp, **objective.init_params(setup.cfg)}
    # The reference is a copy taken before any update: DPO's frozen pi_ref.
    ref = jax.tree.map(jnp.copy, mp) if setup.ref_in_state else None
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


def make_train_step(setup: TrainSetup, grad_accum: int = 1, seed: int = 0) -> Callable:
  """The jitted ``step(state, batch, frozen=None) -> (state, metrics)``; the state argument is
  donated. ``frozen``: with LoRA, the base model (as ``lora.quantize_base`` stores it).

  Metrics (replicated fp32 scalars): loss, accuracy (NaN when the batch has nothing to score),
  grad_norm (before clipping), lr (of this update). LoRA dropout draws its masks from ``seed``,
  the step and the micro-batch, so a resumed run draws what an uninterrupted one does.
  """
  if grad_accum < 1:
    raise ValueError(f"grad_accum={grad_accum} must be >= 1")
  mesh, tx, lr_at, lc = setup.mesh, setup.tx, setup.lr_at, setup.lora
  terms_fn = objectives.loss_terms_fn(setup.obj, setup.cfg)

  def grads_of(params, batch, ref, frozen, key):
    def f(p):
      if lc.enabled:
        # Only the adapters (and a head) are differentiated: no weight gradient of the base.
        p = {**p, "model": model_lib.Adapted(frozen, p["model"], key if lc.dropout else None,
                                             lc)}
      t = terms_fn(p, batch, ref)
      return t.loss, t
    return jax.grad(f, has_aux=True)(params)

  def step(state: TrainState, batch: dict[str, jax.Array], frozen: Any = None):
    if lc.enabled == (frozen is None):
      raise ValueError("the train step takes the frozen base exactly when LoRA is on")
    ref = frozen if lc.enabled else state.ref_params
    key = jax.random.fold_in(jax.random.key(seed), state.step)
    with sharding.use_mesh(mesh):
      if grad_accum == 1:
        grads, terms = grads_of(state.params, batch, ref, frozen, key)
      else:
        zero = (jax.tree.map(jnp.zeros_like, state.params),
                objectives.Terms(*(jnp.zeros((), jnp.float32),) * 4))

        def body(carry, micro):
          i, mb = micro
          g, t = grads_of(state.params, mb, ref, frozen, jax.random.fold_in(key, i))
          return jax.tree.map(jnp.add, carry, (g, t)), None

        (grads, terms), _ = jax.lax.scan(
            body, zero, (jnp.arange(grad_accum), _microbatches(batch, grad_accum)))
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
  in_shardings = (setup.state_shardings, setup.batch_shardings)
  if lc.enabled:
    in_shardings += (setup.frozen_shardings,)
  return jax.jit(step, in_shardings=in_shardings,
                 out_shardings=(setup.state_shardings, m_shard), donate_argnums=(0,))


def compiled_memory(setup: TrainSetup, batch_size: int, seq_len: int) -> tuple[int, int]:
  """(temporary bytes, arguments + outputs not aliased + temporaries) per device of the train
  step compiled for abstract inputs of that shape: XLA's peak without running anything."""
  data = setup.objective.abstract_batch(batch_size, seq_len, setup.batch_shardings)
  frozen = (setup.abstract_frozen,) if setup.lora.enabled else ()
  mem = make_train_step(setup).lower(setup.abstract_state, data,
                                     *frozen).compile().memory_analysis()
  return mem.temp_size_in_bytes, (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                  - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
