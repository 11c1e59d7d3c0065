"""Preemption: SIGTERM or SIGINT sent to a training or sweep script finishes the call of steps under
way (without a cadence inside epochs, the epoch), saves a checkpoint, prints one line and exits
with status 3; rerunning resumes exactly. Checkpoints inside epochs (`checkpoint.every_steps`,
`every_minutes`) change no result and resume exactly."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from mlp_mnist import config_checks
from mlp_mnist import driver
from mlp_mnist import preemption
from mlp_mnist import train
from mlp_mnist.devices import parallel
from mlp_mnist.records import checkpointing
from mlp_mnist.records import recorder as recorder_lib
from mlp_mnist.records import run_files
from mlp_mnist.sweeps import results
from mlp_mnist.sweeps import runner
from mlp_mnist.sweeps import sweep_files
from mlp_mnist.sweeps import vectorized
from mlp_mnist.tools import evaluation
from mlp_mnist.tools import prediction

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


def _resume_and_run_uninterrupted(command, reference):
  """Reruns `command` (it resumes), then runs it from scratch in `reference`: the uninterrupted
  run, by the same script (its devices and compiled programs). Returns the resumed run's stdout."""
  resumed = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO,
                           env=ENV)
  assert resumed.returncode == 0, resumed.stderr
  uninterrupted = subprocess.run([c if not c.startswith('--workdir=') else f'--workdir={reference}'
                                  for c in command], capture_output=True, text=True, timeout=120,
                                 cwd=REPO, env=ENV)
  assert uninterrupted.returncode == 0, uninterrupted.stderr
  return resumed.stdout


def _sweep_command(sweep_path, cache_dir, workdir, num_epochs, *flags):
  """scripts/sweep.py on the default config with dropout, one CPU device, no compilation cache."""
  return [sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'),
          f'--config={os.path.join(REPO, "configs", "default.py")}', f'--sweep={sweep_path}',
          f'--config.data.cache_dir={cache_dir}', f'--workdir={workdir}',
          f'--config.num_epochs={num_epochs}', '--config.model.dropout_rate=0.2',
          '--config.eval_batch_size=40', *flags, '--cpu_devices=1', '--jax_cache_dir=']


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

  reference = tmp_path / 'reference'
  resumed = _resume_and_run_uninterrupted(command, reference)
  assert f'Resumed from the checkpoint at step {epoch * 8} (epoch {epoch})' in resumed
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
  command = _sweep_command(sweep_path, tmp_path / 'cache', workdir, NUM_EPOCHS,
                           '--config.checkpoint.every_epochs=7')
  trial = results.trial_dir(str(workdir), 'seed=1')
  returncode, _, err = _interrupt(command, trial, signal.SIGTERM)
  assert returncode == preemption.EXIT_STATUS, err
  line = err.strip().splitlines()[-1]
  assert line.startswith('stopped: SIGTERM received:') and 'Traceback' not in err
  assert results.read_status(trial) == 'interrupted'
  epoch = len(run_files.read_metrics(trial))
  assert 2 <= epoch < NUM_EPOCHS

  reference = tmp_path / 'reference'
  _resume_and_run_uninterrupted(command, reference)
  for name in ('seed=0', 'seed=1', 'seed=2'):
    got = results.trial_dir(str(workdir), name)
    want = results.trial_dir(str(reference), name)
    assert results.read_status(got) == 'done'
    assert [run_files.without_timing(r) for r in run_files.read_metrics(got)] == [
        run_files.without_timing(r) for r in run_files.read_metrics(want)]


# Checkpoints inside epochs: 8 steps per epoch (256 examples in batches of 32), dropout on.
STEPS = 8


def _inside_config(**checkpoint):
  config = _config()
  config.num_epochs = 3
  config.checkpoint.every_epochs = 1
  config.checkpoint.keep = 20
  config.checkpoint.update(checkpoint)
  return config


