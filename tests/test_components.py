"""Registries and what a config selects: losses, optimizers by optax name, augmentation, precision,
config.imports, and the config scoped to the selected components."""

import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mlp_mnist import augmentations
from mlp_mnist import config_checks
from mlp_mnist import losses
from mlp_mnist import models
from mlp_mnist import optimizers
from mlp_mnist import registry
from mlp_mnist import steps
from mlp_mnist.records import provenance
from mlp_mnist.records import workdirs
from mlp_mnist.sweeps import vectorized
from mlp_mnist.tools import evaluation

from conftest import REPO, synthetic_dataset
from test_extending import _assert_same, _run  # One runner and comparison for both.

# A model and a loss of a researcher's own, in one file outside the package.
USER_FILE = '''
import flax.linen as nn
import jax.numpy as jnp
from mlp_mnist import losses, models


class Wide(nn.Module):
  num_classes: int
  width: int

  @nn.compact
  def __call__(self, images, dropout_rate=0.0, dropout_rngs=None):
    x = nn.LayerNorm()(nn.Dense(self.width)(images.reshape(images.shape[0], -1)))
    return nn.Dense(self.num_classes)(nn.relu(x))


@models.MODELS.register('{model}', defaults={{'{model}.width': 12}},
                        schema={{'{model}.width': ((int,), lambda v: v > 0, 'a positive integer')}})
def build(model_config, num_classes):
  return Wide(num_classes, model_config['{model}'].width)


@losses.LOSSES.register('{loss}', defaults={{'{loss}.scale': 1.0}},
                        schema={{'{loss}.scale': ((float,), lambda v: v > 0, 'positive')}},
                        per_trial=('{loss}.scale',))
def build_loss(loss_config):
  return lambda logits, labels, params, hparams: hparams['{loss}.scale'] * losses.cross_entropy(
      logits, labels)
'''


def _write_user_file(tmp_path, model, loss, name='mine.py'):
  path = tmp_path / name
  path.write_text(USER_FILE.format(model=model, loss=loss))
  return str(path)


def _small(config):
  config.model.hidden_sizes = (16,)
  config.num_epochs = 2
  config.eval_batch_size = 20
  return config


@pytest.mark.parametrize('section,registry_', [
    ('model', models.MODELS), ('loss', losses.LOSSES), ('optimizer', optimizers.OPTIMIZERS),
    ('augment', augmentations.AUGMENTATIONS)])
def test_unknown_component_names_are_one_line_errors_listing_the_known(config, section,
                                                                       registry_):
  config[section].name = 'nope'
  with pytest.raises(config_checks.ConfigError) as raised:
    config_checks.validate_config(config)
  message = str(raised.value)
  assert message.startswith(f"config.{section}.name='nope' is invalid: it must be one of "
                            f'{sorted(registry_)}')
  assert '\n' not in message
  with pytest.raises(registry.UnknownComponentError, match=f"unknown .* 'nope'"):
    registry_['nope']  # pylint: disable=pointless-statement


def test_wrong_component_keys_are_one_line_errors(config):
  config.model.cnn.featurez = (4,)
  with pytest.raises(config_checks.ConfigError,
                     match=r"unknown config key 'model.cnn.featurez' \(the keys of model 'mlp'"):
    config_checks.validate_config(config)
  del config.model.cnn['featurez']
  config.loss.name = 'label_smoothing'
  config_checks.validate_config(config)  # Its defaults are filled in.
  assert config.loss.label_smoothing.smoothing == 0.1
  config.loss.label_smoothing.smoothing = 1.5
  with pytest.raises(config_checks.ConfigError,
                     match=r'config.loss.label_smoothing.smoothing=1.5 is invalid: it must be in'):
    config_checks.validate_config(config)


def test_a_failing_import_is_one_line_naming_the_file_and_the_error(config, tmp_path):
  broken = tmp_path / 'broken.py'
  broken.write_text('import os\nraise RuntimeError("no GPU here\\nsecond line")\n')
  config.imports = (str(broken),)
  with pytest.raises(registry.ImportFailedError) as raised:
    config_checks.validate_config(config)
  assert str(raised.value) == (f"config.imports: cannot import '{broken}': RuntimeError: no GPU "
                               'here')
  config.imports = ('no_such_module_anywhere',)
  with pytest.raises(registry.ImportFailedError, match="ModuleNotFoundError: No module named"):
    config_checks.validate_config(config)


