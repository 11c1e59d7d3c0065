"""The model registry and the CNN, early stopping, the best checkpoint and epoch hooks."""

import functools
import json
import re
import shutil

import jax
import numpy as np
import pytest

from mlp_mnist import cli
from mlp_mnist import config_checks
from mlp_mnist import early_stopping
from mlp_mnist import errors
from mlp_mnist import hooks
from mlp_mnist import models
from mlp_mnist import steps
from mlp_mnist import train
from mlp_mnist.records import checkpointing
from mlp_mnist.records import run_files
from mlp_mnist.sweeps import results
from mlp_mnist.sweeps import runner
from mlp_mnist.sweeps import vectorized
from mlp_mnist.tools import evaluation

from conftest import synthetic_dataset
from test_run_records import read_events

COMPARED = ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'grad_norm')


def _tiny_cnn(config):
  config.model.name = 'cnn'
  config.model.cnn.features = (4, 8)
  config.model.cnn.dense_width = 16
  config.model.dropout_rate = 0.2
  config.eval_batch_size = 24
  return config


def _run(config, dataset, num_devices=1, workdir=None, **kwargs):
  return train.train_and_evaluate(config, workdir and str(workdir),
                                  devices=jax.devices()[:num_devices], dataset=dataset,
                                  log=lambda _: None, **kwargs)


def _assert_same(got, want, rtol=2e-5):
  assert [r['epoch'] for r in got] == [r['epoch'] for r in want]
  for g, w in zip(got, want):
    for key in COMPARED:
      np.testing.assert_allclose(g[key], w[key], rtol=rtol, atol=1e-6, err_msg=key)


def test_registry_builds_each_model_and_rejects_unknown_names(config):
  assert sorted(models.MODELS) == ['cnn', 'mlp']
  params = steps.create_train_state(_tiny_cnn(config), jax.random.PRNGKey(0), 10, (28, 28),
                                  10).params
  assert params['Conv_0']['kernel'].shape == (3, 3, 1, 4)
  assert params['Conv_1']['kernel'].shape == (3, 3, 4, 8)
  assert params['Dense_0']['kernel'].shape == (7 * 7 * 8, 16)  # Two 2x2 pools: 28 -> 7.
  assert params['Dense_1']['kernel'].shape == (16, 10)
  config.model.name = 'resnet'
  with pytest.raises(config_checks.ConfigError,
                     match=r"config.model.name='resnet' is invalid: it must be one of \['cnn', 'mlp'\]"):
    config_checks.validate_config(config)
  with pytest.raises(ValueError, match="unknown model 'resnet'.*'cnn', 'mlp'"):
    models.create_model(config.model, 10)


def test_cnn_takes_its_input_shape_and_classes_from_the_data(config):
  model = models.create_model(_tiny_cnn(config).model, 3)
  x = np.zeros((2, 12, 10, 3), np.float32)  # Colour images, odd pooled widths (10 -> 5 -> 2).
  params = model.init(jax.random.PRNGKey(0), x)
  assert model.apply(params, x).shape == (2, 3)
  assert params['params']['Dense_0']['kernel'].shape == (3 * 2 * 8, 16)


def test_cnn_model_keys_are_checked(config):
  config.model.cnn.features = (8, 0)
  with pytest.raises(config_checks.ConfigError, match=r'config.model.cnn.features=\(8, 0\)'):
    config_checks.validate_config(config)


def test_cnn_one_and_four_devices_agree(config):
  dataset = synthetic_dataset(num_train=100, num_test=40)
  config = _tiny_cnn(config)
  config.num_epochs = 1
  one, four = _run(config, dataset, 1), _run(config, dataset, 4)
  _assert_same(four['history'], one['history'])
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=2e-5),
               four['state'].params, one['state'].params)


def test_cnn_vectorized_sweep_equals_single_runs(config):
  dataset = synthetic_dataset(num_train=64, num_test=30)
  config = _tiny_cnn(config)
  config.num_epochs = 1
  trials = [config.copy_and_resolve_references() for _ in range(2)]
  trials[1].seed, trials[1].model.dropout_rate = 1, 0.4
  assert vectorized.program_key(trials[0]) == vectorized.program_key(trials[1])
  result = vectorized.train_trials(trials, dataset, jax.devices()[:1])
  for i, trial in enumerate(trials):
    _assert_same(result['history'][i], _run(trial, dataset)['history'])


