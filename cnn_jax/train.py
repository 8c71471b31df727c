"""Training and evaluation: pure jitted steps, data-parallel over every device.

`train_and_evaluate(config, workdir)` trains `config.model` on `config.data`, validates every
epoch, keeps the latest and the best checkpoint, stops early on the validation objective, and
finally evaluates the best checkpoint once on the test set. Rerunning it on the same workdir
resumes from the latest checkpoint and reaches the same result as an uninterrupted run.

The loop reads in three parts: `setup` (the data source, the model, the jitted steps of
cnn_jax.steps, the restored state), `train_loop` with `eval_point` (validation, selection of the best checkpoint,
reduce-on-plateau, early stopping) and the checkpoint cadence, and `final_results`. The run's
bookkeeping is a `RunState`, saved as JSON beside every checkpoint.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import shlex
import sys
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from cnn_jax import (checkpointing, config_base, data_source, datasets, diagnostics,
                     input_pipeline, models, optim, parallel, precision, report, runtime,
                     streaming, tasks, transfer)
from cnn_jax.steps import StepConfig, TrainState, create_train_state, zero_totals
from cnn_jax.config_base import ConfigError
from cnn_jax.kernels import layer_set as cpu_layer_set
from cnn_jax.metric_writers import MetricWriter
from cnn_jax.models import layer_set

# Set by a SIGTERM/SIGINT handler (cnn_jax.cli): the loop saves the latest state and returns.
STOP_REQUESTED = threading.Event()


def stop_requested(step: int) -> bool:
  """The default `should_stop`: a SIGTERM or Ctrl-C has arrived in this process."""
  del step
  return STOP_REQUESTED.is_set()


def check_input_shape(name: str, model, shape, label_shape=None) -> None:
  """Fails early with a ConfigError naming the fix when the data (images of `shape`, labels of
  `label_shape` per image when given) do not fit the model and its task."""
  expected = models.input_shape(name)
  hint = (f"Model {name!r} expects images of shape {expected} (H, W, C) but the data pipeline "
          f"yields {tuple(shape)}. Set --config.data.image_size to pad the images or "
          f"--config.data.crop_size to crop them, or pick a "
          f"model whose input fits (cnn_jax.models.input_shape(name)).")
  if models.spec(name).fixed_input and tuple(shape) != tuple(expected):
    raise ConfigError(hint)
  x = jax.ShapeDtypeStruct((1,) + tuple(shape), jnp.float32)
  try:
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  except ConfigError:  # a model field out of range (depth, shortcut): its own message
    raise
  except Exception as e:  # shape arithmetic failed somewhere inside the model
    raise ConfigError(f'{hint}\nUnderlying error: {e}') from e
  task = tasks.for_model(name, out.shape[-1])
  if out.ndim != task.output_rank:
    raise ConfigError(f'Model {name!r} returns outputs of shape {out.shape[1:]} per image, which '
                      f'does not fit its registered task {task.kind!r} (cnn_jax.models.spec).')
  problem = None if label_shape is None else task.check_labels(label_shape)
  if problem:
    fix = ('Pick a segmentation dataset (--config.data.dataset=mnist_segmentation or '
           'oxford_iiit_pet) or a classification model.' if task.kind == tasks.SEGMENTATION else
           'Pick a segmentation model (unet, unet_same) or a classification dataset.')
    raise ConfigError(f'Model {name!r} ({task.kind}) cannot train on this data: {problem}. {fix}')


@dataclasses.dataclass
class RunState:
  """The loop's bookkeeping, saved as JSON with every checkpoint (the 'meta' item).

  The keys are those of the plain dict that older checkpoints carry, so either restores.
  """
  best_value: float = math.inf  # the best validation objective so far (minimised)
  best_epoch: int | None = None  # epoch and step of the best checkpoint
  best_step: int | None = None
  bad_epochs: int = 0  # validations in a row without improvement (early stopping)
  stopped_early: bool = False
  train_seconds: float = 0.0  # timed training (compilation excluded), for images/s
  timed_images: int = 0
  wall_seconds: float = 0.0  # wall time of the run, summed over resumes
  epochs_done: int = 0

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, record: dict) -> 'RunState':
    """From a saved record; keys it does not know are ignored, missing ones take defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})


