"""Wall time from launch to a target test accuracy: cnn_jax's loop beside the same recipe in PyTorch.

    python -m benchmarks.time_to_accuracy [--task=lenet5_mnist] [--out=benchmarks/results/time_to_accuracy.json]

Tasks (recipe = the project's config, evaluated on the test set after every epoch):
* `lenet5_mnist`: configs/lenet5_mnist.py (SGD lr 0.1, batch 64, 20 epochs, MNIST padded to
  32x32, 1,024 validation images held out), target 99.0%;
* `resnet20_cifar10`: configs/cifar_resnet.py:resnet20,tta (SGD momentum 0.9, batch 128, lr 0.1
  cosine to 0 over 20 epochs of all 50k training images, weight decay 5e-4, crop + flip), target
  85%.
The clock starts before the data are loaded, so it includes loading, compilation and every
evaluation; the PyTorch twin (eager, fp32, channels-last, all cores) reads the same arrays,
same split and normalisation, and is timed the same way. Each run is a fresh process
(benchmarks.harness.call).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

from benchmarks import harness

TASKS = {
    'lenet5_mnist': ('configs/lenet5_mnist.py', 0.99),
    'resnet20_cifar10': ('configs/cifar_resnet.py:resnet20,tta', 0.85),
}


def _config(task: str):
  from cnn_jax import sweep  # pylint: disable=g-import-not-at-top
  module, arg = sweep.load_config_file(TASKS[task][0])
  config = module.get_config(arg)
  config.eval_test_curve = True  # test accuracy at every evaluation point
  config.progress_bar = False
  config.early_stopping_patience = 0
  return config


def jax_run(task: str, workdir: str | None = None) -> dict:
  """Trains in `workdir` (kept: metrics.jsonl, logs) or, without one, in a temporary folder."""
  start = time.time()
  import cnn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from cnn_jax import train  # pylint: disable=g-import-not-at-top
  from cnn_jax.metric_writers import read_metrics  # pylint: disable=g-import-not-at-top
  config = _config(task)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(workdir or tmp)
    if (workdir / 'metrics.jsonl').exists():
      raise SystemExit(f'{workdir} already holds a run: a time to accuracy starts from scratch; '
                       'pass a new --workdir.')
    train.train_and_evaluate(config, workdir, command='benchmarks.time_to_accuracy')
    curve = [(r['step'], r['time'] - start, r['accuracy'])
             for r in read_metrics(workdir / 'metrics.jsonl') if r['split'] == 'test_curve']
  return {'curve': curve, 'steps_per_epoch': None}


def torch_run(task: str) -> dict:
  """The same recipe in PyTorch eager (LeNet-5 only: the CIFAR twin would need the augmentation)."""
  start = time.time()
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  from cnn_jax import datasets  # pylint: disable=g-import-not-at-top
  if task != 'lenet5_mnist':
    raise SystemExit(f'No PyTorch twin for {task}.')
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  config = _config(task)
  splits = datasets.load(config.data)
  pad = (config.data.image_size - splits.image_shape[0]) // 2

  def tensor(images):
    x = (images.astype(np.float32) / 255.0 - splits.mean) / splits.std
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return F.pad(x, (pad, pad, pad, pad)).contiguous(memory_format=torch.channels_last)

  x_train, y_train = tensor(splits.train[0]), torch.from_numpy(splits.train[1].astype(np.int64))
  x_test, y_test = tensor(splits.test[0]), torch.from_numpy(splits.test[1].astype(np.int64))
  model = torch_models.create('lenet5').to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum)
  batch = config.batch_size
  steps_per_epoch = len(x_train) // batch
  curve = []
  for epoch in range(config.num_epochs):
    model.train()
    order = torch.randperm(len(x_train))
    for i in range(steps_per_epoch):
      idx = order[i * batch:(i + 1) * batch]
      opt.zero_grad(set_to_none=True)
      F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
      opt.step()
    model.eval()
    with torch.no_grad():
      correct = sum(int((model(x_test[j:j + 1000]).argmax(1) == y_test[j:j + 1000]).sum())
                    for j in range(0, len(x_test), 1000))
    curve.append(((epoch + 1) * steps_per_epoch, time.time() - start, correct / len(x_test)))
  return {'curve': curve, 'torch_version': torch.__version__}


RUNS = {'jax': jax_run, 'pytorch': torch_run}  # --frameworks: each a child's function


def first_reaching(curve, target):
  for step, seconds, accuracy in curve:
    if accuracy >= target:
      return {'step': step, 'seconds': seconds, 'accuracy': accuracy}
  return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--task', default='lenet5_mnist', choices=sorted(TASKS))
  parser.add_argument('--frameworks', default='jax,pytorch')
  parser.add_argument('--out', default=None)
  parser.add_argument('--workdir', default=None,
                      help='Keep the JAX run here (metrics.jsonl: follow its progress).')
  args = parser.parse_args(argv)
  args.frameworks = args.frameworks.split(',')
  unknown = [fw for fw in args.frameworks if fw not in RUNS]
  if unknown:
    parser.error(f'--frameworks: unknown {unknown}; choose from {sorted(RUNS)}.')
  return args


def framework_run(fw: str, args: argparse.Namespace, target: float) -> dict | None:
  """One framework's run in a fresh process, with the first point at `target`; None (said on
  stderr) where it failed."""
  kwargs = {'task': args.task, **({'workdir': args.workdir} if fw == 'jax' else {})}
  try:
    run = harness.call(harness.Child.of(RUNS[fw], **kwargs))
  except harness.ChildFailed as e:
    print(f'# {fw}: failed: {e.tail}', file=sys.stderr)
    return None
  run['reached'] = reached = first_reaching(run['curve'], target)
  final = run['curve'][-1]
  print(f"{fw}: " + (f"{target:.1%} at step {reached['step']} after {reached['seconds']:.0f} s"
                     if reached else f'never reached {target:.1%}')
        + f"; final {final[2]:.2%} after {final[1]:.0f} s", flush=True)
  return run


def main(argv: list[str] | None = None):
  args = parse_args(argv)
  from cnn_jax import report  # pylint: disable=g-import-not-at-top
  target = TASKS[args.task][1]
  results = {'task': args.task, 'target': target, 'config': TASKS[args.task][0],
             'environment': report.environment(),
             'command': 'python -m benchmarks.time_to_accuracy '
                        + ' '.join(sys.argv[1:] if argv is None else argv)}
  for fw in args.frameworks:
    run = framework_run(fw, args, target)
    if run is not None:
      results[fw] = run
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
  from cnn_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.start()  # first: may restart the program, then sets XLA up
  main()
