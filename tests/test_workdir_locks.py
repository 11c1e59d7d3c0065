"""Workdir ownership: one process per workdir, one worker per trial, --restart checks first."""

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from mlp_mnist import cli
from mlp_mnist import errors
from mlp_mnist import train
from mlp_mnist.records import locks

from conftest import REPO, synthetic_dataset, write_dataset_cache

HOLD_LOCK = ('import sys, time\n'
             'from mlp_mnist.records import locks\n'
             'lock = locks.Lock(sys.argv[1]).acquire()\n'
             'print("held", flush=True)\n'
             'time.sleep(120)\n')


def _dead_pid() -> int:
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def _write_lock(directory, **holder):
  os.makedirs(directory, exist_ok=True)
  content = {'host': socket.gethostname(), 'pid': os.getpid(), 'start_time': '2026-01-01T00:00:00',
             'heartbeat_unix': time.time(), **holder}
  with open(os.path.join(directory, locks.LOCK_FILE), 'w') as f:
    json.dump(content, f)


def _files(root) -> dict[str, bytes]:
  out = {}
  for parent, _, names in os.walk(root):
    for name in names:
      path = os.path.join(parent, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def test_a_second_process_on_a_locked_workdir_refuses_with_one_line_naming_the_holder(tmp_path):
  workdir = tmp_path / 'run'
  holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(workdir)],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, 'PYTHONPATH': REPO})
  try:
    assert holder.stdout.readline().strip() == 'held'
    write_dataset_cache(tmp_path / 'cache', synthetic_dataset())
    second = subprocess.run(
        [sys.executable, os.path.join(REPO, 'scripts', 'train.py'),
         f'--config={os.path.join(REPO, "configs", "default.py")}', f'--workdir={workdir}',
         f'--config.data.cache_dir={tmp_path / "cache"}', '--config.num_epochs=1',
         '--jax_cache_dir='], capture_output=True, text=True, timeout=120, cwd=REPO)
  finally:
    holder.kill()
    holder.wait()
  assert second.returncode == 2, second.stderr
  lines = second.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: {workdir} is in use by another run '
                                                 f'(host {socket.gethostname()}, pid {holder.pid}, '
                                                 'started 20')
  assert os.listdir(workdir) == [locks.LOCK_FILE]  # The holder's lock, nothing of the second run.


def test_a_lock_whose_process_is_gone_is_taken_over_with_a_warning(tmp_path):
  dead = _dead_pid()
  _write_lock(tmp_path, pid=dead)
  warnings = []
  lock = locks.Lock(str(tmp_path)).acquire(warnings.append)
  assert len(warnings) == 1 and f'pid {dead}' in warnings[0]
  assert 'its process is no longer running' in warnings[0]
  with open(tmp_path / locks.LOCK_FILE) as f:
    assert json.load(f)['pid'] == os.getpid()
  lock.release()
  assert not (tmp_path / locks.LOCK_FILE).exists()


def test_another_hosts_lock_is_taken_over_only_when_its_heartbeat_is_stale(tmp_path):
  _write_lock(tmp_path, host='elsewhere', pid=1, heartbeat_unix=time.time() - 30)
  with pytest.raises(locks.LockedError, match=r'in use by another run \(host elsewhere, pid 1, '
                     r'started 2026-01-01T00:00:00\)'):
    locks.Lock(str(tmp_path)).acquire()
  _write_lock(tmp_path, host='elsewhere', pid=1, heartbeat_unix=time.time() - locks.STALE_SEC - 1)
  warnings = []
  locks.Lock(str(tmp_path)).acquire(warnings.append).release()
  assert len(warnings) == 1 and 'its last heartbeat was' in warnings[0]


def test_the_lock_is_released_on_an_exception_and_refused_while_held(tmp_path):
  with pytest.raises(ZeroDivisionError):
    with locks.held(str(tmp_path)):
      with pytest.raises(locks.LockedError, match=f'pid {os.getpid()}'):
        locks.Lock(str(tmp_path)).acquire()
      _ = 1 / 0
  assert not (tmp_path / locks.LOCK_FILE).exists()