@dataclasses.dataclass
class Run:
  """What `setup` builds for one run; `train_loop`, `eval_point` and `final_results` use it."""
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  splits: datasets.Splits
  steps_per_epoch: int
  total_steps: int
  lr_fn: Callable[[int], Any]
  num_params: int
  book: RunState
  ckpts: checkpointing.Checkpoints
  writer: MetricWriter
  replicated: Any
  data: data_source.DataSource  # the batches: on the devices, or decoded on the host
  step_rng: jax.Array
  diagnose: Callable | None = None
  layers: layer_set.LayerSet = layer_set.STOCK  # what the model computes with (config.cpu_kernels)
  load_start: float | None = dataclasses.field(default_factory=lambda: _load_average())  # sitting's
  last_tick: float = dataclasses.field(default_factory=time.time)

  @property
  def num_train(self) -> int:
    return self.splits.num_train

  def evaluate(self, split: str, state: TrainState) -> dict:
    return {k: parallel.host_scalar(v) for k, v in self.data.evaluate(split, state).items()}

  def wall_time(self) -> float:
    """The run's wall time up to now, summed over resumes."""
    return self.book.wall_seconds + time.time() - self.last_tick

  def tick(self) -> None:
    """Adds the wall time since the last tick to the run's total, which survives resumes."""
    now = time.time()
    self.book.wall_seconds += now - self.last_tick
    self.last_tick = now

  def save(self, kind: str, step: int, state: TrainState) -> None:
    self.ckpts.save(kind, step, state, self.book.to_json())


def _selection_value(metric: str, val: dict) -> float:
  """The validation objective to minimise."""
  return val['loss'] if metric == 'val_loss' else -val['accuracy']


def _log(msg: str) -> None:
  if parallel.is_main_process():
    print(msg, file=sys.stderr, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       should_stop: Callable[[int], bool] | None = None,
                       command: str | None = None) -> dict:
  """Trains and evaluates; returns the contents of results.json.

  `should_stop(step)` is asked after every step whether this process wants to stop (default: a
  SIGTERM or Ctrl-C arrived); all processes agree on the step (the first check point after any
  of them asked), save the state there and return {'status': 'interrupted', 'step': ...}.
  Tests inject it to simulate a pre-emption at a given step.
  """
  config_base.validate(config)
  parallel.maybe_initialize_distributed(config.distributed)
  workdir = pathlib.Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise checkpointing.WorkdirError(f'Cannot create the workdir {workdir}: {e}') from e
  with checkpointing.WorkdirLock(workdir):
    run, state = setup(config, workdir)
    failed = True
    try:
      state, halted = train_loop(run, state, should_stop or stop_requested)
      run.ckpts.wait()  # a failed background write surfaces here
      if halted:
        _log(f'Stopped at step {int(state.step)}; the state is saved. Rerun the same command '
             'to resume.')
        results = {'status': 'interrupted', 'step': int(state.step)}
      else:
        results = final_results(run, state, command)
      failed = False
      return results
    finally:
      _close(run, quiet=failed)


def _close(run: Run, quiet: bool) -> None:
  """Finishes background writes and closes files; while an error propagates, a second error
  here (the same full disk) is not allowed to replace it."""
  first_error = None
  closers = (run.ckpts.wait, run.ckpts.close, run.writer.close, run.data.close)
  for close in closers:
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except  (close the rest, then raise)
      first_error = first_error or e
  if first_error is not None and not quiet:
    raise first_error


def setup(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> tuple[Run, TrainState]:
  """The data, the model, the jitted steps; the state restored from the latest checkpoint when
  there is one."""
  splits, preprocess, model = _data_and_model(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size)
  steps_per_epoch = splits.num_train // config.batch_size
  if steps_per_epoch == 0:
    n = jax.device_count()
    raise ConfigError(f'config.batch_size={config.batch_size} exceeds the {splits.num_train} '
                      f'training images. Did you mean {splits.num_train // n * n} or less?')
  total_steps = config.num_steps or config.num_epochs * steps_per_epoch
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch, total_steps)
  root_rng = jax.random.key(config.seed)
  init_rng, data_rng, step_rng = (jax.random.fold_in(root_rng, i) for i in range(3))
  replicated = parallel.replicated(mesh)
  layers = cpu_layer_set.for_config(config)  # the CPU kernels, or JAX's own ops
  apply_fn = layer_set.bind(model.apply, layers)
  state = create_train_state(model, optim.create_optimizer(config, lr_fn),
                             preprocess.output_shape(splits.image_shape), init_rng, replicated,
                             apply_fn=apply_fn)
  # Transfer learning: source weights under a new head, frozen parts (config.init_from,
  # config.trainable); the workdir's own checkpoint, restored below, takes precedence.
  state = transfer.prepare(config, config.model, model, state, replicated, workdir)
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  step_cfg = StepConfig(batch_size=config.batch_size, num_classes=splits.num_classes,
                        label_smoothing=config.label_smoothing,
                        aux_loss_weight=config.aux_loss_weight, preprocess=preprocess,
                        batch_sharding=parallel.batch_sharded(mesh),
                        task=tasks.for_model(config.model, splits.num_classes))
  data = data_source.create(splits, config, step_cfg, replicated, data_rng, steps_per_epoch)
  state, ckpts, writer, book = _restore(config, workdir, state)
  run = Run(config=config, workdir=workdir, splits=splits, steps_per_epoch=steps_per_epoch,
            total_steps=total_steps, lr_fn=lr_fn, num_params=num_params, book=book, ckpts=ckpts,
            writer=writer, replicated=replicated, data=data, step_rng=step_rng, layers=layers)
  if config.gradient_diagnostics:
    run.diagnose = diagnostics.make_diagnostics_fn(
        apply_fn, preprocess, step_cfg, *data.diagnostics_batch(config.batch_size))
    if int(state.step) == 0:
      writer.write(0, 'diagnostics', run.diagnose(state))
  return run, state


