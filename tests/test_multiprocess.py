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
from mlp_mnist.records import run_files

from conftest import REPO, synthetic_dataset

WORKER = os.path.join(REPO, 'tests', 'multiprocess_worker.py')
KEYS = ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'grad_norm', 'param_norm')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def _processes(workdir, num_train, epochs, log_dir):
  """Starts both processes; always kills whatever is left on the way out."""
  port = _free_port()
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  procs = []
  try:
    for i in range(2):
      with open(os.path.join(log_dir, f'process{i}-{time.time_ns()}.log'), 'w') as log:
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, str(i), '2', str(port), str(workdir), str(num_train),
             str(epochs)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO))
    yield procs
  finally:
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


def test_two_processes_match_one_process_with_four_devices(config, tmp_path):
  logs = tmp_path / 'logs'
  logs.mkdir()
  with _processes(tmp_path / 'run', 250, 2, logs) as procs:
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


@pytest.mark.parametrize('kwargs,message', [
    (dict(num_processes=2), 'needs all three of --coordinator_address'),
    (dict(coordinator_address='localhost:1', num_processes=2, process_id=2),
     '--process_id=2 must be in [0, 2)'),
    (dict(mode='sometimes'), "--distributed='sometimes'"),
])
def test_incomplete_multiprocess_settings_fail_clearly(monkeypatch, kwargs, message):
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(distributed.DistributedError, match=re.escape(message)):
    distributed.initialize(**kwargs)


def test_single_process_needs_no_set_up(monkeypatch):
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'TPU_WORKER_HOSTNAMES',
               'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(name, raising=False)
  assert distributed.initialize('auto') is False
  assert distributed.initialize('off', num_processes=4) is False
  monkeypatch.setenv('JAX_NUM_PROCESSES', 'four')
  with pytest.raises(distributed.DistributedError, match="JAX_NUM_PROCESSES='four'"):
    distributed.initialize('auto')