def test_model_structure_keys_define_programs(config):
  key = vectorized.program_key(config)
  for section, name, value in [('model', 'name', 'cnn'), ('cnn', 'features', (8, 8)),
                               ('cnn', 'kernel_size', 5)]:
    variant = config.copy_and_resolve_references()
    (variant.model if section == 'model' else variant.model.cnn)[name] = value
    assert vectorized.program_key(variant) != key, name
  variant = config.copy_and_resolve_references()
  variant.early_stopping.patience = 7
  assert vectorized.program_key(variant) == key


def _stopper(config, monitor='test_loss', **settings):
  config.early_stopping.monitor = monitor
  for key, value in settings.items():
    config.early_stopping[key] = value
  return early_stopping.EarlyStopping(config)


def test_early_stopping_follows_keras_rule_on_a_metric_sequence(config):
  losses = [1.0, 0.8, 0.79, 0.85, 0.9, 0.5, 0.6, 0.7, 0.7]
  history = [{'epoch': e + 1, 'test_loss': v} for e, v in enumerate(losses)]
  stopper = _stopper(config, patience=2, min_delta=0.05)
  states = [stopper.replay(history[:n]) for n in range(1, len(history) + 1)]
  # 0.79 is not better than 0.8 by more than 0.05: epochs 3 and 4 do not improve; stop after 4.
  assert [s.wait for s in states[:4]] == [0, 0, 1, 2]
  assert states[3].stopped_epoch == 4 and states[3].best_epoch == 2 and states[3].best == 0.8
  assert states[-1] == states[3]  # Stopped is final.
  assert 'test_loss did not improve by more than 0.05 for 2' in stopper.reason(states[3])
  # Patience 0 stops at the first epoch without improvement, as Keras does.
  assert _stopper(config, patience=0, min_delta=0.0).replay(history).stopped_epoch == 4
  accuracy = _stopper(config, 'test_accuracy', patience=1)
  assert accuracy.mode == 'max'
  acc_history = [{'epoch': e, 'test_accuracy': a} for e, a in [(1, 0.5), (2, 0.7), (3, 0.6)]]
  assert accuracy.replay(acc_history).stopped_epoch == 3
  assert early_stopping.best_record(acc_history, 'test_accuracy', 'max')['epoch'] == 2
  assert not _stopper(config, 'off').replay(history).stopped


@pytest.mark.parametrize('settings,message', [
    ({'monitor': 'validation_loss'}, "monitor='validation_loss' is not a metric of this run "
                                     '(validation metrics need a validation split'),
    ({'monitor': 'tset_loss'}, "monitor='tset_loss' is not a metric of this run"),
    ({'patience': -1}, 'config.early_stopping.patience=-1 is invalid: it must be a non-negative'),
    ({'mode': 'up'}, "config.early_stopping.mode='up' is invalid"),
])
def test_bad_early_stopping_settings_are_one_line_errors(config, settings, message):
  for key, value in settings.items():
    config.early_stopping[key] = value
  with pytest.raises(config_checks.ConfigError, match=re.escape(message)) as raised:
    config_checks.validate_config(config)
  assert '\n' not in str(raised.value)


def test_default_run_has_no_early_stopping(config):
  assert early_stopping.monitor(config) is None
  # Nothing held out: no best checkpoint (choosing by test loss would select on the test set).
  assert early_stopping.best_checkpoint_metric(config) is None
  config.data.validation_split = 10
  assert early_stopping.best_checkpoint_metric(config) == ('validation_loss', 'min', 0.0)


def _stopping_config(config):
  config.num_epochs = 8
  config.model.hidden_sizes = (16,)
  config.optimizer.learning_rate = 0.02
  config.data.validation_split = 16
  config.early_stopping.monitor = 'validation_loss'
  config.early_stopping.mode = 'max'  # The loss falls: no epoch after the first improves.
  config.early_stopping.patience = 2
  config.early_stopping.restore_best_weights = True
  config.checkpoint.keep = 1
  return config