def _data_and_model(config):
  """The dataset's splits, the preprocessing and the model, checked to fit each other."""
  streamed = config.data.pipeline == 'stream'
  try:  # DataError: the files; ValueError: the config
    splits = streaming.load_dataset(config.data) if streamed else datasets.load(config.data)
    preprocess = input_pipeline.Preprocess.from_config(config.data, splits)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  input_shape = preprocess.output_shape(splits.image_shape)
  model = models.create(config.model, num_classes=splits.num_classes,
                        dtype=precision.compute_dtype(config.dtype), **config.model_kwargs)
  check_input_shape(config.model, model, input_shape, () if streamed else splits.train[1].shape[1:])
  if (tasks.for_model(config.model, splits.num_classes).kind == tasks.SEGMENTATION
      and (preprocess.crop_size or preprocess.pca_jitter_std)):
    raise ConfigError('config.data.crop_size and config.data.pca_jitter_std are for classification;'
                      ' a segmentation mask would not follow them. Set both to 0 (use '
                      'data.random_crop_padding and data.horizontal_flip, which move the mask).')
  return splits, preprocess, model


def _restore(config, workdir: pathlib.Path, state: TrainState):
  """(state, checkpoints, metric writer, bookkeeping): the latest checkpoint's state and
  bookkeeping when there is one; config.json written."""
  parallel.barrier('setup')  # the processes meet before orbax's first barrier
  ckpts = checkpointing.Checkpoints(workdir)
  writer = MetricWriter(workdir)
  book = RunState()
  try:
    restored = ckpts.restore('latest', state)
    writer.truncate_after(-1 if restored is None else int(restored[0].step))  # drop what a
    # killed run logged after its last checkpoint (all of it when it had none)
    if restored is not None:
      state, meta = restored
      book = RunState.from_json(meta)
      _log(f'Resuming from step {int(state.step)} (checkpoint in {workdir / "checkpoints"}).')
    if parallel.is_main_process():
      checkpointing.write_text(workdir / 'config.json',
                               config.to_json_best_effort(indent=2, sort_keys=True))
  except BaseException:
    ckpts.close()
    writer.close()
    raise
  return state, ckpts, writer, book