def _train(config, workdir, dataset, **kwargs):
  return train.train_and_evaluate(config, str(workdir) if workdir else None,
                                  devices=jax.devices()[:2], dataset=dataset, log=lambda _: None,
                                  **kwargs)


def _assert_same_run(got, want):
  assert [run_files.without_timing(r) for r in got['history']] == [
      run_files.without_timing(r) for r in want['history']]
  for x, y in zip(jax.tree.leaves(jax.device_get(got['state'])),
                  jax.tree.leaves(jax.device_get(want['state']))):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope='module')
def uninterrupted():
  """The run every cadence and every resume must reproduce bit for bit (no workdir)."""
  return _train(_inside_config(), None, synthetic_dataset())


def test_the_cadence_inside_epochs_is_result_neutral_and_saves_where_asked(
    tmp_path, uninterrupted):
  result = _train(_inside_config(every_steps=3), tmp_path, synthetic_dataset())
  _assert_same_run(result, uninterrupted)
  # Multiples of 3, each at the first step that leaves no training call of one step (9 -> 10;
  # 15 -> the epoch's end), and every epoch's end (every_epochs=1).
  assert _steps(tmp_path) == [3, 6, 8, 10, 12, 16, 18, 21, 24]


def test_save_points_end_calls_and_leave_no_call_of_one_step():
  indices = np.arange(2 * 8 * 4).reshape(2, 8, 4)
  lengths = lambda *args, **kwargs: [c.shape[1] for c in train.split_steps(indices, *args,
                                                                           **kwargs)]
  assert lengths(None, save_points=(3, 6)) == [3, 3, 2]
  assert lengths(None, save_points=(1, 4, 7)) == [2, 2, 4]  # 1 -> 2; 7 -> the end.
  assert lengths(3, save_points=(4,)) == [4, 2, 2]  # The call edge at 3 would leave one step.
  assert lengths(None, cuts=(2, 5), save_points=(3, 6)) == [2, 3, 3]  # 3 -> 5, 6 -> the end.
  chunks = train.split_steps(indices, 2, save_points=(5,))
  np.testing.assert_array_equal(np.concatenate(chunks, axis=1), indices)


def test_every_minutes_saves_between_calls_inside_epochs(tmp_path, monkeypatch, uninterrupted):
  monkeypatch.setattr(driver, 'TIMED_CALL_STEPS', 3)  # Calls of 3, 3 and 2 steps.
  result = _train(_inside_config(every_minutes=1e-9, every_epochs=0), tmp_path,
                  synthetic_dataset())
  _assert_same_run(result, uninterrupted)
  assert _steps(tmp_path) == [3, 6, 8, 11, 14, 16, 19, 22, 24]


def test_every_minutes_waits_for_its_time():
  now = [0.0]
  config = _inside_config(every_minutes=2.0)
  trial = driver.Trial(config, recorder_lib.Recorder(None, config, jax.devices()[:1], [], None))
  cadence = driver.MidEpochCheckpoints([trial], STEPS, preemption.StopRequest(), 0,
                                       clock=lambda: now[0])
  now[0] = 119.0
  assert not cadence.due(5)
  now[0] = 120.0
  assert cadence.due(5)
  cadence.saved(5)
  assert not cadence.due(6)
  stop = preemption.StopRequest()
  stop.name = 'SIGTERM'
  cadence.stop = stop
  assert cadence.due(6) and not cadence.due(6, signal=False)


def _signal_after_call(monkeypatch, call, sig=signal.SIGTERM, program=train.Trainer,
                       method='train_steps'):
  """Sends `sig` to this process when training call number `call` (from 1) returns (a single
  run's; a sweep group's: `program=vectorized.GroupProgram, method='_train_call'`)."""
  calls = [0]
  train_steps = getattr(program, method)

  def counted(self, *args):
    result = train_steps(self, *args)
    calls[0] += 1
    if calls[0] == call:
      signal.raise_signal(sig)
    return result
  monkeypatch.setattr(program, method, counted)


