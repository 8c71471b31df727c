"""Data parallelism for real: one CPU device against four forced CPU devices."""
import json

import pytest

from tests.helpers import run_python

_SCRIPT = """
import json, sys
import jax
from cnn_jax import train
from cnn_jax.metric_writers import read_metrics
from tests.helpers import tiny_config
config = tiny_config(model={model!r}, num_steps=6, log_every_steps=1, batch_size=32,
                     **{{'data.train_subset': 512, 'data.validation_size': 64}}, **{extra})
results = train.train_and_evaluate(config, sys.argv[1] if len(sys.argv) > 1 else {workdir!r},
                                   command='test')
losses = [r['loss'] for r in read_metrics({workdir!r} + '/metrics.jsonl') if r['split'] == 'train']
print('RESULT', json.dumps({{'devices': jax.device_count(), 'losses': losses,
                            'test_loss': results['test_loss']}}))
"""


def _run(tmp_path, devices, model, extra):
  workdir = str(tmp_path / f'{model}_{devices}')
  r = run_python(_SCRIPT.format(model=model, workdir=workdir, extra=extra), devices=devices)
  assert r.returncode == 0, r.stderr[-3000:]
  line = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


@pytest.mark.parametrize('model,extra', [
    ('lenet5', {'momentum': 0.9}),
    # BatchNorm: statistics over the global batch, so sharding must not change the result.
    ('resnet8', {'data.image_size': 0, 'momentum': 0.9, 'learning_rate': 0.01}),
])
def test_four_devices_match_one(tmp_path, model, extra):
  one = _run(tmp_path, 1, model, extra)
  four = _run(tmp_path, 4, model, extra)
  assert one['devices'] == 1 and four['devices'] == 4
  assert len(one['losses']) == 6
  for a, b in zip(one['losses'], four['losses']):
    assert abs(a - b) < 1e-5, (one['losses'], four['losses'])
  assert abs(one['test_loss'] - four['test_loss']) < 1e-5


def test_tolerance_separates_global_from_per_device_batch_norm():
  """Negative control: BatchNorm statistics per quarter-batch (what pmap without axis_name would
  compute) change the loss by far more than the 1e-5 the equivalence test allows."""
  import jax
  import jax.numpy as jnp
  import optax
  from cnn_jax import models
  model = models.create('resnet8', num_classes=10)
  x = jax.random.normal(jax.random.key(0), (32, 28, 28, 1))
  y = jnp.arange(32) % 10
  variables = model.init(jax.random.key(1), x, train=False)
  loss = lambda xb, yb: optax.softmax_cross_entropy_with_integer_labels(
      model.apply(variables, xb, train=True, mutable=['batch_stats'])[0], yb).mean()
  global_loss = loss(x, y)
  per_device = jnp.mean(jnp.stack([loss(x[i::4], y[i::4]) for i in range(4)]))
  assert abs(float(global_loss) - float(per_device)) > 1e-3