def test_scripts_report_a_failing_import_in_one_line_and_exit_2(tmp_path):
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'train.py'),
       f'--config={os.path.join(REPO, "configs", "default.py")}',
       f"--config.imports=('{tmp_path / 'missing.py'}',)", f'--workdir={tmp_path / "run"}',
       '--jax_cache_dir='], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: config.imports: cannot import '{tmp_path / 'missing.py'}': FileNotFoundError: "
      f'no such file {tmp_path / "missing.py"}')
  assert not (tmp_path / 'run').exists()  # Before any work.


def test_optimizers_by_optax_name_with_float32_hyperparameters(config):
  config.optimizer.name = 'optax'
  config_checks.validate_config(config)
  assert config.optimizer.optax.name == 'lion'
  config.optimizer.optax.kwargs = {'b1': 0.95, 'weight_decay': 0.01}
  config_checks.validate_config(config)
  assert config_checks.per_trial_keys(config) >= {
      'optimizer.learning_rate', 'optimizer.optax.kwargs.b1',
      'optimizer.optax.kwargs.weight_decay'}
  tx, _ = optimizers.create_optimizer(config.optimizer, 10, 1)
  params = {'w': jnp.ones(3, jnp.bfloat16)}
  state = tx.init(params)
  assert {k: v.dtype for k, v in state.hyperparams.items()} == {
      'learning_rate': jnp.float32, 'b1': jnp.float32, 'weight_decay': jnp.float32}
  np.testing.assert_allclose(state.hyperparams['b1'], 0.95)
  # The same numbers as optax.lion itself.
  grads = {'w': jnp.asarray([1.0, -2.0, 0.5])}
  params = {'w': jnp.ones(3)}
  want = optax.lion(1e-3, b1=0.95, weight_decay=0.01)
  got_updates, _ = tx.update(grads, tx.init(params), params)
  want_updates, _ = want.update(grads, want.init(params), params)
  np.testing.assert_allclose(got_updates['w'], want_updates['w'], rtol=1e-6)


@pytest.mark.parametrize('optax_name,kwargs,message', [
    ('not_an_optimizer', {}, "config.optimizer.optax.name='not_an_optimizer' is not an optax "
                             'optimizer'),
    ('lion', {'beta1': 0.9}, "optax.lion takes no 'beta1'; it takes ["),
])
def test_bad_optax_names_and_kwargs_are_one_line_errors(config, optax_name, kwargs, message):
  config.optimizer.name = 'optax'
  config_checks.fill_defaults(config)
  config.optimizer.optax.name = optax_name
  config.optimizer.optax.kwargs = kwargs
  with pytest.raises(config_checks.ConfigError, match=message.replace('[', r'\[')) as raised:
    config_checks.validate_config(config)
  assert '\n' not in str(raised.value)


def test_optax_adam_by_name_equals_the_registered_adam(config):
  dataset = synthetic_dataset(num_train=64, num_test=20)
  config = _small(config)
  config.optimizer.keras_epsilon = False
  registered = _run(config, dataset)
  config.optimizer.name = 'optax'
  config_checks.fill_defaults(config)
  config.optimizer.optax.name = 'adam'
  config.optimizer.optax.kwargs = {'b1': 0.9, 'b2': 0.999, 'eps': 1e-7}
  by_name = _run(config, dataset)
  _assert_same(by_name['history'], registered['history'], rtol=1e-6)