def test_early_stopping_run_stops_restores_best_and_resumes_identically(config, tmp_path):
  dataset = synthetic_dataset(num_train=96, num_test=40)
  config = _stopping_config(config)
  whole = _run(config, dataset, workdir=tmp_path / 'whole')
  assert [r['epoch'] for r in whole['history']] == [1, 2, 3]
  assert whole['early_stopping']['stopped_epoch'] == 3
  assert whole['early_stopping']['best_epoch'] == 1
  summary = run_files.read_metrics(tmp_path / 'whole')  # metrics.jsonl: every epoch trained.
  assert len(summary) == 3
  with open(tmp_path / 'whole' / 'summary.json') as f:
    written = json.load(f)
  assert written['epoch'] == 1 and written['early_stopping']['stopped_epoch'] == 3
  assert 'did not improve' in written['early_stopping']['reason']
  # The final state is epoch 1's, also the best checkpoint's; --step best reads it.
  assert int(whole['state'].step) == whole['history'][0]['step']
  report = evaluation.evaluate_run(str(tmp_path / 'whole'), 'best', devices=jax.devices()[:1],
                                   dataset=dataset, num_mistakes=0,
                                   plots_dir=str(tmp_path / 'plots'))
  assert report['epoch'] == 1
  np.testing.assert_allclose(report['test_loss'], whole['history'][0]['test_loss'], rtol=1e-6)

  # Killed after epoch 2 (its checkpoint is the latest left): the resumed run stops alike.
  shutil.copytree(tmp_path / 'whole', tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / str(whole['history'][-1]['step']))
  resumed = _run(config, dataset, workdir=tmp_path / 'resumed')
  assert [run_files.without_timing(r) for r in resumed['history']] == [
      run_files.without_timing(r) for r in whole['history']]
  assert resumed['early_stopping'] == whole['early_stopping']
  jax.tree.map(np.testing.assert_array_equal, resumed['state'].params, whole['state'].params)
  # Resuming a stopped run trains nothing.
  again = _run(config, dataset, workdir=tmp_path / 'resumed')
  assert len(again['history']) == 3


def test_sweep_trials_stop_on_their_own(config):
  dataset = synthetic_dataset(num_train=96, num_test=40)
  config = _stopping_config(config)
  config.num_epochs = 4
  patient = config.copy_and_resolve_references()
  patient.early_stopping.patience = 5
  result = vectorized.train_trials([config, patient], dataset, jax.devices()[:2])
  assert result['stopped_epoch'] == [3, None]
  assert [len(h) for h in result['history']] == [3, 4]
  alone = _run(config, dataset)
  _assert_same(result['history'][0], alone['history'])
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
               jax.tree.map(lambda x: x[0], result['state'].params), alone['state'].params)
  assert result['early_stopping'][0]['best_epoch'] == 1


def test_best_checkpoint_is_kept_beside_the_latest(config, tmp_path):
  dataset = synthetic_dataset(num_train=96, num_test=40)
  config.num_epochs = 4
  config.checkpoint.keep = 1
  config.data.validation_split = 16
  config.early_stopping.monitor = 'validation_loss'
  config.early_stopping.mode = 'max'
  config.early_stopping.patience = 10
  result = _run(config, dataset, workdir=tmp_path)
  steps_per_epoch = result['history'][0]['step']
  checkpoints = checkpointing.Checkpointer(str(tmp_path), read_only=True,
                                           best=('validation_loss', 'max'))
  try:
    # The latest (epoch 4) and the best by the highest validation loss (epoch 1).
    assert checkpoints.steps() == [steps_per_epoch, 4 * steps_per_epoch]
    assert checkpoints.best_step() == steps_per_epoch
  finally:
    checkpoints.close()


def test_step_flag_accepts_numbers_and_best():
  assert cli.checkpoint_step(None) is None
  assert cli.checkpoint_step('best') == 'best'
  assert cli.checkpoint_step('120') == 120
  for bad in ('latest', '-3', '1.5'):
    with pytest.raises(errors.UserError, match=f"--step='{bad}' is not a checkpoint step"):
      cli.checkpoint_step(bad)