def train_loop(run: Run, state: TrainState,
               should_stop: Callable[[int], bool]) -> tuple[TrainState, bool]:
  """Steps from the restored step to the end; returns the last state and whether it halted
  on a stop request (after saving it)."""
  config, book = run.config, run.book
  start_step = int(state.step)
  bar = _progress_bar(config, run.total_steps, start_step)
  totals = zero_totals(run.replicated)
  interval_start, interval_images, first_interval = time.time(), 0, True
  stop_wanted = False  # this process was asked to stop; the processes agree at check points
  check_every = 1 if parallel.process_count() == 1 else config.stop_check_every_steps
  halted = False
  run.data.start(start_step, run.total_steps)
  for step in range(start_step, run.total_steps):
    if book.stopped_early:
      break
    epoch = step // run.steps_per_epoch
    state, totals = run.data.train_step(state, totals, step, run.step_rng)
    done = step + 1
    interval_images += config.batch_size
    end_of_epoch = done % run.steps_per_epoch == 0 or done == run.total_steps
    eval_now = is_eval_point(config, done, end_of_epoch, epoch, run.total_steps)
    checkpoint_now = end_of_epoch or eval_now or (
        config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0)
    stop_wanted = stop_wanted or bool(should_stop(done))
    stop_now = (done % check_every == 0 or done == run.total_steps) and parallel.any_process(
        stop_wanted)

    if done % config.log_every_steps == 0 or end_of_epoch or checkpoint_now or stop_now:
      host = jax.device_get(totals)
      _check_finite(run, state, host, done)  # before anything is saved
    if done % config.log_every_steps == 0 or end_of_epoch:
      elapsed = time.time() - interval_start
      train_metrics = {'loss': host['loss'] / host['count'],
                       'accuracy': host['correct'] / host['count'],
                       'learning_rate': float(run.lr_fn(done - 1)) * float(state.plateau.scale),
                       'images_per_s': interval_images / max(elapsed, 1e-9)}
      run.writer.write(done, 'train', train_metrics)
      if not first_interval:  # the first interval includes compilation
        book.train_seconds += elapsed
        book.timed_images += interval_images
      first_interval = False
      if bar is not None:
        bar.update(done - bar.n)
        bar.set_postfix(epoch=epoch + 1, loss=f"{train_metrics['loss']:.4f}",
                        acc=f"{train_metrics['accuracy']:.4f}",
                        img_s=f"{train_metrics['images_per_s']:.0f}", refresh=False)
      totals = zero_totals(run.replicated)
      interval_start, interval_images = time.time(), 0

    if end_of_epoch:
      book.epochs_done = epoch + 1
    if eval_now:
      state = eval_point(run, state, done, epoch, bar)
    if checkpoint_now or stop_now:
      run.tick()
      run.save('latest', done, state)
      if eval_now or end_of_epoch:
        interval_start = time.time()  # validation and saving are not training time
    if stop_now:
      halted = True
      break
  if bar is not None:
    bar.close()
  return state, halted


def is_eval_point(config, done: int, end_of_epoch: bool, epoch: int, total_steps: int) -> bool:
  """Validation cadence: every eval_every_steps steps, or every eval_every_epochs epochs; and
  always after the last step."""
  if done == total_steps:
    return True
  if config.eval_every_steps:
    return done % config.eval_every_steps == 0
  return end_of_epoch and (epoch + 1) % config.eval_every_epochs == 0


def eval_point(run: Run, state: TrainState, done: int, epoch: int, bar=None) -> TrainState:
  """Everything done at an evaluation point: the curves (train_eval, test_curve, diagnostics),
  then validation, selection of the best checkpoint, reduce-on-plateau and early stopping."""
  config, book, writer = run.config, run.book, run.writer
  if 'train_eval' in run.data.splits:
    writer.write(done, 'train_eval', run.evaluate('train_eval', state))
  if config.eval_test_curve and 'test' in run.data.splits:
    # wall_time_s: the run's wall time so far, summed over resumes (time to accuracy).
    writer.write(done, 'test_curve', {**run.evaluate('test', state), 'wall_time_s': run.wall_time()})
  if run.diagnose is not None:
    writer.write(done, 'diagnostics', run.diagnose(state))
  if 'val' not in run.data.splits:
    return state
  val = run.evaluate('val', state)
  writer.write(done, 'val', val)
  value = _selection_value(config.selection_metric, val)
  improved = value < book.best_value
  tie = value == book.best_value and config.selection_ties_to_latest
  book.bad_epochs = 0 if improved else book.bad_epochs + 1  # a tie is no progress
  if improved or tie:
    book.best_value, book.best_epoch, book.best_step = value, epoch + 1, done
    run.save('best', done, state)
  if config.lr_schedule == 'plateau':
    state = state.replace(plateau=optim.plateau_update(
        state.plateau, value, patience=config.plateau_patience, factor=config.lr_decay_factor,
        min_scale=config.plateau_min_scale, cooldown=config.plateau_cooldown,
        rtol=config.plateau_rtol))
  if 0 < config.early_stopping_patience <= book.bad_epochs:
    book.stopped_early = True
    _log(f'Early stopping after epoch {epoch + 1}: {config.selection_metric} has not improved '
         f'for {book.bad_epochs} validations (best at epoch {book.best_epoch}).')
  line = f"val loss {val['loss']:.4f}  val accuracy {val['accuracy']:.4f}"
  if bar is not None:
    bar.write(f'epoch {epoch + 1:3d}  step {done:7d}  {line}')
  elif not config.progress_bar:
    _log(f'step {done}/{run.total_steps}  {line}')
  return state


