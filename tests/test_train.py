import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlp_mnist import data
from mlp_mnist import models
from mlp_mnist import steps
from mlp_mnist import train
from mlp_mnist.devices import compilation
from mlp_mnist.devices import parallel
from mlp_mnist.records import run_files
from mlp_mnist.sweeps import vectorized

from conftest import synthetic_dataset


def _batch(dataset, n, split='train'):
  images, labels = dataset[split]
  return {'image': jnp.asarray(images[:n]), 'label': jnp.asarray(labels[:n]),
          'mask': jnp.ones(n, bool), 'index': jnp.arange(n)}


def test_train_step_lowers_the_loss(config, dataset):
  state = steps.create_train_state(config, jax.random.PRNGKey(0), 10, (28, 28), 10)
  batch = _batch(dataset, 32)
  step = jax.jit(steps.train_step)
  losses = []
  for i in range(15):
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
    losses.append(float(metrics['loss_sum'] / metrics['count']))
  assert int(state.step) == 15
  assert losses[-1] < 0.2 * losses[0]
  assert metrics['count'] == 32
  np.testing.assert_allclose(metrics['learning_rate'], 1e-3, rtol=1e-6)


def test_eval_step_matches_numpy_exactly(config, dataset):
  state = steps.create_train_state(config, jax.random.PRNGKey(7), 10, (28, 28), 10)
  images, labels = dataset['test']
  mask = np.arange(len(labels)) % 7 != 3  # Padding entries must not count.
  batch = {'image': images, 'label': labels, 'mask': mask, 'index': np.arange(len(labels))}
  metrics = jax.device_get(jax.jit(steps.eval_step)(state, batch))

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), state.params)
  x = images.reshape(len(images), -1) / 255.0
  hidden = np.maximum(x @ p['Dense_0']['kernel'] + p['Dense_0']['bias'], 0)
  logits = hidden @ p['Dense_1']['kernel'] + p['Dense_1']['bias']
  log_probs = logits - logits.max(1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
  losses = -log_probs[np.arange(len(labels)), labels]
  assert metrics['count'] == mask.sum()
  assert metrics['correct'] == ((logits.argmax(1) == labels) & mask).sum()
  np.testing.assert_allclose(metrics['loss_sum'], losses[mask].sum(), rtol=1e-5)


def _run(config, dataset, num_devices, workdir=None):
  return train.train_and_evaluate(config, workdir, devices=jax.devices()[:num_devices],
                                  dataset=dataset, log=lambda _: None)


def test_one_two_and_four_devices_agree(config):
  # 250 examples in batches of 32: the last batch is partial and leaves devices uneven.
  dataset = synthetic_dataset(num_train=250, num_test=101)
  config.num_epochs = 2
  config.eval_batch_size = 24
  config.model.dropout_rate = 0.2
  runs = {n: _run(config, dataset, n) for n in (1, 2, 4)}
  reference = runs[1]
  for n in (2, 4):
    for got, want in zip(runs[n]['history'], reference['history']):
      for key in ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'grad_norm'):
        np.testing.assert_allclose(got[key], want[key], rtol=2e-5, atol=1e-6, err_msg=key)
    # Adam's normalization amplifies summation-order differences in near-zero gradients.
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=2e-5),
                 runs[n]['state'].params, reference['state'].params)
  assert reference['history'][-1]['train_accuracy'] > 0.5


def test_evaluation_counts_every_example_once_on_any_device_count(config):
  dataset = synthetic_dataset(num_train=64, num_test=101)
  state = steps.create_train_state(config, jax.random.PRNGKey(0), 2, (28, 28), 10)
  expected = jax.device_get(jax.jit(steps.eval_step)(state, _batch(dataset, 101, 'test')))
  for n in (1, 3, 4):
    devices = jax.devices()[:n]
    evaluate = parallel.pmap(functools.partial(steps.evaluate, axis_name=parallel.AXIS), devices,
                             in_axes=(None, None, None, 0))
    indices = parallel.eval_batch_indices(101, 8, n)
    totals = jax.device_get(evaluate(*parallel.replicate((state, *dataset['test']), devices),
                                     indices))
    assert totals['count'] == 101
    assert totals['correct'] == expected['correct']
    np.testing.assert_allclose(totals['loss_sum'], expected['loss_sum'], rtol=1e-5)