def test_a_signal_inside_an_epoch_saves_there_and_the_resumed_run_is_exact(
    tmp_path, monkeypatch, uninterrupted):
  dataset = synthetic_dataset()
  config = _inside_config(every_steps=3, every_epochs=0)
  # Epoch 1's calls end at steps 3, 6, 8; epoch 2's at 10, 12, 16: the signal comes during the
  # fifth call, and the run stops after it, at step 12, inside epoch 2.
  _signal_after_call(monkeypatch, 5)
  with pytest.raises(preemption.Preempted) as stopped:
    _train(config, tmp_path, dataset)
  assert str(stopped.value) == (
      f'SIGTERM received: stopped inside epoch 2 of 3, after its step 4 of {STEPS}; saved the '
      f'checkpoint of step 12 in {tmp_path / "checkpoints"}; rerun the same command to resume.')
  assert open(tmp_path / 'status').read().startswith('interrupted\n')
  assert 'step 12 (step 4 of epoch 2)' in open(tmp_path / 'status').read()
  assert len(run_files.read_metrics(str(tmp_path))) == 1
  assert _steps(tmp_path) == [3, 6, 10, 12]
  monkeypatch.undo()

  logged = []
  config.checkpoint.every_steps = 5  # Result-neutral: a resume may change it.
  resumed = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:2],
                                     dataset=dataset, log=logged.append)
  assert any(f'Resumed from the checkpoint at step 12 (step 4 of {STEPS} in epoch 2)' in line
             for line in logged)
  assert _steps(tmp_path) == [3, 6, 10, 12, 16, 20, 24]  # 15 would leave a call of one step.
  _assert_same_run(resumed, uninterrupted)
  assert [run_files.without_timing(r) for r in run_files.read_metrics(str(tmp_path))] == [
      run_files.without_timing(r) for r in uninterrupted['history']]
  assert open(tmp_path / 'status').read() == 'done\n'


def test_a_signal_with_no_cadence_waits_for_the_epochs_end(tmp_path, monkeypatch):
  """One training call per epoch (the default): the signal is honoured when it ends."""
  _signal_after_call(monkeypatch, 1, signal.SIGINT)
  with pytest.raises(preemption.Preempted, match='SIGINT received: stopped after epoch 1 of 3'):
    _train(_inside_config(), tmp_path, synthetic_dataset())
  assert _steps(tmp_path) == [STEPS]


def test_a_checkpoint_inside_an_epoch_is_never_the_best(tmp_path):
  """With a validation split, the best checkpoint is an epoch's end; `--step best`, `--step N`
  of a step inside an epoch, and the latest all evaluate."""
  dataset = synthetic_dataset(num_train=320)  # 64 held out: 8 steps per epoch again.
  config = _inside_config(every_steps=3, keep=1)
  config.data.validation_split = 64
  config.early_stopping.monitor = 'off'
  result = _train(config, tmp_path, dataset)
  best = min(result['history'], key=lambda r: r['validation_loss'])
  steps = _steps(tmp_path)
  assert steps == sorted({best['step'], 24})  # keep=1: the latest and the best.
  with contextlib.closing(driver.open_checkpointer(str(tmp_path), config)) as checkpoints:
    assert checkpoints.best_step() == best['step']
  report = evaluation.evaluate_run(str(tmp_path), 'best', devices=jax.devices()[:2],
                                   dataset=dataset, plots_dir=str(tmp_path / 'plots'))
  assert (report['step'], report['epoch']) == (best['step'], best['epoch'])
  assert report['test_loss'] == best['test_loss']

  monkey_dir = tmp_path / 'stopped'
  with pytest.MonkeyPatch.context() as monkeypatch:
    _signal_after_call(monkeypatch, 5)
    with pytest.raises(preemption.Preempted):
      _train(config, monkey_dir, dataset)
  report = evaluation.evaluate_run(str(monkey_dir), 12, devices=jax.devices()[:2],
                                   dataset=dataset, plots_dir=str(tmp_path / 'plots'))
  assert (report['step'], report['epoch'], report['training_reported']) == (12, 2, None)
  assert evaluation.load_run(str(monkey_dir), devices=jax.devices()[:2])[2] == 12
  image = tmp_path / 'digit.png'
  Image.fromarray(dataset.test[0][0]).save(image)
  [predicted] = prediction.predict_files(str(monkey_dir), [str(image)], devices=jax.devices()[:2])
  assert 'error' not in predicted and 0 <= predicted['label'] < 10
  with contextlib.closing(driver.open_checkpointer(str(monkey_dir), config)) as checkpoints:
    assert checkpoints.best_step() == STEPS  # Epoch 1's end, not step 12.


