"""Preemption: SIGTERM or SIGINT sent to a training or sweep script finishes the epoch under way,
saves a checkpoint, prints one line and exits with status 3; rerunning resumes exactly."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mlp_mnist import preemption
from mlp_mnist import train
from mlp_mnist.records import checkpointing
from mlp_mnist.records import run_files
from mlp_mnist.sweeps import results

import default
from conftest import REPO, synthetic_dataset, write_dataset_cache

NUM_EPOCHS = 40


def _config():
  config = default.get_config()
  config.num_epochs = NUM_EPOCHS
  config.model.dropout_rate = 0.2  # A resume must restore the step that keys dropout.
  config.eval_batch_size = 40
  config.checkpoint.every_epochs = 7  # The signal's checkpoint is not one of the cadence's.
  return config


def _epochs(directory):
  try:
    return len(run_files.read_metrics(str(directory)))
  except (OSError, ValueError):
    return 0


ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_NUM_CPU_DEVICES': '2'}


def _interrupt(command, directory, sig):
  """Starts `command`, sends `sig` once `directory` holds two epochs' records, waits for it."""
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO, env=ENV)
  try:
    deadline = time.time() + 120
    while _epochs(directory) < 2:
      assert process.poll() is None, process.communicate()
      assert time.time() < deadline, 'training did not reach epoch 2 in time'
      time.sleep(0.05)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  return process.returncode, out, err


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_and_the_rerun_resumes_exactly(tmp_path, sig):
  dataset = synthetic_dataset()
  write_dataset_cache(tmp_path / 'cache', dataset)
  workdir = tmp_path / 'run'
  command = [sys.executable, os.path.join(REPO, 'scripts', 'train.py'),
             f'--config={os.path.join(REPO, "configs", "default.py")}',
             f'--config.data.cache_dir={tmp_path / "cache"}', f'--workdir={workdir}',
             f'--config.num_epochs={NUM_EPOCHS}', '--config.model.dropout_rate=0.2',
             '--config.eval_batch_size=40', '--config.checkpoint.every_epochs=7',
             '--jax_cache_dir=']
  returncode, _, err = _interrupt(command, workdir, sig)
  assert returncode == preemption.EXIT_STATUS, err
  line = err.strip().splitlines()[-1]
  assert line.startswith(f'stopped: {signal.Signals(sig).name} received: stopped after epoch ')
  assert 'rerun the same command to resume' in line and 'Traceback' not in err
  epoch = int(line.split('stopped after epoch ')[1].split()[0])
  assert 2 <= epoch < NUM_EPOCHS
  assert open(workdir / 'status').read().startswith('interrupted\n')
  assert len(run_files.read_metrics(str(workdir))) == epoch
  assert max(_steps(workdir)) == epoch * 8

  resumed = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO,
                           env=ENV)
  assert resumed.returncode == 0, resumed.stderr
  assert f'Resumed from the checkpoint at step {epoch * 8} (epoch {epoch})' in resumed.stdout
  # The uninterrupted run, by the same script (its devices and compiled programs).
  reference = tmp_path / 'reference'
  uninterrupted = subprocess.run([c if not c.startswith('--workdir=') else f'--workdir={reference}'
                                  for c in command], capture_output=True, text=True, timeout=120,
                                 cwd=REPO, env=ENV)
  assert uninterrupted.returncode == 0, uninterrupted.stderr
  assert [run_files.without_timing(r) for r in run_files.read_metrics(str(workdir))] == [
      run_files.without_timing(r) for r in run_files.read_metrics(str(reference))]
  short = _config()
  short.num_epochs = 1
  like = train.train_and_evaluate(short, None, devices=jax.devices()[:2], dataset=dataset,
                                  log=lambda _: None)['state']  # A state as training places it.
  with contextlib.closing(checkpointing.Checkpointer(str(workdir), read_only=True)) as checkpoints:
    state, step, _ = checkpoints.restore(like)
  with contextlib.closing(checkpointing.Checkpointer(str(reference),
                                                   read_only=True)) as checkpoints:
    want, _, _ = checkpoints.restore(like)
  assert step == NUM_EPOCHS * 8
  for x, y in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(want))):
    np.testing.assert_array_equal(x, y)
  assert open(workdir / 'status').read() == 'done\n'


def _steps(workdir):
  with contextlib.closing(checkpointing.Checkpointer(str(workdir), read_only=True)) as checkpoints:
    return checkpoints.steps()


def test_a_signal_stops_a_sweep_which_resumes_exactly(tmp_path):
  dataset = synthetic_dataset(num_train=96, num_test=40)
  write_dataset_cache(tmp_path / 'cache', dataset)
  sweep_path = tmp_path / 'sweep.py'
  sweep_path.write_text("def get_sweep(hyper):\n  return hyper.sweep('seed', [0, 1, 2])\n")
  workdir = tmp_path / 'sweep'
  command = [sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'),
             f'--config={os.path.join(REPO, "configs", "default.py")}', f'--sweep={sweep_path}',
             f'--config.data.cache_dir={tmp_path / "cache"}', f'--workdir={workdir}',
             f'--config.num_epochs={NUM_EPOCHS}', '--config.model.dropout_rate=0.2',
             '--config.eval_batch_size=40', '--config.checkpoint.every_epochs=7',
             '--cpu_devices=1', '--jax_cache_dir=']
  trial = results.trial_dir(str(workdir), 'seed=1')
  returncode, _, err = _interrupt(command, trial, signal.SIGTERM)
  assert returncode == preemption.EXIT_STATUS, err
  line = err.strip().splitlines()[-1]
  assert line.startswith('stopped: SIGTERM received:') and 'Traceback' not in err
  assert results.read_status(trial) == 'interrupted'
  epoch = len(run_files.read_metrics(trial))
  assert 2 <= epoch < NUM_EPOCHS

  resumed = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO,
                           env=ENV)
  assert resumed.returncode == 0, resumed.stderr
  reference = tmp_path / 'reference'  # The uninterrupted sweep, by the same script.
  uninterrupted = subprocess.run([c if not c.startswith('--workdir=') else f'--workdir={reference}'
                                  for c in command], capture_output=True, text=True, timeout=120,
                                 cwd=REPO, env=ENV)
  assert uninterrupted.returncode == 0, uninterrupted.stderr
  for name in ('seed=0', 'seed=1', 'seed=2'):
    got = results.trial_dir(str(workdir), name)
    want = results.trial_dir(str(reference), name)
    assert results.read_status(got) == 'done'
    assert [run_files.without_timing(r) for r in run_files.read_metrics(got)] == [
        run_files.without_timing(r) for r in run_files.read_metrics(want)]
