"""Two processes on this machine (loopback, CPU collectives through gloo), two CPU devices each."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mlp_mnist import train
from mlp_mnist.devices import distributed
from mlp_mnist.records import checkpointing
from mlp_mnist.records import provenance
from mlp_mnist.records import run_files
from mlp_mnist.sweeps import results

from conftest import REPO, synthetic_dataset, write_dataset_cache

WORKER = os.path.join(REPO, 'tests', 'multiprocess_worker.py')
KEYS = ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'grad_norm', 'param_norm')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


# What JAX's cluster detection reads: none of it may leak into a test from the machine.
CLUSTER_VARIABLES = ('SLURM_', 'OMPI_', 'PMI_', 'PMIX_', 'MV2_', 'TPU_', 'MEGASCALE_',
                     'KUBERNETES_SERVICE_HOST', 'JAX_COORDINATOR', 'JAX_NUM_PROCESSES',
                     'JAX_PROCESS_ID', 'JAX_LOCAL_DEVICE_IDS')
# JAX's SLURM detection puts the coordinator on this port range's SLURM_JOB_ID % 4096-th port.
SLURM_PORTS = 65536 - 4096


def _without_cluster(env):
  return {k: v for k, v in env.items() if not k.startswith(CLUSTER_VARIABLES)}


def _free_slurm_job_id() -> str:
  """A job id whose coordinator port (as JAX's SLURM detection derives it) is free here."""
  for port in np.random.default_rng(time.time_ns()).permutation(np.arange(SLURM_PORTS, 65536)):
    with socket.socket() as s:
      try:
        s.bind(('localhost', int(port)))
      except OSError:
        continue
    return str(4096 * 1234 + int(port) - SLURM_PORTS)
  raise AssertionError('no free port in the SLURM range')


def _slurm_env(job_id, process_id, num_tasks, step_tasks=None):
  """What `srun` gives each task of a one-node step (the variables JAX's SLURM detection reads)."""
  return {'SLURM_JOB_ID': job_id, 'SLURM_STEP_NODELIST': 'localhost', 'SLURM_NODELIST': 'localhost',
          'SLURM_NTASKS': str(num_tasks), 'SLURM_STEP_NUM_TASKS': str(step_tasks or num_tasks),
          'SLURM_PROCID': str(process_id), 'SLURM_LOCALID': str(process_id),
          'SLURM_STEP_NUM_NODES': '1'}


@contextlib.contextmanager
def _processes(workdir, num_train, epochs, log_dir, slurm=False, checkpoint=()):
  """Starts both processes; always kills whatever is left on the way out.

  With `slurm`, each process gets only a simulated SLURM task environment and no coordinator;
  `checkpoint` holds 'key=value' settings of `config.checkpoint`.
  """
  port = 'auto' if slurm else _free_port()
  job_id = _free_slurm_job_id() if slurm else None
  env = {**_without_cluster(os.environ), 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  procs = []
  try:
    for i in range(2):
      with open(os.path.join(log_dir, f'process{i}-{time.time_ns()}.log'), 'w') as log:
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, str(i), '2', str(port), str(workdir), str(num_train),
             str(epochs), *checkpoint], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**env, **(_slurm_env(job_id, i, 2) if slurm else {})}))
    yield procs
  finally:
    _kill(procs)


def _kill(procs):
  """Kills the processes still running and reaps them all."""
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.wait(timeout=30)


def _wait(procs, timeout):
  deadline = time.time() + timeout
  for p in procs:
    p.wait(timeout=max(1, deadline - time.time()))
  return [p.returncode for p in procs]


def _logs(log_dir):
  return '\n'.join(open(os.path.join(log_dir, f)).read()[-3000:] for f in sorted(os.listdir(log_dir)))


def _reference(config, num_train, epochs):
  config.num_epochs = epochs
  config.eval_batch_size = 24
  config.model.dropout_rate = 0.2
  return train.train_and_evaluate(config, None, devices=jax.devices()[:4],
                                  dataset=synthetic_dataset(num_train, 101),
                                  log=lambda _: None)['history']


