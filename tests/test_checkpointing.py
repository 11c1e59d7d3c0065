"""Checkpoints and resuming: a killed run resumes to the same result; wrong and damaged workdirs."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mlp_mnist import train
from mlp_mnist.records import checkpointing
from mlp_mnist.records import provenance
from mlp_mnist.records import run_files
from mlp_mnist.records import workdirs

from conftest import REPO, synthetic_dataset, write_dataset_cache

# Dropout and a warmup-cosine schedule: a resume must restore the step that keys both.
OVERRIDES = {'num_epochs': 5, 'model.dropout_rate': 0.2, 'optimizer.schedule': 'warmup_cosine',
             'optimizer.warmup_epochs': 1.0, 'eval_batch_size': 40}
NUM_DEVICES = 2
STEPS_PER_EPOCH = 8  # 256 examples in batches of 32.

# Trains like `_run` below in a separate process; its log pauses on the line of epoch PAUSE, after
# that epoch's metrics are written and before its checkpoint is saved, so the test can kill it there.
DRIVER = '''
import json, sys, time
sys.path[:0] = [{tests!r}, {configs!r}]
import conftest, default, jax
from mlp_mnist import train
config = default.get_config()
config.update_from_flattened_dict(json.loads({overrides!r}))
pause = {pause}

def log(line):
  print(line, flush=True)
  if pause and line.startswith(f'epoch {{pause:3d}}'):
    time.sleep(300)

train.train_and_evaluate(config, {workdir!r}, devices=jax.devices()[:{devices}],
                         dataset=conftest.synthetic_dataset(), log=log)
print('TensorFlow imported:', 'tensorflow' in sys.modules)
'''


def _config(config, **overrides):
  config.update_from_flattened_dict({**OVERRIDES, **overrides})
  return config


def _run(config, workdir, log=lambda _: None, **kwargs):
  return train.train_and_evaluate(config, str(workdir) if workdir else None,
                                  devices=jax.devices()[:NUM_DEVICES],
                                  dataset=synthetic_dataset(), log=log, **kwargs)


def _driver(workdir, pause):
  code = DRIVER.format(tests=os.path.join(REPO, 'tests'), configs=os.path.join(REPO, 'configs'),
                       overrides=json.dumps(OVERRIDES), pause=pause, workdir=str(workdir),
                       devices=NUM_DEVICES)
  return subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, cwd=REPO)


def _assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(x, y)


def _steps(workdir):
  checkpoints = checkpointing.Checkpointer(str(workdir), read_only=True)
  try:
    return checkpoints.steps()
  finally:
    checkpoints.close()


def _epochs_written(workdir):
  try:
    return [r['epoch'] for r in run_files.read_metrics(str(workdir))]
  except (OSError, ValueError):  # Not there yet, or being rewritten.
    return []


def _final_state(workdir, like):
  checkpoints = checkpointing.Checkpointer(str(workdir), read_only=True)
  try:
    return checkpoints.restore(like)
  finally:
    checkpoints.close()


def test_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(config, tmp_path):
  reference = _run(_config(config), tmp_path / 'reference')
  workdir = tmp_path / 'killed'
  process = _driver(workdir, pause=3)
  try:
    deadline = time.time() + 120
    epoch_2 = checkpointing.checkpoint_dir(str(workdir)) / str(2 * STEPS_PER_EPOCH)
    while not (epoch_2.exists() and _epochs_written(workdir) == [1, 2, 3]):
      assert process.poll() is None, process.stdout.read()
      assert time.time() < deadline, 'the training process did not reach epoch 3 in time'
      time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
    process.stdout.close()
  assert process.returncode == -signal.SIGKILL
  # Killed after epoch 3's metrics, before its checkpoint: the resume must drop that record.
  assert [r['epoch'] for r in run_files.read_metrics(str(workdir))] == [1, 2, 3]
  assert _steps(workdir) == [8, 16]

  process = _driver(workdir, pause=0)
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 0, output
  assert 'Resumed from the checkpoint at step 16 (epoch 2)' in output
  assert 'epoch   1' not in output and 'epoch   3' in output
  # Checkpoints, TensorBoard events and plots leave TensorFlow out of a run.
  assert 'TensorFlow imported: False' in output

  records = run_files.read_metrics(str(workdir))
  assert [run_files.without_timing(r) for r in records] == [
      run_files.without_timing(r) for r in reference['history']]
  state, step, run = _final_state(workdir, reference['state'])
  assert step == 5 * STEPS_PER_EPOCH and run['epoch'] == 5
  _assert_same_params(state, reference['state'])
  assert [p['resumed_from_step'] for p in provenance.read(str(workdir))] == [None, 16]


def test_checkpoints_every_n_epochs_keep_the_last_k_and_always_the_final_one(config, tmp_path):
  _config(config, **{'checkpoint.every_epochs': 2, 'checkpoint.keep': 2})
  _run(config, tmp_path)
  steps = _steps(tmp_path)
  assert steps == [4 * STEPS_PER_EPOCH, 5 * STEPS_PER_EPOCH]


def test_no_checkpoints_when_turned_off(config, tmp_path):
  _config(config, **{'checkpoint.every_epochs': 0, 'num_epochs': 2})
  _run(config, tmp_path)
  assert _steps(tmp_path) == []


def test_completed_run_is_not_trained_again_even_with_other_neutral_settings(config, tmp_path):
  _config(config, num_epochs=2)
  first = _run(config, tmp_path)
  # Data location, logging and checkpoint cadence do not change results.
  config.data.cache_dir = '/elsewhere'
  config.logging.log_every_epochs = 2
  config.checkpoint.keep = 5
  lines = []
  again = _run(config, tmp_path, log=lines.append)
  assert any('nothing to train' in line for line in lines)
  assert again['history'] == first['history']
  _assert_same_params(again['state'], first['state'])


# Reads still in flight when a restore fails must not report to orbax's closed event loop.
QUIET = pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')


@QUIET
@pytest.mark.parametrize('damage', ['missing_files', 'garbage', 'unfinished_save'])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(config, tmp_path, damage):
  _config(config, num_epochs=3)
  reference = _run(config, tmp_path)
  newest = tmp_path / checkpointing.CHECKPOINTS_DIR / str(3 * STEPS_PER_EPOCH)
  if damage == 'missing_files':
    for path in (newest / 'state').rglob('*'):
      if path.is_file() and 'manifest' in path.name:
        path.unlink()
  elif damage == 'garbage':
    for path in (newest / 'state').rglob('*'):
      if path.is_file():
        path.write_bytes(b'\0garbage' * 10)
  else:  # A save that a killed process left in orbax's temporary directory.
    newest.rename(newest.parent / f'{newest.name}.orbax-checkpoint-tmp')
  lines = []
  resumed = _run(config, tmp_path, log=lines.append)
  assert any('Resumed from the checkpoint at step 16 (epoch 2)' in line for line in lines)
  if damage != 'unfinished_save':
    warning = next(line for line in lines if line.startswith('warning: checkpoint 24'))
    assert 'cannot be restored' in warning and 'corrupt_checkpoints' in warning
    assert len(os.listdir(tmp_path / checkpointing.CORRUPT_DIR)) == 1
  _assert_same_params(resumed['state'], reference['state'])
  assert [run_files.without_timing(r) for r in run_files.read_metrics(str(tmp_path))] == [
      run_files.without_timing(r) for r in reference['history']]
  assert _steps(tmp_path) == [8, 16, 24]


@QUIET
def test_every_checkpoint_damaged_starts_over_with_warnings(config, tmp_path):
  _config(config, num_epochs=2)
  reference = _run(config, tmp_path)
  for path in (tmp_path / checkpointing.CHECKPOINTS_DIR).glob('*/state/**/manifest*'):
    path.unlink()
  lines = []
  again = _run(config, tmp_path, log=lines.append)
  assert sum(line.startswith('warning: checkpoint') for line in lines) == 2
  assert not any('Resumed' in line for line in lines)
  _assert_same_params(again['state'], reference['state'])


def test_different_config_is_an_error_unless_restart(config, tmp_path):
  _config(config, num_epochs=2)
  _run(config, tmp_path)
  config.optimizer.learning_rate = 3e-3
  config.seed = 4
  with pytest.raises(workdirs.WorkdirError) as e:
    _run(config, tmp_path)
  message = str(e.value)
  assert 'optimizer.learning_rate: 0.001 -> 0.003' in message and 'seed: 0 -> 4' in message
  assert '--restart' in message

  lines = []
  restarted = _run(config, tmp_path, log=lines.append, restart=True)
  assert not any('Resumed' in line for line in lines)
  assert [r['epoch'] for r in run_files.read_metrics(str(tmp_path))] == [1, 2]
  assert run_files.read_metrics(str(tmp_path))[-1]['test_loss'] == restarted['history'][-1][
      'test_loss']
  assert len(provenance.read(str(tmp_path))) == 1
  assert run_files.read_config(str(tmp_path))['seed'] == 4


def test_train_script_resumes_and_rejects_a_different_config(tmp_path):
  write_dataset_cache(tmp_path / 'cache', synthetic_dataset())
  command = [sys.executable, os.path.join(REPO, 'scripts', 'train.py'),
             f'--config={os.path.join(REPO, "configs", "default.py")}',
             f'--config.data.cache_dir={tmp_path / "cache"}', f'--workdir={tmp_path / "run"}',
             '--config.num_epochs=2', '--jax_cache_dir=']

  def run(*extra):
    return subprocess.run(command + list(extra), capture_output=True, text=True, timeout=120,
                          cwd=REPO)

  first = run()
  assert first.returncode == 0, first.stderr
  assert 'Final test accuracy' in first.stdout and '\r' not in first.stdout
  assert 'I1' not in first.stderr  # No INFO logging from orbax.
  mismatch = run('--config.optimizer.learning_rate=0.01')
  assert mismatch.returncode == 2
  assert mismatch.stderr.startswith(f'error: workdir {tmp_path / "run"} holds a run with a '
                                    'different config (optimizer.learning_rate: 0.001 -> 0.01)')
  assert 'Traceback' not in mismatch.stderr
  again = run()
  assert again.returncode == 0 and 'nothing to train' in again.stdout, again.stderr