def test_vmapped_train_step_equals_single_trials(config, dataset):
  """Hyperparameters live in the state, so one train_step serves a vectorized sweep."""
  states = []
  for seed, lr, dropout in ((0, 1e-3, 0.1), (1, 3e-3, 0.4)):
    config.seed, config.optimizer.learning_rate, config.model.dropout_rate = seed, lr, dropout
    states.append(steps.create_train_state(config, jax.random.PRNGKey(seed), 10, (28, 28), 10))
  batch = _batch(dataset, 32)
  rngs = jnp.stack([jax.random.PRNGKey(5), jax.random.PRNGKey(6)])
  stacked = vectorized.stack_trials(states)
  vmapped_state, vmapped_metrics = jax.jit(jax.vmap(steps.train_step, in_axes=(0, None, 0)))(
      stacked, batch, rngs)
  for i, state in enumerate(states):
    single_state, single_metrics = jax.jit(steps.train_step)(state, batch, rngs[i])
    # Adam's first step is ~lr * sign(g): tiny gradients amplify summation-order noise.
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=5e-5),
                 jax.tree.map(lambda x: x[i], vmapped_state.params), single_state.params)
    np.testing.assert_allclose(vmapped_metrics['loss_sum'][i], single_metrics['loss_sum'],
                               rtol=1e-5)


def test_runs_are_reproducible_and_write_their_outputs(config, dataset, tmp_path):
  config.num_epochs = 3
  first = _run(config, dataset, 1, workdir=str(tmp_path))
  second = _run(config, dataset, 1)
  for a, b in zip(first['history'], second['history']):
    assert {k: v for k, v in a.items() if 'sec' not in k} == {
        k: v for k, v in b.items() if 'sec' not in k}
  records = run_files.read_metrics(str(tmp_path))
  assert [r['epoch'] for r in records] == [1, 2, 3]
  assert set(run_files.METRIC_KEYS) <= set(records[0])
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['num_epochs'] == 3


def test_real_mnist_default_recipe_reaches_keras_accuracy(config, tmp_path):
  idx_dir = os.environ.get('MLP_MNIST_IDX_DIR')
  if not idx_dir:
    pytest.skip('set MLP_MNIST_IDX_DIR to a directory with the four MNIST IDX files '
                '(.ci/run sets it to ../shared/mnist)')
  config.data.local_dir = idx_dir
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.cache_dir = str(tmp_path / 'cache')
  lines = []
  result = train.train_and_evaluate(config, str(tmp_path / 'run'), devices=jax.devices()[:1],
                                    log=lines.append)
  print('\n'.join(lines))
  assert len(result['history']) == 5
  assert result['history'][-1]['test_accuracy'] >= 0.970


def test_real_mnist_default_recipe_gives_the_same_numbers_on_one_and_four_devices(config, tmp_path):
  """What the README claims for the default recipe (an epoch of it); not a general property: sums
  over devices run in another order, which other models can amplify."""
  idx_dir = os.environ.get('MLP_MNIST_IDX_DIR')
  if not idx_dir:
    pytest.skip('set MLP_MNIST_IDX_DIR to a directory with the four MNIST IDX files')
  config.data.update(dict(local_dir=idx_dir, data_dir=str(tmp_path / 'tfds'),
                          cache_dir=str(tmp_path / 'cache')))
  config.num_epochs = 1
  dataset = data.load_dataset(config.data)
  (one,), (four,) = (_run(config, dataset, n)['history'] for n in (1, 4))
  assert (one['train_accuracy'], one['test_accuracy']) == (four['train_accuracy'],
                                                           four['test_accuracy'])
  for key in ('train_loss', 'test_loss'):
    np.testing.assert_allclose(four[key], one[key], rtol=1e-6, err_msg=key)


def test_small_cpu_programs_compile_without_ynnpack_fusions():
  x = jnp.ones((32, 784))
  lowered = jax.jit(lambda x, w: jax.nn.relu(x @ w).sum()).lower(x, jnp.ones((784, 128)))
  small = compilation.compile_program(lowered, 'cpu', rows=32)
  assert '__ynn_fusion' not in small.as_text()
  assert float(small(x, jnp.ones((784, 128)))) == 32 * 128 * 784
  # An option this XLA does not know is left out, not an error.
  unknown = compilation.compile_with_options(lowered, {'xla_cpu_no_such_option': ''})
  assert float(unknown(x, jnp.ones((784, 128)))) == 32 * 128 * 784


