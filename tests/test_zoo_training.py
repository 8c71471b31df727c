"""Every classifier in the registry can be trained by the foundation's loop (issue: model zoo)."""

import jax
import jax.numpy as jnp
import optax
import pytest

from cnn_jax import input_pipeline, models, optim, parallel, steps, train
from tests.helpers import tiny_config

SEGMENTATION = {'unet', 'unet_same'}  # per-pixel outputs: not for the classification loop
# Slow set: resnet1202 (~25 s to trace on a 2-core CPU) and the larger members of families
# that a smaller member already covers (resnet18/50, plain20/56, densenet121, vgg11/_bn,
# vgg16_bn), to keep the default suite under 15 minutes on the slower CI machines.
HEAVY = {'resnet1202', 'resnet34', 'resnet101', 'resnet152', 'resnet110', 'plain32', 'plain44',
         'plain110', 'densenet169', 'densenet201', 'vgg13', 'vgg13_bn', 'vgg16', 'vgg19',
         'vgg19_bn'}


def _params(names):
  return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


@pytest.mark.parametrize('name', _params(sorted(set(models.names()) - SEGMENTATION)))
def test_train_step_traces_for_every_classifier(name):
  """Init + one full train step (forward, backward, optimizer, BatchNorm, dropout, aux heads)
  at the model's canonical input, evaluated abstractly: shapes and collections all fit."""
  shape = models.input_shape(name)
  kwargs = {'aux_logits': True} if name == 'googlenet' else {}
  model = models.create(name, num_classes=10, **kwargs)
  mesh = parallel.make_mesh()
  pre = input_pipeline.Preprocess(mean=(0.5,) * shape[-1], std=(0.25,) * shape[-1])
  cfg = steps.StepConfig(2, 10, 0.0, 0.3, pre, parallel.batch_sharded(mesh))
  tx = optax.sgd(0.1, momentum=0.9)

  def init_and_step(rng):
    variables = model.init({'params': rng, 'dropout': rng}, jnp.zeros((2,) + shape), train=True)
    state = steps.TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                                    batch_stats=variables.get('batch_stats', {}),
                                    plateau=optim.PlateauState.create())
    images = jnp.zeros((4,) + shape, jnp.uint8)
    return steps.train_step(state, steps.zero_totals(), images, jnp.zeros((4,), jnp.int32),
                            jnp.arange(4), 0, rng, cfg)

  state, totals = jax.eval_shape(init_and_step, jax.random.key(0))
  assert totals['loss'].shape == ()
  assert jax.tree.structure(state.params) == jax.tree.structure(state.opt_state[0].trace)


@pytest.mark.parametrize('name,overrides', [
    ('mlp', {'data.image_size': 0}),
    ('lenet5_classic', {}),
    # BatchNorm's running averages lag while the weights move fast: give it 80 steps.
    ('plain8', {'data.image_size': 0, 'num_epochs': 4}),
])
def test_small_models_learn_through_the_loop(tmp_path, name, overrides):
  overrides = {'num_epochs': 2, **overrides}
  results = train.train_and_evaluate(tiny_config(model=name, **overrides), tmp_path, command='test')
  assert results['test_accuracy'] > 0.5, results  # chance is 0.1


def test_fixed_input_models_reject_mnist_with_the_fix(tmp_path):
  with pytest.raises(ValueError, match=r"'alexnet' expects images of shape \(227, 227, 3\)"):
    train.train_and_evaluate(tiny_config(model='alexnet'), tmp_path, command='test')


def test_segmentation_model_is_refused_clearly(tmp_path):
  with pytest.raises(ValueError, match='per-pixel logits for segmentation'):
    train.train_and_evaluate(tiny_config(model='unet_same', **{'data.image_size': 32}), tmp_path,
                             command='test')