@pytest.mark.parametrize('key,value,message', [
    ('every_steps', -1, 'config.checkpoint.every_steps=-1 is invalid'),
    ('every_minutes', -0.5, 'config.checkpoint.every_minutes=-0.5 is invalid'),
    ('every_minutes', float('inf'), 'config.checkpoint.every_minutes=inf is not a finite number'),
])
def test_bad_cadences_are_one_line_errors(key, value, message):
  config = _inside_config()
  config.checkpoint[key] = value
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.validate_config(config)
  assert message in str(error.value) and '\n' not in str(error.value)


def test_restoring_best_weights_needs_epoch_checkpoints_beside_a_cadence_inside_epochs():
  config = _inside_config(every_steps=3, every_epochs=0)
  config.early_stopping.restore_best_weights = True
  config.data.validation_split = 64
  with pytest.raises(config_checks.ConfigError, match='needs checkpoint.every_epochs'):
    config_checks.validate_config(config)
  config.checkpoint.every_epochs = 1
  config_checks.validate_config(config)


def test_multiprocess_sweeps_take_checkpoints_inside_epochs(monkeypatch):
  """Their trials keep checkpoints (tests/test_multiprocess.py), so they take the cadence too."""
  config = _inside_config(every_steps=3, every_minutes=5.0)
  monkeypatch.setattr(parallel, 'is_multiprocess', lambda: True)
  trial, = sweep_files.expand(config, [{'seed': 1}])
  assert (trial.config.checkpoint.every_steps, trial.config.checkpoint.every_minutes) == (3, 5.0)


# A sweep of three trials of one program on two devices, 8 steps per epoch, dropout on.
SWEEP_FILE = "def get_sweep(hyper):\n  return hyper.sweep('seed', [0, 1, 2])\n"
TRIALS = ('seed=0', 'seed=1', 'seed=2')


def _sweep(config, workdir, dataset=None):
  sweep_path = workdir.parent / f'{workdir.name}.sweep.py'
  sweep_path.write_text(SWEEP_FILE)
  return runner.run_sweep(config, str(sweep_path), str(workdir), devices=jax.devices()[:2],
                          dataset=dataset or synthetic_dataset(), log=lambda _: None)


def _trial_result(workdir, name, config):
  """A trial's records (without timings) and the parameters of its latest checkpoint."""
  directory = results.trial_dir(str(workdir), name)
  template = vectorized.init_trial_states([config], STEPS, (28, 28, 1), 10)
  with contextlib.closing(driver.open_checkpointer(directory, config)) as saved:
    state, _, _ = saved.restore(jax.device_put(jax.tree.map(lambda x: x[0], template)))
  return ([run_files.without_timing(r) for r in run_files.read_metrics(directory)],
          jax.device_get(state.params))


def _assert_same_sweep(workdir, reference, config):
  for name in TRIALS:
    assert results.read_status(results.trial_dir(str(workdir), name)) == 'done'
    got, want = _trial_result(workdir, name, config), _trial_result(reference, name, config)
    assert got[0] == want[0] and len(got[0]) == config.num_epochs
    for x, y in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
      np.testing.assert_array_equal(x, y)


