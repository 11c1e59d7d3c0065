"""The best epoch: one definition for early stopping, the restored weights and the best checkpoint,
and never chosen on the test set."""

import contextlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mlp_mnist import config_checks
from mlp_mnist import early_stopping
from mlp_mnist import errors
from mlp_mnist import train
from mlp_mnist.records import checkpointing
from mlp_mnist.records import workdirs
from mlp_mnist.sweeps import runner
from mlp_mnist.sweeps import sweep_files
from mlp_mnist.tools import evaluation

from conftest import REPO, synthetic_dataset


def _history(metric, values):
  return [{'epoch': e + 1, 'step': 10 * (e + 1), metric: v} for e, v in enumerate(values)]


@pytest.mark.parametrize('values,mode,min_delta,best_epoch', [
    ([0.5, 0.5, 0.6], 'min', 0.0, 1),  # Of equal values, the first (Keras).
    ([0.5, 0.7, 0.7], 'max', 0.0, 2),
    ([1.0, 0.8, 0.79, 0.85], 'min', 0.05, 2),  # 0.79 is no improvement by more than 0.05.
    ([float('nan'), 0.9, 0.9], 'min', 0.0, 2),
])
def test_best_epoch_and_best_weights_agree(config, values, mode, min_delta, best_epoch):
  config.early_stopping.update(monitor='test_loss', mode=mode, min_delta=min_delta, patience=5,
                               restore_best_weights=True)
  stopper = early_stopping.EarlyStopping(config)
  history = _history('test_loss', values)
  assert stopper.replay(history).best_epoch == best_epoch
  assert stopper.best_record(history)['epoch'] == best_epoch
  assert early_stopping.best_record(history, 'test_loss', mode, min_delta)['epoch'] == best_epoch


def test_best_checkpoint_follows_the_same_rule_on_ties(tmp_path):
  """Validation losses [0.5, 0.5, 0.6]: the best checkpoint is epoch 1's, as best_epoch says."""
  state = {'w': np.arange(3, dtype=np.float32)}
  history = _history('validation_loss', [0.5, 0.5, 0.6])
  rule = early_stopping.BestRule('validation_loss', 'min')
  with contextlib.closing(
      checkpointing.Checkpointer(str(tmp_path), keep=1, best=rule)) as checkpoints:
    for epoch in (1, 2, 3):
      checkpoints.save(10 * epoch, state, epoch, history[:epoch])
    checkpoints.wait()
    assert checkpoints.steps() == [10, 30]  # The latest and the best.
    assert checkpoints.best_step() == 10
  with contextlib.closing(
      checkpointing.Checkpointer(str(tmp_path), read_only=True, best=rule)) as checkpoints:
    assert checkpoints.best_step() == 10


def test_without_a_validation_split_nothing_is_chosen_on_the_test_set(config, tmp_path):
  config.num_epochs = 2
  config.model.hidden_sizes = (8,)
  dataset = synthetic_dataset(num_train=64, num_test=32)
  train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1], dataset=dataset,
                           log=lambda _: None)
  assert early_stopping.best_checkpoint_metric(config) is None
  with pytest.raises(checkpointing.CheckpointError,
                     match='has no best checkpoint: it holds out no validation split') as raised:
    evaluation.load_run(str(tmp_path), 'best', devices=jax.devices()[:1])
  assert '\n' not in str(raised.value)
  # The latest checkpoint still evaluates.
  assert evaluation.load_run(str(tmp_path), None, devices=jax.devices()[:1])[2] == 4
  script = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'evaluate.py'), f'--workdir={tmp_path}',
       '--step=best'], capture_output=True, text=True, timeout=120, cwd=REPO)
  assert script.returncode == 2, script.stderr
  assert script.stderr.startswith('error: ') and script.stderr.count('\n') == 1, script.stderr
  assert 'hold' in script.stderr and 'validation_split' in script.stderr


def test_a_validation_split_keeps_the_best_checkpoint_by_validation_loss(config, tmp_path):
  config.num_epochs = 3
  config.model.hidden_sizes = (8,)
  config.checkpoint.keep = 1
  config.data.validation_split = 16
  dataset = synthetic_dataset(num_train=80, num_test=32)
  result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1],
                                    dataset=dataset, log=lambda _: None)
  best = early_stopping.best_record(result['history'], 'validation_loss', 'min')
  _, _, step, _ = evaluation.load_run(str(tmp_path), 'best', devices=jax.devices()[:1])
  assert step == best['step']