def test_the_heartbeat_refreshes_the_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(locks, 'HEARTBEAT_SEC', 0.05)
  with locks.held(str(tmp_path)):
    with open(tmp_path / locks.LOCK_FILE) as f:
      first = json.load(f)['heartbeat_unix']
    time.sleep(0.3)
    with open(tmp_path / locks.LOCK_FILE) as f:
      assert json.load(f)['heartbeat_unix'] > first


def test_the_default_workdir_differs_between_processes_started_in_one_second():
  names = [subprocess.run([sys.executable, '-c',
                           'from mlp_mnist import cli; print(cli.default_workdir())'],
                          capture_output=True, text=True, cwd=REPO, check=True,
                          env={**os.environ, 'PYTHONPATH': REPO}).stdout.strip()
           for _ in range(2)]
  assert names[0] != names[1]
  assert all(re.fullmatch(r'runs/\d{8}-\d{6}-\d+', name) for name in names)
  assert cli.default_workdir().endswith(f'-{os.getpid()}')


def test_restart_with_a_bad_data_path_deletes_nothing(tmp_path, config):
  config.num_epochs = 1
  config.model.hidden_sizes = (16,)
  train.train_and_evaluate(config, str(tmp_path), dataset=synthetic_dataset(),
                           log=lambda line: None)
  before = _files(tmp_path)
  assert 'config.json' in before and any(p.startswith('checkpoints') for p in before)
  config.data.npz_path = str(tmp_path / 'typo.npz')
  config.model.hidden_sizes = (32,)
  with pytest.raises(errors.UserError, match='typo.npz'):
    train.train_and_evaluate(config, str(tmp_path), restart=True, log=lambda line: None)
  assert _files(tmp_path) == before


def test_two_identical_sweeps_on_one_workdir_never_train_a_trial_twice(tmp_path):
  write_dataset_cache(tmp_path / 'cache', synthetic_dataset(num_train=512, num_test=30))
  sweep_path = tmp_path / 'sweep.py'
  sweep_path.write_text("def get_sweep(hyper):\n  return hyper.sweep('seed', [0, 1, 2, 3])\n")
  command = [sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'),
             f'--config={os.path.join(REPO, "configs", "default.py")}', f'--sweep={sweep_path}',
             f'--workdir={tmp_path / "run"}', '--config.num_epochs=3', '--jax_cache_dir=',
             '--max_trials_per_program=1', '--cpu_devices=1',
             f'--config.data.cache_dir={tmp_path / "cache"}', '--config.data.download=False']
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  sweeps = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, cwd=REPO) for _ in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in sweeps]
  assert [p.returncode for p in sweeps] == [0, 0], outputs
  for seed in range(4):
    trial = tmp_path / 'run' / 'trials'
    (folder,) = [d for d in os.listdir(trial) if d.endswith(f'seed={seed}')]
    with open(trial / folder / 'metrics.jsonl') as f:
      assert [json.loads(line)['epoch'] for line in f] == [1, 2, 3], outputs
    assert not (trial / folder / locks.LOCK_FILE).exists()
  trained = sum(int(n) for out in outputs for n in re.findall(r'finished: (\d+) done', out))
  assert trained == 4, outputs


def test_a_sweep_skips_a_trial_a_live_worker_holds_and_takes_over_a_dead_workers(tmp_path,
                                                                                config):
  import jax  # pylint: disable=g-import-not-at-top
  from mlp_mnist.sweeps import results  # pylint: disable=g-import-not-at-top
  from mlp_mnist.sweeps import runner  # pylint: disable=g-import-not-at-top
  from mlp_mnist.sweeps import sweep_files  # pylint: disable=g-import-not-at-top
  sweep_path = tmp_path / 'sweep.py'
  sweep_path.write_text("def get_sweep(hyper):\n  return hyper.sweep('seed', [0, 1])\n")
  config.num_epochs = 1
  config.model.hidden_sizes = (16,)
  workdir = str(tmp_path / 'run')
  live, dead = (results.trial_dir(workdir, t.name)
                for t in sweep_files.sweep_trials(config, str(sweep_path)))
  _write_lock(live, pid=os.getppid())  # Another process on this host, alive.
  _write_lock(dead, pid=_dead_pid())
  lines = []
  runner.run_sweep(config, str(sweep_path), workdir, devices=jax.devices()[:1],
                   dataset=synthetic_dataset(num_train=64, num_test=20), log=lines.append)
  assert results.read_status(live) is None and not os.path.exists(
      os.path.join(live, 'metrics.jsonl'))
  assert results.read_status(dead) == results.DONE
  assert any(line.startswith(f'{live} is being trained by another worker (host ') and
             f'pid {os.getppid()}' in line and line.endswith('skipped here.') for line in lines)
  assert any(line.startswith(f'warning: taking over the lock on {dead}') for line in lines)
  assert os.path.exists(os.path.join(live, locks.LOCK_FILE))  # The live worker's, untouched.
  assert not os.path.exists(os.path.join(dead, locks.LOCK_FILE))