def test_shipped_losses_at_zero_strength_are_cross_entropy_and_see_parameters():
  logits = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
  labels = jnp.asarray([0, 3, 1, 2, 0])
  params = {'w': jnp.asarray([1.0, 2.0]), 'b': jnp.asarray([[3.0]])}
  plain = losses.cross_entropy(logits, labels)
  smooth = losses.LOSSES['label_smoothing'].build(None)
  l2 = losses.LOSSES['l2'].build(None)
  np.testing.assert_array_equal(smooth(logits, labels, params,
                                       {'label_smoothing.smoothing': 0.0}), plain)
  np.testing.assert_allclose(l2(logits, labels, params, {'l2.weight': 0.5}), plain + 0.5 * 14.0,
                             rtol=1e-6)
  np.testing.assert_allclose(  # Against optax's smoothed labels, by hand.
      smooth(logits, labels, params, {'label_smoothing.smoothing': 0.2}),
      -jnp.sum((jax.nn.one_hot(labels, 4) * 0.8 + 0.05) * jax.nn.log_softmax(logits), -1),
      rtol=1e-6)


def test_evaluation_reports_cross_entropy_beside_the_training_objective(config):
  dataset = synthetic_dataset(num_train=64, num_test=20)
  config = _small(config)
  plain = _run(config, dataset)
  config.loss.name = 'l2'
  config_checks.fill_defaults(config)
  config.loss.l2.weight = 0.0
  zero = _run(config, dataset)
  _assert_same(zero['history'], plain['history'], rtol=1e-6)
  config.loss.l2.weight = 0.01
  penalized = _run(config, dataset)['history'][-1]
  # train_loss is the objective (with the penalty); test_loss is plain cross-entropy.
  norm = sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(
      _run(config, dataset)['state'].params))
  assert penalized['train_loss'] > penalized['test_loss'] + 0.5 * 0.01 * norm


def test_loss_strength_is_a_per_trial_value_of_one_program(config):
  config.loss.name = 'label_smoothing'
  config_checks.fill_defaults(config)
  other = config.copy_and_resolve_references()
  other.loss.label_smoothing.smoothing = 0.3
  assert vectorized.program_key(other) == vectorized.program_key(config)
  assert 'loss.label_smoothing.smoothing' in config_checks.per_trial_keys(config)
  state = steps.create_train_state(other, jax.random.PRNGKey(0), 2, (28, 28), 10)
  assert float(state.hparams['loss.label_smoothing.smoothing']) == pytest.approx(0.3)


def test_default_recipe_keeps_its_state_and_program(config):
  state = steps.create_train_state(config, jax.random.PRNGKey(0), 2, (28, 28), 10)
  assert state.hparams == {} and state.augment_fn is None
  assert state.compute_dtype == jnp.float32


def test_bf16_compute_with_adam_trains_with_float32_parameters(config):
  dataset = synthetic_dataset(num_train=128, num_test=40)
  config = _small(config)
  config.num_epochs = 3
  config.compute_dtype = 'bfloat16'
  result = _run(config, dataset)
  losses_ = [r['train_loss'] for r in result['history']]
  assert losses_ == sorted(losses_, reverse=True) and losses_[-1] < losses_[0] - 0.3, losses_
  assert {x.dtype for x in jax.tree.leaves(result['state'].params)} == {jnp.dtype(jnp.float32)}
  assert result['state'].opt_state.hyperparams['b2'].dtype == jnp.float32
  for cnn in (False, True):  # Every shipped model computes in bf16.
    config.model.name = 'cnn' if cnn else 'mlp'
    config.model.cnn.features, config.model.cnn.dense_width = (4,), 8
    state = steps.create_train_state(config, jax.random.PRNGKey(0), 2, (28, 28), 10)
    jaxpr = str(jax.make_jaxpr(steps.eval_step)(state, {
        'image': jnp.zeros((2, 28, 28), jnp.uint8), 'label': jnp.zeros(2, jnp.int32),
        'mask': jnp.ones(2, bool)}))
    assert ('conv_general_dilated' in jaxpr) == cnn
    assert 'dot_general' in jaxpr and 'bf16[2,10]' in jaxpr


def test_random_shift_moves_images_by_whole_pixels():
  image = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(augmentations.shift(image, 1, -2, 2),
                                [[0, 0, 0, 0], [2, 3, 0, 0], [6, 7, 0, 0]])
  np.testing.assert_array_equal(augmentations.shift(image, 0, 0, 2), image)