def _assert_same_history(got, want):
  assert [r['epoch'] for r in got] == [r['epoch'] for r in want]
  for g, w in zip(got, want):
    for key in KEYS:
      np.testing.assert_allclose(g[key], w[key], rtol=2e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize('slurm', [False, True], ids=['explicit', 'slurm_detected'])
def test_two_processes_match_one_process_with_four_devices(config, tmp_path, slurm):
  logs = tmp_path / 'logs'
  logs.mkdir()
  with _processes(tmp_path / 'run', 250, 2, logs, slurm=slurm) as procs:
    assert _wait(procs, timeout=180) == [0, 0], _logs(logs)
  results = [json.load(open(tmp_path / 'run' / f'result-{i}.json')) for i in range(2)]
  # Every process reports the same metrics.
  assert [run_files.without_timing(r) for r in results[0]] == [
      run_files.without_timing(r) for r in results[1]]
  _assert_same_history(results[0], _reference(config, 250, 2))
  # Only process 0 wrote the run's records; both took part in the checkpoints.
  records = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
  assert [r['epoch'] for r in records] == [1, 2]
  assert 'process1' not in ''.join(os.listdir(tmp_path / 'run'))
  assert sorted(os.listdir(tmp_path / 'run' / 'checkpoints'))


def test_two_processes_save_inside_epochs_together(config, tmp_path):
  """Checkpoints at every_steps and on a timer (process 0's decides) are collective saves: both
  processes take them at the same steps, and the results stay those of one process."""
  logs = tmp_path / 'logs'
  logs.mkdir()
  with _processes(tmp_path / 'run', 250, 2, logs,
                  checkpoint=('every_steps=3', 'every_minutes=1e-9', 'keep=20')) as procs:
    assert _wait(procs, timeout=180) == [0, 0], _logs(logs)
  _assert_same_history(json.load(open(tmp_path / 'run' / 'result-0.json')),
                       _reference(config, 250, 2))
  # 8 steps per epoch; the timer makes every call's end a save (9 would leave a call of one step).
  assert sorted(int(s) for s in os.listdir(tmp_path / 'run' / 'checkpoints')) == [
      3, 6, 8, 10, 12, 16]


def test_a_dead_process_stops_the_other_and_a_rerun_resumes(config, tmp_path):
  logs = tmp_path / 'logs'
  logs.mkdir()
  run, num_train, epochs = tmp_path / 'run', 4000, 3
  with _processes(run, num_train, epochs, logs) as procs:
    deadline = time.time() + 180
    while not (run / 'checkpoints' / '125').exists():  # Epoch 1 saved (125 steps of 32).
      assert time.time() < deadline and procs[0].poll() is None, _logs(logs)
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    returncode = procs[0].wait(timeout=90)
    stopped_after = time.time() - killed_at
  assert returncode != 0
  assert stopped_after < 60, stopped_after
  log0 = open(sorted(logs.glob('process0-*'))[0]).read()
  # JAX's coordination service ends the survivor once the heartbeats stop, and says why.
  assert 'stopped sending heartbeats' in log0 and 'another task died' in log0, log0[-3000:]

  with _processes(run, num_train, epochs, logs) as procs:
    assert _wait(procs, timeout=240) == [0, 0], _logs(logs)
  assert 'Resumed from the checkpoint' in open(sorted(logs.glob('process0-*'))[-1]).read()
  _assert_same_history(json.load(open(run / 'result-0.json')),
                       _reference(config, num_train, epochs))


# A sweep of four trials split over two processes (two each, one program group per process),
# 8 steps per epoch, dropout on.
SWEEP_TRIALS = ('seed=0', 'seed=1', 'seed=2', 'seed=3')
SWEEP_EPOCHS = 30


@contextlib.contextmanager
def _sweep_processes(tmp_path, workdir, *flags, epochs=SWEEP_EPOCHS):
  """Starts `scripts/sweep.py` as both processes of a 2-process run on tiny synthetic data (each
  process 2 CPU devices); kills whatever is left on the way out."""
  cache = tmp_path / 'cache'
  if not cache.exists():
    write_dataset_cache(cache, synthetic_dataset(num_train=256, num_test=40))
  sweep_path = tmp_path / 'sweep.py'
  sweep_path.write_text("def get_sweep(hyper):\n  return hyper.sweep('seed', [0, 1, 2, 3])\n")
  port = _free_port()
  env = {**_without_cluster(os.environ), 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  procs = []
  try:
    for i in range(2):
      procs.append(subprocess.Popen(
          [sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'),
           f'--config={os.path.join(REPO, "configs", "default.py")}', f'--sweep={sweep_path}',
           f'--workdir={workdir}', f'--config.num_epochs={epochs}',
           '--config.model.dropout_rate=0.2', '--config.eval_batch_size=40', '--jax_cache_dir=',
           f'--config.data.cache_dir={cache}', '--config.data.download=False', '--cpu_devices=2',
           '--distributed=on', f'--coordinator_address=localhost:{port}', '--num_processes=2',
           f'--process_id={i}', '--heartbeat_timeout_sec=10', *flags],
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO))
    yield procs
  finally:
    _kill(procs)


def _finish(procs, timeout=120):
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outputs]
  return outputs


def _final_checkpoint(trial) -> tuple[int, str]:
  """(step, checksum of the train state) of a trial folder's latest checkpoint."""
  directory = os.path.join(trial, checkpointing.CHECKPOINTS_DIR)
  step = max(int(s) for s in os.listdir(directory) if s.isdigit())
  with open(os.path.join(directory, str(step), 'run', 'metadata')) as f:
    return step, json.load(f)['checksum']


def _assert_same_sweeps(workdir, reference):
  """Bit for bit: each trial's metrics (timings aside) and final train state."""
  for name in SWEEP_TRIALS:
    got, want = results.trial_dir(str(workdir), name), results.trial_dir(str(reference), name)
    assert results.read_status(got) == 'done', name
    assert [run_files.without_timing(r) for r in run_files.read_metrics(got)] == [
        run_files.without_timing(r) for r in run_files.read_metrics(want)], name
    assert _final_checkpoint(got) == _final_checkpoint(want), name


def _resumed_steps(trial) -> list:
  return [r.get('resumed_from_step') for r in provenance.read(trial)]


def test_a_two_process_sweep_keeps_trial_checkpoints_that_evaluate(tmp_path):
  """Each process saves its own trials' checkpoints alone, the latest and the best (by validation
  loss); one process evaluates a trial of the other's."""
  workdir = tmp_path / 'sweep'
  with _sweep_processes(tmp_path, workdir, '--config.data.validation_split=64', epochs=3) as procs:
    _finish(procs)
  for name in SWEEP_TRIALS:  # 192 examples trained on: 6 steps per epoch.
    directory = os.path.join(results.trial_dir(str(workdir), name), 'checkpoints')
    assert sorted(int(s) for s in os.listdir(directory) if s.isdigit())[-3:] == [6, 12, 18], name
  trial = results.trial_dir(str(workdir), 'seed=3')  # Process 1's.
  history = run_files.read_metrics(trial)
  best = min(history, key=lambda r: r['validation_loss'])
  for step, record in ((None, history[-1]), ('best', best)):
    evaluated = subprocess.run(
        [sys.executable, os.path.join(REPO, 'scripts', 'evaluate.py'), f'--workdir={trial}',
         '--json', *([f'--step={step}'] if step else [])], capture_output=True, text=True,
        timeout=120, cwd=REPO,
        env={**_without_cluster(os.environ), 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'})
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert report['step'] == record['step'], (report['step'], record)
    assert report['test_accuracy'] == record['test_accuracy'], (report, record)


@pytest.mark.parametrize('flags,epochs,inside_epochs', [
    (('--config.checkpoint.every_epochs=2',), SWEEP_EPOCHS, False),
    (('--config.checkpoint.every_steps=6', '--config.checkpoint.every_epochs=0'), 12, True),
], ids=['epochs', 'every_steps'])
def test_a_killed_two_process_sweep_resumes_exactly(tmp_path, flags, epochs, inside_epochs):
  """SIGKILL to both processes once a trial of each has a checkpoint (with every_steps, one inside
  an epoch); the rerun resumes every unfinished trial from its checkpoint and ends where an
  uninterrupted 2-process sweep does, bit for bit."""
  workdir = tmp_path / 'sweep'
  mine = (results.trial_dir(str(workdir), 'seed=0'), results.trial_dir(str(workdir), 'seed=3'))

  def saved(trial):
    directory = os.path.join(trial, 'checkpoints')
    steps = [int(s) for s in os.listdir(directory) if s.isdigit()] if os.path.isdir(
        directory) else []
    return [s for s in steps if s % 8] if inside_epochs else steps

  with _sweep_processes(tmp_path, workdir, *flags, epochs=epochs) as procs:
    deadline = time.time() + 180
    while not all(saved(t) for t in mine):
      assert time.time() < deadline and all(p.poll() is None for p in procs), [
          p.communicate()[0][-3000:] for p in procs if p.poll() is not None]
      time.sleep(0.05)
    for p in procs:
      p.send_signal(signal.SIGKILL)
    for p in procs:
      p.wait(timeout=30)
  assert not any(results.read_status(t) == 'done' for t in mine)

  with _sweep_processes(tmp_path, workdir, *flags, epochs=epochs) as procs:
    _finish(procs)
  for trial in mine:
    resumed = _resumed_steps(trial)[-1]
    assert resumed is not None and (resumed % 8 != 0) == inside_epochs, resumed
  reference = tmp_path / 'reference'
  with _sweep_processes(tmp_path, reference, *flags, epochs=epochs) as procs:
    _finish(procs)
  _assert_same_sweeps(workdir, reference)


@pytest.mark.parametrize('kwargs,message', [
    (dict(num_processes=2), 'needs all three of --coordinator_address'),
    (dict(coordinator_address='localhost:1', num_processes=2, process_id=2),
     '--process_id=2 must be in [0, 2)'),
    (dict(mode='sometimes'), "--distributed='sometimes'"),
])
def test_incomplete_multiprocess_settings_fail_clearly(monkeypatch, kwargs, message):
  _clear_cluster_env(monkeypatch)
  with pytest.raises(distributed.DistributedError, match=re.escape(message)):
    distributed.initialize(**kwargs)


def _clear_cluster_env(monkeypatch):
  for name in os.environ:
    if name.startswith(CLUSTER_VARIABLES):
      monkeypatch.delenv(name)


def test_single_process_needs_no_set_up(monkeypatch):
  _clear_cluster_env(monkeypatch)
  assert distributed.detected_cluster() is None
  # TPU_WORKER_HOSTNAMES alone (not on a TPU VM) is no cluster for JAX, nor for us.
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'host0,host1')
  started = time.perf_counter()
  assert distributed.initialize('auto') is False
  assert time.perf_counter() - started < 0.5
  assert distributed.initialize('off', num_processes=4) is False
  monkeypatch.setenv('JAX_NUM_PROCESSES', 'four')
  with pytest.raises(distributed.DistributedError, match="JAX_NUM_PROCESSES='four'"):
    distributed.initialize('auto')


@pytest.mark.parametrize('num_tasks,step_tasks', [(1, 1), (4, 1)])
def test_a_single_slurm_task_trains_alone(monkeypatch, num_tasks, step_tasks):
  # `srun -n1` inside an allocation of 4 tasks: JAX would wait for 3 peers that never start.
  _clear_cluster_env(monkeypatch)
  for name, value in _slurm_env('77', 0, num_tasks, step_tasks).items():
    monkeypatch.setenv(name, value)
  assert distributed.detected_cluster().name == 'slurm'
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **_: pytest.fail('initialized'))
  assert distributed.initialize('auto') is False


def test_a_detected_cluster_is_left_to_jax(monkeypatch):
  _clear_cluster_env(monkeypatch)
  for name, value in _slurm_env('77', 1, 8, step_tasks=2).items():
    monkeypatch.setenv(name, value)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kwargs: calls.append(kwargs))
  monkeypatch.setattr(jax.config, 'update', lambda *_: None)
  distributed.initialize('auto')
  # The step's own task count; the coordinator and the id come from JAX's SLURM detection.
  assert [(c['coordinator_address'], c['num_processes'], c['process_id'],
           c['cluster_detection_method']) for c in calls] == [(None, 2, None, 'slurm')]
  with pytest.raises(distributed.DistributedError, match=re.escape('--process_id=5 must be in')):
    distributed.initialize('auto', process_id=5)