def _trial_steps(workdir, name):
  return _steps(results.trial_dir(str(workdir), name))


def test_a_signal_stops_a_sweep_inside_an_epoch_and_it_resumes_exactly(tmp_path):
  """scripts/sweep.py with checkpoint.every_steps: SIGTERM once a trial holds a checkpoint inside
  an epoch; the sweep stops after the training call under way (status 3, one line) and the rerun
  ends where the uninterrupted sweep does, bit for bit."""
  write_dataset_cache(tmp_path / 'cache', synthetic_dataset())
  sweep_path = tmp_path / 'sweep.py'
  sweep_path.write_text(SWEEP_FILE)
  config = _inside_config(every_steps=3)
  config.num_epochs = 10
  workdir = tmp_path / 'sweep'
  command = _sweep_command(sweep_path, tmp_path / 'cache', workdir, config.num_epochs,
                           '--config.checkpoint.every_epochs=1', '--config.checkpoint.keep=20',
                           '--config.checkpoint.every_steps=3')
  trials = [results.trial_dir(str(workdir), name) for name in TRIALS]

  def inside_an_epoch():
    return any(s % STEPS for t in trials if os.path.isdir(os.path.join(t, 'checkpoints'))
               for s in _steps(t))

  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO, env=ENV)
  try:
    deadline = time.time() + 120
    while not inside_an_epoch():
      assert process.poll() is None, process.communicate()
      assert time.time() < deadline, 'no checkpoint inside an epoch in time'
      time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  assert process.returncode == preemption.EXIT_STATUS, err
  line = err.strip().splitlines()[-1]
  assert line.startswith('stopped: SIGTERM received: stopped after the training call under way')
  assert 'rerun the same command to resume' in line and 'Traceback' not in err
  assert 'interrupted' in [results.read_status(t) for t in trials]
  assert not any(results.read_status(t) == 'done' for t in trials)

  reference = tmp_path / 'reference'
  _resume_and_run_uninterrupted(command, reference)
  _assert_same_sweep(workdir, reference, config)


@pytest.fixture(scope='module')
def uninterrupted_sweep(tmp_path_factory):
  """The sweep every cadence and every resume must reproduce bit for bit (saves at epochs' ends)."""
  workdir = tmp_path_factory.mktemp('sweep') / 'reference'
  _sweep(_inside_config(), workdir)
  return workdir


def test_the_cadence_inside_epochs_is_result_neutral_in_a_sweep(tmp_path, uninterrupted_sweep):
  _sweep(_inside_config(every_steps=3), tmp_path / 'sweep')
  _assert_same_sweep(tmp_path / 'sweep', uninterrupted_sweep, _inside_config())
  for name in TRIALS:  # Where a single run saves (its epochs split at the same steps).
    assert _trial_steps(tmp_path / 'sweep', name) == [3, 6, 8, 10, 12, 16, 18, 21, 24]


def test_every_minutes_saves_a_sweep_between_calls(tmp_path, monkeypatch, uninterrupted_sweep):
  monkeypatch.setattr(driver, 'TIMED_CALL_STEPS', 3)  # Calls of 3, 3 and 2 steps.
  _sweep(_inside_config(every_minutes=1e-9, every_epochs=0), tmp_path / 'sweep')
  _assert_same_sweep(tmp_path / 'sweep', uninterrupted_sweep, _inside_config())
  for name in TRIALS:
    assert _trial_steps(tmp_path / 'sweep', name) == [3, 6, 8, 11, 14, 16, 19, 22, 24]


def _signal_after_group_call(monkeypatch, call):
  _signal_after_call(monkeypatch, call, program=vectorized.GroupProgram, method='_train_call')