def test_logging_cadence_is_result_neutral_only_when_nothing_chooses_on_logged_epochs(config):
  """Early stopping and the best checkpoint see only logged epochs: with either, another
  `logging.log_every_epochs` on resume would stop or choose elsewhere, so it is refused."""
  def differences(config):
    saved = json.loads(config.to_json_best_effort())
    other = config.copy_and_resolve_references()
    other.logging.log_every_epochs = 2
    return workdirs.config_differences(saved, other)

  assert differences(config) == []
  config.data.validation_split = 10
  assert differences(config) == ['logging.log_every_epochs: 1 -> 2']


@pytest.mark.parametrize('monitor,split', [('test_loss', 0), ('test_accuracy', 0),
                                           ('test_loss', 16)])
def test_a_monitor_on_the_test_set_is_a_one_line_config_error(config, monitor, split):
  config.early_stopping.monitor = monitor
  config.data.validation_split = split
  with pytest.raises(config_checks.ChoiceOnTestSetError) as raised:
    config_checks.validate_config(config)
  message = str(raised.value)
  assert '\n' not in message and 'on the test set' in message
  assert f"monitor 'validation_{monitor[5:]}'" in message
  assert ('--config.data.validation_split' in message) == (not split)
  assert isinstance(raised.value, errors.UserError)
  config_checks.validate_config(config, recorded=True)  # An earlier run's config is still read.


def _train_on_the_test_set_as_earlier_versions_did(config, workdir, monkeypatch, dataset):
  config.num_epochs = 2
  config.model.hidden_sizes = (8,)
  config.early_stopping.monitor = 'test_loss'
  config.early_stopping.patience = 5
  with monkeypatch.context() as earlier:
    earlier.setattr(config_checks, 'check_no_choice_on_the_test_set', lambda config: None)
    train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1], dataset=dataset,
                             log=lambda _: None)


def test_a_run_recorded_with_a_test_monitor_evaluates_and_refuses_to_resume(config, tmp_path,
                                                                            monkeypatch):
  dataset = synthetic_dataset(num_train=64, num_test=32)
  _train_on_the_test_set_as_earlier_versions_did(config, tmp_path, monkeypatch, dataset)
  files = sorted(p.name for p in tmp_path.rglob('*'))
  assert evaluation.load_run(str(tmp_path), None, devices=jax.devices()[:1])[2] == 4
  with pytest.raises(checkpointing.CheckpointError,
                     match='chosen by test_loss, on the test set; give a --step of 2, 4') as raised:
    evaluation.load_run(str(tmp_path), 'best', devices=jax.devices()[:1])
  assert '\n' not in str(raised.value)
  with pytest.raises(config_checks.ChoiceOnTestSetError, match='--restart'):
    train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1], dataset=dataset,
                             log=lambda _: None)
  assert sorted(p.name for p in tmp_path.rglob('*')) == files


def test_a_sweep_refuses_a_test_monitor_and_reports_one_recorded_with_it(config, tmp_path,
                                                                        monkeypatch):
  dataset = synthetic_dataset(num_train=64, num_test=32)
  config.num_epochs = 1
  config.model.hidden_sizes = (8,)
  sweep_path = tmp_path / 'seeds.py'
  sweep_path.write_text("def get_sweep(hyper):\n  return hyper.sweep('seed', [0, 1])\n")
  config.early_stopping.monitor = 'test_loss'
  with pytest.raises(sweep_files.SweepError, match=r"trial 0 \(seed=0\): config.early_stopping."
                     r"monitor='test_loss' would choose on the test set"):
    runner.run_sweep(config, str(sweep_path), str(tmp_path / 'new'), devices=jax.devices()[:1],
                     dataset=dataset, log=lambda _: None)
  assert not (tmp_path / 'new').exists()
  with monkeypatch.context() as earlier:
    earlier.setattr(config_checks, 'check_no_choice_on_the_test_set', lambda config: None)
    trained = runner.run_sweep(config, str(sweep_path), str(tmp_path / 'run'),
                               devices=jax.devices()[:1], dataset=dataset, log=lambda _: None)
  reported = runner.run_sweep(config, str(sweep_path), str(tmp_path / 'run'),
                              devices=jax.devices()[:1], report_only=True, log=lambda _: None)
  assert [r['status'] for r in reported] == [r['status'] for r in trained] == ['done', 'done']
