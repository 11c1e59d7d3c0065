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

from mlp_mnist import early_stopping
from mlp_mnist import train
from mlp_mnist.records import checkpointing
from mlp_mnist.records import workdirs
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
