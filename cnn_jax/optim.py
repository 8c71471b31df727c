"""Optimisers and learning-rate schedules, built from the config.

SGD with momentum or Nesterov and weight decay either as an L2 term added to the gradient
(PyTorch's `SGD(weight_decay=...)`, He et al.) or decoupled from it (SGDW, Loshchilov & Hutter).
Schedules: constant, step (piecewise constant), cosine with linear warmup, and reduce-on-plateau
driven by the validation metric. The plateau factor is a small piece of the train state that the
loop updates after each validation; the step multiplies the updates by it.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax


def steps_from(value: float, unit: str, steps_per_epoch: int) -> int:
  return int(round(value * steps_per_epoch)) if unit == 'epochs' else int(value)


def create_learning_rate_fn(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """The per-step learning rate (before any plateau scaling)."""
  base = config.learning_rate
  warmup = steps_from(config.warmup, config.schedule_unit, steps_per_epoch)
  if config.lr_schedule in ('constant', 'plateau'):
    main = optax.constant_schedule(base)
  elif config.lr_schedule == 'step':
    # Boundaries count from step 0 of training, warmup included.
    boundaries = [steps_from(b, config.schedule_unit, steps_per_epoch) - warmup
                  for b in config.lr_boundaries]
    scales = {}
    for b in boundaries:
      scales[b] = scales.get(b, 1.0) * config.lr_decay_factor
    main = optax.piecewise_constant_schedule(base, scales)
  elif config.lr_schedule == 'cosine':
    main = optax.cosine_decay_schedule(base, decay_steps=max(total_steps - warmup, 1),
                                       alpha=config.lr_min_ratio)
  else:
    raise ValueError(f'Unknown lr_schedule {config.lr_schedule!r}.')
  if warmup <= 0:
    return main
  ramp = optax.linear_schedule(0.0, base, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def _kernels_only(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config, learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  wd = config.weight_decay
  mask = _kernels_only if config.weight_decay_kernels_only else None
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.optimizer == 'sgd':
    if wd and not config.decoupled_weight_decay:
      parts.append(optax.add_decayed_weights(wd, mask))  # L2: g + wd * w, before momentum
    if config.momentum:
      parts.append(optax.trace(decay=config.momentum, nesterov=config.nesterov))
    if wd and config.decoupled_weight_decay:
      parts.append(optax.add_decayed_weights(wd, mask))  # SGDW: lr * (m + wd * w)
    parts.append(optax.scale_by_learning_rate(learning_rate_fn))
  elif config.optimizer == 'adamw':
    parts.append(optax.adamw(learning_rate_fn, weight_decay=wd, mask=mask))
  else:
    raise ValueError(f'Unknown optimizer {config.optimizer!r}.')
  return optax.chain(*parts)


@flax.struct.dataclass
class PlateauState:
  """Reduce-on-plateau bookkeeping; `scale` multiplies the learning rate."""
  scale: jax.Array
  best: jax.Array
  num_bad: jax.Array
  cooldown: jax.Array

  @classmethod
  def create(cls) -> 'PlateauState':
    return cls(scale=jnp.ones((), jnp.float32), best=jnp.asarray(jnp.inf, jnp.float32),
               num_bad=jnp.zeros((), jnp.int32), cooldown=jnp.zeros((), jnp.int32))


def plateau_update(state: PlateauState, value, *, patience: int, factor: float, min_scale: float,
                   cooldown: int, rtol: float) -> PlateauState:
  """One validation round of reduce-on-plateau, as PyTorch's ReduceLROnPlateau (mode 'min',
  threshold_mode 'rel'): after more than `patience` rounds without a relative improvement of
  `rtol`, the scale is multiplied by `factor`. `value` is minimised (negate accuracies)."""
  value = jnp.asarray(value, jnp.float32)
  threshold = jnp.where(jnp.isinf(state.best), state.best, state.best - rtol * jnp.abs(state.best))
  improved = value < threshold
  best = jnp.where(improved, value, state.best)
  num_bad = jnp.where(improved, 0, state.num_bad + 1)
  in_cooldown = state.cooldown > 0
  cooldown_left = jnp.where(in_cooldown, state.cooldown - 1, state.cooldown)
  num_bad = jnp.where(in_cooldown, 0, num_bad)
  decay = num_bad > patience
  scale = jnp.where(decay, jnp.maximum(state.scale * factor, min_scale), state.scale)
  return PlateauState(scale=scale, best=best, num_bad=jnp.where(decay, 0, num_bad),
                      cooldown=jnp.where(decay, cooldown, cooldown_left))