def _augmented(config, name='random_shift'):
  config.augment.name = name
  config_checks.fill_defaults(config)
  return config


def test_augmentation_one_and_four_devices_and_vectorized_trials_agree(config):
  dataset = synthetic_dataset(num_train=100, num_test=40)
  config = _augmented(_small(config))
  config.model.dropout_rate = 0.1
  one, four = _run(config, dataset, 1), _run(config, dataset, 4)
  _assert_same(four['history'], one['history'])
  assert one['history'][-1]['train_loss'] != _run(_small(_augmented(
      config.copy_and_resolve_references(), 'none')), dataset)['history'][-1]['train_loss']
  flip = _augmented(config.copy_and_resolve_references(), 'random_flip')
  trials = [flip, flip.copy_and_resolve_references()]
  trials[1].seed, trials[1].augment.random_flip.probability = 1, 0.2
  assert vectorized.program_key(trials[0]) == vectorized.program_key(trials[1])
  result = vectorized.train_trials(trials, dataset, jax.devices()[:2])
  for i, trial in enumerate(trials):
    _assert_same(result['history'][i], _run(trial, dataset)['history'])


def test_augmented_run_resumes_exactly(config, tmp_path):
  dataset = synthetic_dataset(num_train=96, num_test=40)
  config = _augmented(_small(config))
  whole = _run(config, dataset, workdir=tmp_path / 'whole')
  shutil.copytree(tmp_path / 'whole', tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / str(whole['history'][-1]['step']))
  resumed = _run(config, dataset, workdir=tmp_path / 'resumed')
  jax.tree.map(np.testing.assert_array_equal, resumed['state'].params, whole['state'].params)


def test_out_of_tree_model_and_loss_sweep_equals_single_runs(config, tmp_path):
  dataset = synthetic_dataset(num_train=64, num_test=30)
  config = _small(config)
  config.imports = (_write_user_file(tmp_path, 'wide_a', 'scaled_a'),)
  config.model.name, config.loss.name = 'wide_a', 'scaled_a'
  config_checks.validate_config(config)
  assert config.model.wide_a.width == 12
  trials = [config, config.copy_and_resolve_references()]
  trials[1].seed, trials[1].loss.scaled_a.scale = 1, 0.5
  assert vectorized.program_key(trials[0]) == vectorized.program_key(trials[1])
  result = vectorized.train_trials(trials, dataset, jax.devices()[:2])
  for i, trial in enumerate(trials):
    _assert_same(result['history'][i], _run(trial, dataset)['history'])
  assert result['state'].params['LayerNorm_0']['scale'].shape == (2, 12)


def test_a_run_keeps_its_imports_and_evaluates_when_the_original_is_gone(config, tmp_path):
  dataset = synthetic_dataset(num_train=64, num_test=30)
  config = _small(config)
  user_file = _write_user_file(tmp_path, 'wide_b', 'scaled_b', 'gone.py')
  config.imports = (user_file,)
  config.model.name = 'wide_b'
  result = _run(config, dataset, workdir=tmp_path / 'run')
  (record,) = provenance.read(str(tmp_path / 'run'))[0]['imports']
  with open(user_file, 'rb') as f:
    content = f.read()
  assert record['path'] == user_file and record['copy'] == 'imports/0-gone.py'
  assert record['sha256'] == __import__('hashlib').sha256(content).hexdigest()
  assert (tmp_path / 'run' / 'imports' / '0-gone.py').read_bytes() == content
  os.remove(user_file)
  assert tuple(workdirs.load_config(str(tmp_path / 'run')).imports) == (
      str(tmp_path / 'run' / 'imports' / '0-gone.py'),)
  report = evaluation.evaluate_run(str(tmp_path / 'run'), devices=jax.devices()[:1],
                                   dataset=dataset, num_mistakes=0,
                                   plots_dir=str(tmp_path / 'plots'))
  np.testing.assert_allclose(report['test_loss'], result['history'][-1]['test_loss'], rtol=1e-6)