def test_a_signal_inside_an_epoch_of_a_sweep_saves_there_and_the_resumed_sweep_is_exact(
    tmp_path, monkeypatch, uninterrupted_sweep):
  workdir = tmp_path / 'sweep'
  config = _inside_config(every_steps=3, every_epochs=0)
  # As a single run's: the fifth call ends at step 12, inside epoch 2, where the sweep stops.
  _signal_after_group_call(monkeypatch, 5)
  with pytest.raises(preemption.Preempted, match='^SIGTERM received: stopped after the training '
                     'call under way, with a checkpoint of each of the 3 unfinished trial'):
    _sweep(config, workdir)
  monkeypatch.undo()
  for name in TRIALS:
    directory = results.trial_dir(str(workdir), name)
    assert results.read_status(directory) == 'interrupted'
    assert 'step 12 (step 4 of epoch 2)' in open(os.path.join(directory, 'status')).read()
    assert len(run_files.read_metrics(directory)) == 1
    assert _trial_steps(workdir, name) == [3, 6, 10, 12]
  # Trials resumed at different steps: seed=0 from step 10, the others from 12.
  shutil.rmtree(os.path.join(results.trial_dir(str(workdir), 'seed=0'), 'checkpoints', '12'))
  config.checkpoint.every_steps = 5  # Result-neutral: a resume may change it.
  _sweep(config, workdir)
  _assert_same_sweep(workdir, uninterrupted_sweep, _inside_config())
  assert _trial_steps(workdir, 'seed=0') == [3, 6, 10, 16, 20, 24]
  assert _trial_steps(workdir, 'seed=1') == [3, 6, 10, 12, 16, 20, 24]


def test_a_trial_checkpoint_inside_an_epoch_is_never_the_best_and_evaluates(
    tmp_path, monkeypatch):
  dataset = synthetic_dataset(num_train=320)  # 64 held out: 8 steps per epoch again.
  config = _inside_config(every_steps=3, keep=1)
  config.data.validation_split = 64
  config.early_stopping.monitor = 'off'
  workdir = tmp_path / 'sweep'
  _signal_after_group_call(monkeypatch, 5)
  with pytest.raises(preemption.Preempted):
    _sweep(config, workdir, dataset)
  monkeypatch.undo()
  for name in TRIALS:
    directory = results.trial_dir(str(workdir), name)
    assert _trial_steps(workdir, name) == [STEPS, 12]  # keep=1: the latest and the best.
    with contextlib.closing(driver.open_checkpointer(directory, config)) as checkpoints:
      assert checkpoints.best_step() == STEPS  # Epoch 1's end, not step 12.
  directory = results.trial_dir(str(workdir), 'seed=1')
  report = evaluation.evaluate_run(directory, 12, devices=jax.devices()[:2], dataset=dataset,
                                   plots_dir=str(tmp_path / 'plots'))
  assert (report['step'], report['epoch'], report['training_reported']) == (12, 2, None)
  report = evaluation.evaluate_run(directory, 'best', devices=jax.devices()[:2], dataset=dataset,
                                   plots_dir=str(tmp_path / 'plots'))
  [record] = run_files.read_metrics(directory)
  assert report['step'] == STEPS and report['test_accuracy'] == record['test_accuracy']
  # A trial's own evaluation is vmapped, evaluate.py's that of a run.
  assert report['test_loss'] == pytest.approx(record['test_loss'], rel=1e-5)


def test_a_run_resumed_inside_an_epoch_restores_its_best_weights_exactly(tmp_path, monkeypatch):
  """restore_best_weights: the best epoch's weights come back from its checkpoint (the state
  restored is of a step inside the next epoch)."""
  dataset = synthetic_dataset(num_train=320)
  config = _inside_config(every_steps=3, keep=1)
  config.data.validation_split = 64
  config.early_stopping.restore_best_weights = True
  want = _train(config, None, dataset)
  _signal_after_call(monkeypatch, 5)
  with pytest.raises(preemption.Preempted, match='saved the checkpoint of step 12'):
    _train(config, tmp_path, dataset)
  monkeypatch.undo()
  _assert_same_run(_train(config, tmp_path, dataset), want)