def _check_finite(run: Run, state: TrainState, host_totals: dict, done: int) -> None:
  """Stops the run when a loss was not finite; the last checkpoint saved before it is kept."""
  bad_step = int(host_totals['first_nonfinite_step'])  # the step (1-based) whose loss it was
  if bad_step < 0:
    return
  run.ckpts.wait()
  last = run.ckpts.latest_step()
  epoch = (bad_step - 1) // run.steps_per_epoch
  lr = float(run.lr_fn(bad_step - 1)) * float(state.plateau.scale)
  kept = (f'The last good checkpoint (step {last}) is kept in {run.workdir / "checkpoints"}'
          if last is not None else 'No checkpoint had been written yet')
  raise FloatingPointError(
      f'Training diverged: the train loss is not finite from step {bad_step} (epoch {epoch + 1}, '
      f'learning rate {lr:.4g}); the run stopped at step {done} without saving. {kept}. Lower '
      '--config.learning_rate, add --config.warmup or --config.grad_clip_norm, and start in a '
      'new --workdir.')


def final_results(run: Run, state: TrainState, command: str | None) -> dict:
  """Test figures from the best checkpoint (the latest when there is no validation split), the
  run's figures and environment; written to results.json by process 0."""
  config, book, splits = run.config, run.book, run.splits
  best = run.ckpts.restore('best', state) if 'val' in run.data.splits else None
  final_state = best[0] if best is not None else state
  results = {
      'status': 'stopped_early' if book.stopped_early else 'completed',
      'name': config.name or config.model,
      'model': config.model,
      'task': models.spec(config.model).task,  # metrics: loss, accuracy (+ mean_iou: segmentation)
      'num_params': run.num_params,
      'dataset': (f'{splits.name} ({splits.source})' if splits.source in config_base.DATA_SOURCES
                  else splits.source),  # a folder's own label, e.g. 'CIFAR-10 (JPEG copy)'
      'num_train': run.num_train, 'num_val': _count(splits.val), 'num_test': _count(splits.test),
      'steps': int(state.step), 'epochs': book.epochs_done, 'steps_per_epoch': run.steps_per_epoch,
      'best_epoch': book.best_epoch, 'best_step': book.best_step,
      'selection_metric': config.selection_metric,
      'cpu_kernels': config.cpu_kernels, 'layer_set': run.layers.name,
  }
  if best is not None:
    results.update({f'val_{k}': v for k, v in run.evaluate('val', final_state).items()})
  if 'train_eval' in run.data.splits:  # training error of the last state, without augmentation
    results.update({f'final_train_eval_{k}': v
                    for k, v in run.evaluate('train_eval', state).items()})
    results['num_train_eval'] = min(config.data.train_eval_size, run.num_train)
  if 'test' in run.data.splits:
    test = run.evaluate('test', final_state)
    run.writer.write(int(state.step), 'test', test)
    results.update({f'test_{k}': v for k, v in test.items()})
  if 'test_10crop' in run.data.splits:  # AlexNet's test-time averaging over 10 views
    results.update({f'test_10crop_{k}': v
                    for k, v in run.evaluate('test_10crop', final_state).items()})
  run.tick()
  results.update({
      'wall_time_s': book.wall_seconds,
      'train_images_per_s': book.timed_images / book.train_seconds if book.train_seconds else None,
      **parallel.device_summary(),
      'host_cpu': report.host_cpu(),
      # the machine's load when this sitting of the run started and ended (1-minute average)
      'load_average_start': run.load_start, 'load_average_end': _load_average(),
      'cpu_count': os.cpu_count(),
      'runtime': runtime.applied(),
      'jax_version': jax.__version__,
      'git_commit': report.git_commit(),  # the code of this (last) sitting
      'command': command if command is not None else shlex.join([sys.executable] + sys.argv),
  })
  if parallel.is_main_process():
    checkpointing.write_text(run.workdir / 'results.json', json.dumps(results, indent=2) + '\n')
  return results


def _load_average() -> float | None:
  return os.getloadavg()[0] if hasattr(os, 'getloadavg') else None


def _count(split) -> int:
  """Examples in a split: (images, labels) arrays or a streamed source."""
  return len(split[0]) if isinstance(split, tuple) else len(split)


def _progress_bar(config, total_steps, start_step):
  if not (config.progress_bar and parallel.is_main_process()):
    return None
  return tqdm.tqdm(total=total_steps, initial=start_step, unit='step', dynamic_ncols=True,
                   mininterval=1.0, file=sys.stderr)