def test_cpu_programs_with_convolutions_take_ynnpacks_single_dots_and_reductions():
  images, kernel = jnp.ones((8, 14, 14, 16)), jnp.ones((3, 3, 16, 32))

  def conv_relu_sums(images, kernel):  # A convolution, a matmul and a bias gradient's reduction.
    out = jax.nn.relu(jax.lax.conv_general_dilated(images, kernel, (1, 1), 'SAME',
                                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    return out.sum((0, 1, 2)), out.reshape(8, -1) @ jnp.ones((14 * 14 * 32, 4))

  lowered = jax.jit(conv_relu_sums).lower(images, kernel)
  compiled = compilation.compile_program(lowered, 'cpu', rows=8)
  assert '__ynn_fusion' in compiled.as_text()
  assert compiled.as_text().count('convolution(') == 1  # Eigen's, not YNNPACK's.
  # SAME pads a 14x14 image: a row (or column) has 2 + 12 * 3 + 2 = 40 of its 42 taps in range.
  sums, products = compiled(images, kernel)
  np.testing.assert_array_equal(sums, np.full(32, 8 * 40 * 40 * 16.0))
  np.testing.assert_array_equal(products, np.full((8, 4), 40 * 40 * 16 * 32.0))
  # (With YNNPACK's dots fused with their operands' elementwise ops, jax 0.10.2 and 0.12 computed
  # NaN products here.)
  # An option value this XLA does not know is left out, not an error.
  unknown = compilation.compile_with_options(
      lowered, {'xla_cpu_experimental_ynn_fusion_type': 'NO_SUCH_FUSION_TYPE'})
  np.testing.assert_allclose(unknown(images, kernel)[0], sums, rtol=1e-6)


def test_run_once_programs_compile_without_the_cpu_backends_optimizations(monkeypatch):
  """`compilation.jit_for_one_call` runs the program compiled with `CPU_RUN_ONCE` on CPUs and the
  one with XLA's defaults elsewhere."""
  calls, jit = [], jax.jit

  def recording_jit(fun, **kwargs):
    jitted = jit(fun, **kwargs)
    return lambda *args: calls.append(kwargs.get('compiler_options')) or jitted(*args)

  monkeypatch.setattr(jax, 'jit', recording_jit)
  double = compilation.jit_for_one_call(lambda n, x: x * n, static_argnums=(0,))
  monkeypatch.setattr(jax, 'jit', jit)
  assert float(double(2, jnp.float32(1.5))) == 3.0
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert float(double(3, jnp.float32(1.5))) == 4.5
  assert calls == [compilation.CPU_RUN_ONCE, None]


@pytest.mark.parametrize('model', ['mlp', 'cnn'])
def test_the_initialization_gives_the_same_bits_as_with_xlas_optimizations(config, model):
  """The train state's parameters and dropout key (`steps.create_train_state`, compiled with
  `CPU_RUN_ONCE` on CPUs) equal those of the same initialization compiled with XLA's defaults."""
  config.model.name = model
  state = steps.create_train_state(config, jax.random.PRNGKey(5), 10, (28, 28), 10)
  network = models.create_model(config.model, 10)

  @jax.jit
  def initialize(key):
    init_key, dropout_key = jax.random.split(key)
    return network.init(init_key, jnp.zeros((1, 28, 28)))['params'], dropout_key

  params, dropout_rng = initialize(jax.random.PRNGKey(5))
  jax.tree.map(np.testing.assert_array_equal, (state.params, state.dropout_rng),
               (params, dropout_rng))


def test_a_diverging_run_stops_with_status_diverged(config, tmp_path):
  """A learning rate of 1e35: the run stops in its first epoch with a one-line error, status
  `diverged` (as a sweep trial's) and no checkpoint or record of non-finite weights."""
  config.num_epochs = 3
  config.optimizer.learning_rate = 1e35
  with pytest.raises(train.TrainingDiverged, match='loss or weights not finite at step') as e:
    train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:2],
                             dataset=synthetic_dataset(), log=lambda _: None)
  assert '\n' not in str(e.value)
  assert open(tmp_path / 'status').read().startswith('diverged\n')
  assert run_files.read_metrics(str(tmp_path)) == []
  assert not (tmp_path / 'summary.json').exists()
  assert not (tmp_path / 'checkpoints').exists() or not os.listdir(tmp_path / 'checkpoints')


def test_metrics_stay_json_when_a_metric_is_not_finite(config, tmp_path):
  """A hook's infinite metric is written as null: every line of metrics.jsonl is strict JSON."""
  config.num_epochs = 1
  train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1],
                           dataset=synthetic_dataset(), log=lambda _: None,
                           hooks=[lambda record, state: {'overflow': float('inf')}])
  lines = open(tmp_path / 'metrics.jsonl').read().splitlines()
  records = [json.loads(line, parse_constant=lambda c: pytest.fail(f'{c} in metrics.jsonl'))
             for line in lines]
  assert records[0]['overflow'] is None and records[0]['test_accuracy'] > 0
  assert open(tmp_path / 'status').read() == 'done\n'