def test_a_workdir_made_before_a_new_model_was_registered_resumes_and_evaluates(config,
                                                                             tmp_path):
  dataset = synthetic_dataset(num_train=96, num_test=40)
  config = _small(config)
  whole = _run(config, dataset, workdir=tmp_path / 'whole')
  shutil.copytree(tmp_path / 'whole', tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / str(whole['history'][-1]['step']))
  # A new model and loss registered (with defaults), and imported by the resuming command.
  config.imports = (_write_user_file(tmp_path, 'wide_c', 'scaled_c'),)
  config_checks.validate_config(config)
  assert 'wide_c' in models.MODELS and 'wide_c' not in config.model
  resumed = _run(config, dataset, workdir=tmp_path / 'resumed')
  assert [r['test_loss'] for r in resumed['history']] == [
      r['test_loss'] for r in whole['history']]
  jax.tree.map(np.testing.assert_array_equal, resumed['state'].params, whole['state'].params)
  report = evaluation.evaluate_run(str(tmp_path / 'whole'), devices=jax.devices()[:1],
                                   dataset=dataset, num_mistakes=0,
                                   plots_dir=str(tmp_path / 'plots'))
  np.testing.assert_allclose(report['test_loss'], whole['history'][-1]['test_loss'], rtol=1e-6)


def test_keys_of_unselected_components_do_not_tell_runs_apart(config):
  saved = json.loads(config.to_json_best_effort())
  del saved['model']['cnn']  # Saved before the CNN existed: its keys came later.
  changed = config.copy_and_resolve_references()
  changed.model.cnn.features = (64,)  # Not the selected model: no effect on the run.
  assert workdirs.config_differences(saved, changed) == []
  changed.model.name = 'cnn'
  assert workdirs.config_differences(saved, changed)[0].startswith('model.activation')
  # A key added to a component later, with a default that keeps old runs as they were.
  config.loss.name = 'label_smoothing'
  config_checks.fill_defaults(config)
  saved = json.loads(config.to_json_best_effort())
  del saved['loss']['label_smoothing']
  assert workdirs.config_differences(saved, config) == []
  config.loss.label_smoothing.smoothing = 0.2
  assert workdirs.config_differences(saved, config) == [
      'loss.label_smoothing.smoothing: 0.1 -> 0.2']


def test_in_memory_runs_refuse_to_evaluate_without_their_data(config, tmp_path):
  config = _small(config)
  config.num_epochs = 1
  dataset = synthetic_dataset(num_train=64, num_test=30)
  _run(config, dataset, workdir=tmp_path / 'run')
  with open(tmp_path / 'run' / 'dataset.json') as f:
    assert json.load(f)['source'] == 'memory'
  from mlp_mnist import data  # pylint: disable=g-import-not-at-top
  with pytest.raises(data.DataError, match='was trained on arrays given in memory') as raised:
    evaluation.evaluate_run(str(tmp_path / 'run'), devices=jax.devices()[:1])
  assert '\n' not in str(raised.value)


def test_evaluate_script_refuses_an_in_memory_run_unless_given_its_data(config, tmp_path):
  config = _small(config)
  config.num_epochs = 1
  dataset = synthetic_dataset(num_train=64, num_test=30)
  result = _run(config, dataset, workdir=tmp_path / 'run')
  np.savez(tmp_path / 'mine.npz', x_train=dataset['train'][0], y_train=dataset['train'][1],
           x_test=dataset['test'][0], y_test=dataset['test'][1], num_classes=10)
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  script = [sys.executable, os.path.join(REPO, 'scripts', 'evaluate.py'),
            f'--workdir={tmp_path / "run"}', '--json']
  refused = subprocess.run(script, capture_output=True, text=True, env=env, timeout=300)
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines()[-1].startswith(
      f'error: {tmp_path / "run"} was trained on arrays given in memory')
  given = subprocess.run(script + [f'--npz_path={tmp_path / "mine.npz"}'], capture_output=True,
                         text=True, env=env, timeout=300)
  assert given.returncode == 0, given.stderr
  assert json.loads(given.stdout)['test_accuracy'] == pytest.approx(
      result['history'][-1]['test_accuracy'], abs=1e-6)
