"""The pure, jitted parts of training: the state, one SGD step, evaluation of a split.

`train_step` gathers its batch from the dataset on the devices by the epoch permutation;
`batch_step` is the same step on a batch the host decoded (cnn_jax.streaming). Both return the
new state and metric totals that stay on the device until the loop reads them at a log point.
`evaluate` sums a padded split's metrics on the device in one scan; `evaluate_batch` adds one
batch. cnn_jax.data_source jits them; cnn_jax.train runs them.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from cnn_jax import input_pipeline, optim, tasks


class TrainState(train_state.TrainState):
  batch_stats: Any
  plateau: optim.PlateauState


@flax.struct.dataclass
class StepConfig:
  """Static settings of the jitted steps."""
  batch_size: int = flax.struct.field(pytree_node=False)
  num_classes: int = flax.struct.field(pytree_node=False)
  label_smoothing: float = flax.struct.field(pytree_node=False)
  aux_loss_weight: float = flax.struct.field(pytree_node=False)
  preprocess: input_pipeline.Preprocess = flax.struct.field(pytree_node=False)
  batch_sharding: Any = flax.struct.field(pytree_node=False)
  # What the model predicts (cnn_jax.tasks): its loss and metrics. None = classification.
  task: Any = flax.struct.field(pytree_node=False, default=None)
  ten_crop: bool = flax.struct.field(pytree_node=False, default=False)  # evaluate 10 views

  def get_task(self):
    return self.task if self.task is not None else tasks.Classification(self.num_classes)


cross_entropy = tasks.cross_entropy  # per label, any leading shape


def _variables(state, params=None):
  variables = {'params': state.params if params is None else params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def train_step(state: TrainState, totals: dict, images, labels, perm, step_in_epoch, rng,
               cfg: StepConfig):
  """One SGD step on the `step_in_epoch`-th batch of the epoch order `perm` of the dataset
  (`images`, `labels`) that lives on the devices."""
  # The batch's indices are split over the devices first, so each device gathers only its own
  # part of the batch from its copy of the dataset (in a multi-process run, each process only
  # materialises its devices' share).
  idx = jax.lax.dynamic_slice_in_dim(perm, step_in_epoch * cfg.batch_size, cfg.batch_size)
  idx = jax.lax.with_sharding_constraint(idx, cfg.batch_sharding)
  x = jax.lax.with_sharding_constraint(images[idx], cfg.batch_sharding)
  y = jax.lax.with_sharding_constraint(labels[idx], cfg.batch_sharding)
  return batch_step(state, totals, x, y, rng, cfg)


def batch_step(state: TrainState, totals: dict, x, y, rng, cfg: StepConfig):
  """One SGD step on the uint8 batch (x, y), sharded over the batch axis (the streamed pipeline
  calls it directly).

  `totals` accumulates loss and accuracy on the device until the loop reads them at a log
  point, so no step waits for the host; it also keeps the first step whose loss was not finite.
  The task (`cfg.task`) gives the input, the loss and the accuracy (per pixel for segmentation).
  """
  task = cfg.get_task()
  aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
  x, y = task.inputs(cfg.preprocess, x, y, aug_rng, train=True)

  def loss_fn(params):
    logits, updates = state.apply_fn(_variables(state, params), x, train=True,
                                     rngs={'dropout': dropout_rng},
                                     mutable=['batch_stats', 'aux_logits'])
    loss = task.losses(logits, y, cfg.label_smoothing).mean()
    # Auxiliary classifiers (GoogLeNet) sow their logits; their losses are added with a weight.
    for aux in jax.tree.leaves(updates.get('aux_logits', {})):
      loss += cfg.aux_loss_weight * task.losses(aux, y, cfg.label_smoothing).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  param_updates = jax.tree.map(lambda u: u * state.plateau.scale, param_updates)
  state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
                        opt_state=opt_state, batch_stats=updates.get('batch_stats', {}))
  n = jnp.float32(cfg.batch_size)
  first_bad = totals['first_nonfinite_step']
  totals = {
      'loss': totals['loss'] + loss * n,
      'correct': totals['correct'] + jnp.sum(task.correct(logits, y)),
      'count': totals['count'] + n,
      'first_nonfinite_step': jnp.where((first_bad < 0) & ~jnp.isfinite(loss), state.step,
                                        first_bad),
  }
  return state, totals


def evaluate(state: TrainState, images, labels, mask, cfg: StepConfig) -> dict:
  """The task's metrics over a padded split (classification: loss and accuracy; segmentation:
  also mean IoU), totals summed on the device in one jitted scan over its batches."""
  task = cfg.get_task()
  num_batches = images.shape[0] // cfg.batch_size

  def body(totals, i):
    take = lambda a: jax.lax.with_sharding_constraint(
        jax.lax.dynamic_slice_in_dim(a, i * cfg.batch_size, cfg.batch_size), cfg.batch_sharding)
    return evaluate_batch(state, totals, take(images), take(labels), take(mask), cfg), None

  totals, _ = jax.lax.scan(body, task.zero_totals(), jnp.arange(num_batches))
  return task.metrics(totals)


def evaluate_batch(state: TrainState, totals, images, labels, mask, cfg: StepConfig):
  """Adds one padded batch (uint8 images, labels, mask of the real examples) to the totals."""
  task = cfg.get_task()
  if cfg.ten_crop:  # the views' softmax averaged; its log serves as the logits
    probs = [jax.nn.softmax(state.apply_fn(_variables(state), v, train=False).astype(jnp.float32))
             for v in cfg.preprocess.ten_crop_views(images)]
    return task.accumulate(totals, jnp.log(sum(probs) / len(probs)), labels, mask)
  x, y = task.inputs(cfg.preprocess, images, labels, None, train=False)
  logits = state.apply_fn(_variables(state), x, train=False)
  return task.accumulate(totals, logits, y, mask)


def _fresh_totals() -> dict:
  totals = {k: jnp.zeros((), jnp.float32) for k in ('loss', 'correct', 'count')}
  totals['first_nonfinite_step'] = jnp.full((), -1, jnp.int32)  # -1: every loss was finite
  return totals


@functools.lru_cache(maxsize=None)
def _fresh_totals_on(sharding):
  # Made on the devices by a jitted function: a device_put from the host would make every
  # process compare its values with the others' first (a collective) at each log point.
  return jax.jit(_fresh_totals, out_shardings=sharding)


def zero_totals(sharding=None) -> dict:
  """Fresh metric totals; placed like the step's outputs so the step compiles once."""
  return _fresh_totals() if sharding is None else _fresh_totals_on(sharding)()


def create_train_state(model, tx, input_shape, rng, sharding, apply_fn=None) -> TrainState:
  """Initialises parameters (in train mode, so train-only heads exist) on every device."""
  def init(rng):
    dummy = jnp.zeros((2,) + tuple(input_shape), jnp.float32)
    variables = model.init({'params': rng, 'dropout': rng}, dummy, train=True)
    state = TrainState.create(apply_fn=apply_fn or model.apply, params=variables['params'], tx=tx,
                              batch_stats=variables.get('batch_stats', {}),
                              plateau=optim.PlateauState.create())
    return state.replace(step=jnp.zeros((), jnp.int32))  # strong int32, as after an update
  return jax.jit(init, out_shardings=sharding)(rng)