def test_hook_metrics_reach_metrics_jsonl_and_tensorboard(config, tmp_path):
  config.num_epochs = 2
  config.hooks = ('per_layer_weight_norms',)

  def weight_count(record, state):
    return {'hook/epoch_squared': record['epoch'] ** 2,
            'hook/params': sum(x.size for x in jax.tree.leaves(state.params))}

  result = _run(config, synthetic_dataset(), workdir=tmp_path, hooks=[weight_count])
  records = run_files.read_metrics(tmp_path)
  assert [r['hook/epoch_squared'] for r in records] == [1.0, 4.0]
  assert records[-1]['hook/params'] == 101_770
  kernel = np.asarray(result['state'].params['Dense_0']['kernel'], np.float64)
  bias = np.asarray(result['state'].params['Dense_0']['bias'], np.float64)
  np.testing.assert_allclose(records[-1]['weight_norm/Dense_0'],
                             np.sqrt((kernel ** 2).sum() + (bias ** 2).sum()), rtol=1e-6)
  scalars = {(v.tag, e.step): v.simple_value for e in read_events(str(tmp_path))
             for v in e.summary.value if v.HasField('simple_value')}
  step = records[-1]['step']
  assert scalars[('hook/epoch_squared', step)] == 4.0
  np.testing.assert_allclose(scalars[('weight_norm/Dense_1', step)],
                             records[-1]['weight_norm/Dense_1'], rtol=1e-6)


def test_bad_hooks_are_one_line_errors(config):
  config.hooks = ('no_such_hook',)
  with pytest.raises(config_checks.ConfigError, match="config.hooks: 'no_such_hook' is neither"):
    config_checks.validate_config(config)
  config.hooks = ('os.path:no_such_function',)
  with pytest.raises(config_checks.ConfigError, match="has no function 'no_such_function'"):
    config_checks.validate_config(config)
  config.hooks = ('os.path:basename',)
  config_checks.validate_config(config)
  with pytest.raises(hooks.HookError, match="returned 'test_loss', which the epoch record"):
    hooks.run_hooks([lambda record, state: {'test_loss': 1.0}], {'test_loss': 0.5}, None)
  with pytest.raises(hooks.HookError, match='must be scalars'):
    hooks.run_hooks([lambda record, state: {'x': [1, 2]}], {}, None)


def test_sweep_records_stopped_trials_and_skips_them_on_resume(config, tmp_path):
  dataset = synthetic_dataset(num_train=96, num_test=40)
  config = _stopping_config(config)
  config.num_epochs = 4
  sweep_path = tmp_path / 'patience.py'
  sweep_path.write_text("def get_sweep(hyper):\n"
                        "  return hyper.sweep('early_stopping.patience', [2, 5])\n")
  log = []
  rows = runner.run_sweep(config, str(sweep_path), str(tmp_path / 'run'),
                          devices=jax.devices()[:1], dataset=dataset, log=log.append)
  assert [r['status'] for r in rows] == ['stopped', 'done']
  assert '1 stopped early' in '\n'.join(log)
  stopped_dir = results.trial_dir(str(tmp_path / 'run'), rows[0]['trial'])
  with open(f'{stopped_dir}/status') as f:
    assert f.read().startswith(
        'stopped\nearly stopping after epoch 3: validation_loss did not improve')
  with open(f'{stopped_dir}/summary.json') as f:
    summary = json.load(f)
  assert summary['epoch'] == 1 and summary['early_stopping']['stopped_epoch'] == 3
  log.clear()
  runner.run_sweep(config, str(sweep_path), str(tmp_path / 'run'), devices=jax.devices()[:1],
                   dataset=dataset, log=log.append)
  assert '2 already finished, 0 to train' in log[0]


def test_a_trial_that_restores_its_best_weights_reports_that_epoch(config):
  records = [{'epoch': e, 'test_loss': loss, 'test_accuracy': acc}
             for e, loss, acc in ((1, 0.5, 0.80), (2, 0.3, 0.90), (3, 0.4, 0.85))]
  config.early_stopping.monitor = 'test_loss'
  assert results.final_record(config, records)['epoch'] == 3  # The weights it ends with.
  config.early_stopping.restore_best_weights = True
  assert results.final_record(config, records)['epoch'] == 2
  config.early_stopping.monitor = 'off'
  assert results.final_record(config, records)['epoch'] == 3