def test_one_heartbeat_thread_serves_every_lock_of_the_process(tmp_path, monkeypatch):
  import threading  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(locks, 'HEARTBEAT_SEC', 0.05)
  held = [locks.Lock(str(tmp_path / str(i))).acquire() for i in range(50)]
  try:
    assert [t.name for t in threading.enumerate()].count('lock heartbeats') == 1
    before = [json.loads((tmp_path / str(i) / locks.LOCK_FILE).read_text())['heartbeat_unix']
              for i in range(50)]
    time.sleep(0.3)
    after = [json.loads((tmp_path / str(i) / locks.LOCK_FILE).read_text())['heartbeat_unix']
             for i in range(50)]
    assert all(b > a for a, b in zip(before, after))
  finally:
    for lock in held:
      lock.release()
  assert not list(tmp_path.rglob(locks.LOCK_FILE))


def test_report_only_after_a_sigkill_shows_interrupted_trials_but_running_ones_a_live_process_holds(
    tmp_path, config):
  """A sweep killed with SIGKILL leaves its trials' status `running`; the report shows them
  `interrupted`, with the command that resumes them, unless a live process holds the trial."""
  from mlp_mnist.sweeps import results  # pylint: disable=g-import-not-at-top
  from mlp_mnist.sweeps import runner  # pylint: disable=g-import-not-at-top
  from mlp_mnist.sweeps import sweep_files  # pylint: disable=g-import-not-at-top
  write_dataset_cache(tmp_path / 'cache', synthetic_dataset(num_train=512, num_test=30))
  sweep_path = tmp_path / 'sweep.py'
  sweep_path.write_text("def get_sweep(hyper):\n  return hyper.sweep('seed', [0, 1])\n")
  workdir = str(tmp_path / 'run')
  command = [sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'),
             f'--config={os.path.join(REPO, "configs", "default.py")}', f'--sweep={sweep_path}',
             f'--workdir={workdir}', '--config.num_epochs=100', '--jax_cache_dir=',
             '--cpu_devices=1', f'--config.data.cache_dir={tmp_path / "cache"}',
             '--config.data.download=False']
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=env, cwd=REPO)
  output = []
  try:
    for line in sweep.stdout:  # Killed once the group has trained an epoch.
      output.append(line)
      if ' epoch 1/100' in line:
        sweep.kill()
        break
  finally:
    sweep.kill()
    sweep.wait(timeout=60)
  assert sweep.returncode == -9, output
  trials = [results.trial_dir(workdir, t.name)
            for t in sweep_files.sweep_trials(config, str(sweep_path))]
  assert [results.read_status(t) for t in trials] == ['running'] * 2
  report = subprocess.run(command + ['--report_only'], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=180)
  assert report.returncode == 0, report.stderr
  assert '2 trials: 2 interrupted' in report.stdout and 'running' not in report.stdout
  with open(os.path.join(workdir, 'report.md')) as f:
    markdown = f.read()
  assert '2 trial(s) interrupted' in markdown and f'--workdir={workdir}' in markdown
  assert 'left running by a process that is gone' in markdown and '| running |' not in markdown
  with open(os.path.join(workdir, 'results.csv')) as f:
    assert [r['status'] for r in csv.DictReader(f)] == ['interrupted'] * 2
  _write_lock(trials[0], pid=os.getpid())  # A live worker (this test) holds the first trial.
  config.num_epochs = 100
  rows = runner.run_sweep(config, str(sweep_path), workdir, report_only=True, log=lambda _: None)
  assert [r['status'] for r in rows] == ['running', 'interrupted']
