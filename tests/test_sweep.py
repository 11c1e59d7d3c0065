import csv
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import pytest

from mlp_mnist import train
from mlp_mnist.records import provenance
from mlp_mnist.records import run_files
from mlp_mnist.sweeps import aggregate
from mlp_mnist.sweeps import results
from mlp_mnist.sweeps import runner
from mlp_mnist.sweeps import sweep_files
from mlp_mnist.sweeps import vectorized

import default
from conftest import REPO, assert_png, synthetic_dataset, write_dataset_cache

SWEEP_FILE = '''
def get_sweep(hyper):
  return hyper.product([
      hyper.sweep('model.hidden_sizes', [(16,), (8,)]),
      hyper.sweep('optimizer.learning_rate', [1e-3, 1e-2]),
      hyper.sweep('seed', [0, 1]),
  ])
'''
NAMES = [f'hidden_sizes={w},learning_rate={lr},seed={s}'
         for w in (16, 8) for lr in (0.001, 0.01) for s in (0, 1)]


def _config():
  config = default.get_config()
  config.num_epochs = 2
  config.eval_batch_size = 20
  return config


@pytest.mark.parametrize('sizes,workers', [((8,), 3), ((5, 1, 1, 3), 2), ((1,) * 7, 4),
                                           ((2, 2), 5), ((32,), 8), ((3, 4), 1)])
def test_worker_split_covers_every_trial_exactly_once(sizes, workers):
  groups, start = [], 0
  for size in sizes:
    groups.append(list(range(start, start + size)))
    start += size
  shares = [runner.worker_share(groups, workers, w) for w in range(workers)]
  assigned = sorted(i for share in shares for group in share for i in group)
  assert assigned == list(range(start))
  counts = [sum(map(len, share)) for share in shares]
  assert max(counts) - min(counts) <= 1
  for share in shares:  # Each share keeps the group structure: a sub-list of one group each.
    assert all(any(set(g) <= set(group) for group in groups) for g in share)


def test_worker_index_must_be_in_range():
  with pytest.raises(sweep_files.SweepError, match=r'--worker_index=2 must be in \[0'):
    runner.worker_share([[0, 1]], 2, 2)


TRAIN_TRIALS = vectorized.train_trials


class Recorder:
  """Wraps `vectorized.train_trials`, recording the trials each call trains."""

  def __init__(self, monkeypatch, fail_if=None):
    self.calls = []
    real = TRAIN_TRIALS

    def train_trials(configs, *args, **kwargs):
      self.calls.append([(tuple(c.model.hidden_sizes), c.optimizer.learning_rate, c.seed)
                         for c in configs])
      if fail_if and any(fail_if(c) for c in configs):
        raise RuntimeError('out of memory (simulated)')
      return real(configs, *args, **kwargs)

    monkeypatch.setattr(vectorized, 'train_trials', train_trials)

  @property
  def trained(self):
    return sorted(t for call in self.calls for t in call)


@pytest.fixture(scope='module')
def finished_sweep(tmp_path_factory):
  """A sweep of 8 trials in 2 program groups, run by two workers into one folder."""
  root = tmp_path_factory.mktemp('sweep')
  sweep_path = root / 'sweep.py'
  sweep_path.write_text(SWEEP_FILE)
  workdir = str(root / 'run')
  dataset = synthetic_dataset(num_train=96, num_test=40)
  logs, calls = [], []
  with pytest.MonkeyPatch.context() as monkeypatch:
    recorder = Recorder(monkeypatch)
    for worker in (0, 1):
      lines = []
      rows = runner.run_sweep(_config(), str(sweep_path), workdir, num_workers=2,
                             worker_index=worker, devices=jax.devices()[:2], dataset=dataset,
                             log=lines.append)
      logs.append(lines)
      calls.append(list(recorder.calls))
      recorder.calls.clear()
  return {'sweep': str(sweep_path), 'workdir': workdir, 'dataset': dataset, 'logs': logs,
          'calls': calls, 'rows': rows}


def test_workers_train_every_trial_once(finished_sweep):
  per_worker = [sorted(t for call in calls for t in call) for calls in finished_sweep['calls']]
  assert [len(w) for w in per_worker] == [4, 4]
  assert len(set(per_worker[0] + per_worker[1])) == 8
  # Each worker's half is one program group: one compiled program each.
  assert [len(calls) for calls in finished_sweep['calls']] == [1, 1]
  assert 'worker 0 of 2: 4 of them here: 0 already finished, 4 to train' in finished_sweep['logs'][0][0]
  # The second worker's table holds both workers' trials.
  assert [r['status'] for r in finished_sweep['rows']] == ['done'] * 8


def test_trial_folders_hold_config_metrics_and_status(finished_sweep):
  workdir = finished_sweep['workdir']
  assert sorted(os.listdir(os.path.join(workdir, 'trials'))) == sorted(NAMES)
  for name in NAMES:
    directory = results.trial_dir(workdir, name)
    with open(os.path.join(directory, 'config.json')) as f:
      config = json.load(f)
    assert f"learning_rate={config['optimizer']['learning_rate']}" in name
    assert f"hidden_sizes={config['model']['hidden_sizes'][0]}," in name
    assert config['num_epochs'] == 2
    records = run_files.read_metrics(directory)
    assert [r['epoch'] for r in records] == [1, 2]
    assert set(run_files.METRIC_KEYS) <= set(records[0])
    assert results.read_status(directory) == 'done'
    with open(os.path.join(directory, 'summary.json')) as f:
      assert json.load(f)['test_accuracy'] == records[-1]['test_accuracy']
  with open(os.path.join(workdir, 'sweep.json')) as f:
    content = json.load(f)
  assert content['swept_keys'] == ['model.hidden_sizes', 'optimizer.learning_rate', 'seed']
  assert [t['program_group'] for t in content['trials']] == [0] * 4 + [1] * 4


def test_results_table_matches_the_trial_metrics(finished_sweep):
  workdir = finished_sweep['workdir']
  with open(os.path.join(workdir, 'results.csv')) as f:
    rows = list(csv.DictReader(f))
  with open(os.path.join(workdir, 'results.jsonl')) as f:
    json_rows = [json.loads(line) for line in f]
  # No validation split: not ranked, in sweep order (never ordered by test accuracy).
  assert [r['trial'] for r in rows] == [r['trial'] for r in json_rows]
  assert [r['trial'] for r in rows] == [r['trial'] for r in finished_sweep['rows']]
  assert sorted(r['trial'] for r in rows) == sorted(NAMES)
  for row, json_row in zip(rows, json_rows):
    final = run_files.read_metrics(results.trial_dir(workdir, row['trial']))[-1]
    for key in results.METRIC_COLUMNS:
      assert float(row[key]) == pytest.approx(final[key], rel=1e-12)
      assert json_row[key] == final[key]
    assert row['status'] == json_row['status'] == 'done'
    assert f"learning_rate={row['optimizer.learning_rate']}," in row['trial']
    assert json_row['model.hidden_sizes'] == [int(row['trial'].split('=')[1].split(',')[0])]
    assert row['seed'] == str(json_row['seed'])


def test_plots_and_leaderboard(finished_sweep):
  workdir = finished_sweep['workdir']
  for name in ('test_accuracy_vs_model.hidden_sizes', 'test_accuracy_vs_optimizer.learning_rate',
               'test_accuracy_heatmap'):
    assert_png(os.path.join(workdir, 'plots', f'{name}.png'))
  for name in ('test_accuracy_vs_seed', 'curves_best'):  # No best chosen on the test set.
    assert not os.path.exists(os.path.join(workdir, 'plots', f'{name}.png'))
  log = '\n'.join(finished_sweep['logs'][1])
  assert '8 trials: 8 done' in log
  assert f'8 trials: 8 done\n{aggregate.NOT_RANKED}\n' in log
  assert 'best' not in log
  first = finished_sweep['rows'][0]  # Listed in sweep order, test metrics as results only.
  listed = next(line for line in log.splitlines() if line.rstrip().endswith(first['trial']))
  assert f'{first["test_accuracy"]:.2%}' in listed
  assert '[trials: 4/4 finished (0 diverged, 0 failed), 0 running, 0 left' in log
  assert '4 running, 0 left' in log  # The progress line of an epoch.


def test_resume_reruns_only_unfinished_trials(finished_sweep, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_sweep['workdir'], workdir)
  dirs = [results.trial_dir(workdir, n) for n in NAMES]
  os.remove(os.path.join(dirs[1], 'status'))  # Killed before it finished.
  results.write_status(dirs[2], 'running')  # Killed mid-run, half its metrics written.
  with open(os.path.join(dirs[2], 'metrics.jsonl')) as f:
    first_line = f.readline()
  with open(os.path.join(dirs[2], 'metrics.jsonl'), 'w') as f:
    f.write(first_line)
  results.write_status(dirs[5], 'failed', 'RuntimeError: out of memory')
  untouched = {d: open(os.path.join(d, 'metrics.jsonl')).read() for d in (dirs[0], dirs[7])}
  recorder = Recorder(monkeypatch)
  lines = []
  rows = runner.run_sweep(_config(), finished_sweep['sweep'], workdir,
                         devices=jax.devices()[:2], dataset=finished_sweep['dataset'],
                         log=lines.append)
  assert recorder.trained == sorted([((16,), 1e-3, 1), ((16,), 1e-2, 0), ((8,), 1e-3, 1)])
  assert len(recorder.calls) == 2  # One call per program group.
  assert '8 of them here: 5 already finished, 3 to train' in lines[0]
  assert [r['status'] for r in rows] == ['done'] * 8
  for d in (dirs[1], dirs[2], dirs[5]):
    assert [r['epoch'] for r in run_files.read_metrics(d)] == [1, 2]
  for d, content in untouched.items():
    assert open(os.path.join(d, 'metrics.jsonl')).read() == content
  # Unfinished trials resume from their latest checkpoint (here the final one: nothing to train),
  # as a single run does; the others are not touched.
  for d in (dirs[1], dirs[2], dirs[5]):
    assert provenance.read(d)[-1]['resumed_from_step'] == 2 * 3
  for d in (dirs[0], dirs[7]):
    assert [p['resumed_from_step'] for p in provenance.read(d)] == [None]
    assert len([n for n in os.listdir(d) if n.startswith('events.out.tfevents.')]) == 1
  # A rerun trial gives what it gave the first time.
  first = run_files.read_metrics(results.trial_dir(finished_sweep['workdir'], NAMES[1]))
  again = run_files.read_metrics(dirs[1])
  assert [r['test_loss'] for r in again] == pytest.approx([r['test_loss'] for r in first],
                                                         rel=1e-5)


def test_resume_refuses_a_changed_config(finished_sweep, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_sweep['workdir'], workdir)
  config = _config()
  config.num_epochs = 3
  with pytest.raises(sweep_files.SweepError, match=r'was run with a different config \(num_epochs: '
                     r'2 -> 3\); use another --workdir'):
    runner.run_sweep(config, finished_sweep['sweep'], workdir, dataset=finished_sweep['dataset'],
                    log=lambda line: None)
  config = _config()
  config.data.cache_dir = '/elsewhere'  # Where the data comes from may differ between machines.
  rows = runner.run_sweep(config, finished_sweep['sweep'], workdir, log=lambda line: None)
  assert [r['status'] for r in rows] == ['done'] * 8


def test_a_failing_group_does_not_stop_the_others(finished_sweep, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_sweep['workdir'], workdir)
  for name in (NAMES[0], NAMES[4]):
    shutil.rmtree(results.trial_dir(workdir, name))
  Recorder(monkeypatch, fail_if=lambda c: c.model.hidden_sizes == (8,))
  lines = []
  rows = runner.run_sweep(_config(), finished_sweep['sweep'], workdir, devices=jax.devices()[:2],
                         dataset=finished_sweep['dataset'], log=lines.append)
  statuses = {r['trial']: r['status'] for r in rows}
  assert statuses[NAMES[0]] == 'done' and statuses[NAMES[4]] == 'failed'
  assert runner.failed_trials(rows) == [NAMES[4]]
  with open(os.path.join(results.trial_dir(workdir, NAMES[4]), 'status')) as f:
    assert 'RuntimeError: out of memory (simulated)' in f.read()
  assert any('1 failed (RuntimeError: out of memory (simulated))' in line for line in lines)
  recorder = Recorder(monkeypatch)  # The next run retries it.
  rows = runner.run_sweep(_config(), finished_sweep['sweep'], workdir, devices=jax.devices()[:2],
                         dataset=finished_sweep['dataset'], log=lambda line: None)
  assert recorder.trained == [((8,), 1e-3, 0)]
  assert [r['status'] for r in rows] == ['done'] * 8


def test_report_only_trains_nothing(finished_sweep, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_sweep['workdir'], workdir)
  os.remove(os.path.join(workdir, 'results.csv'))
  shutil.rmtree(results.trial_dir(workdir, NAMES[3]))
  recorder = Recorder(monkeypatch)
  rows = runner.run_sweep(_config(), finished_sweep['sweep'], workdir, report_only=True,
                         log=lambda line: None)
  assert recorder.calls == []
  assert [r['status'] for r in rows] == ['done'] * 3 + ['pending'] + ['done'] * 4
  assert os.path.exists(os.path.join(workdir, 'results.csv'))


def test_diverged_trials_are_recorded_and_not_rerun(tmp_path, monkeypatch):
  sweep_path = tmp_path / 'sweep.py'
  sweep_path.write_text("def get_sweep(hyper):\n"
                        "  return hyper.sweep('optimizer.learning_rate', [0.05, 1e7])\n")
  config = _config()
  config.num_epochs = 3
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.0
  dataset = synthetic_dataset(num_train=64, num_test=40)
  workdir = str(tmp_path / 'run')
  rows = runner.run_sweep(config, str(sweep_path), workdir, devices=jax.devices()[:1],
                         dataset=dataset, log=lambda line: None)
  assert [r['status'] for r in rows] == ['done', 'diverged']
  assert rows[1]['epoch'] == 1  # Its last finite epoch.
  with open(os.path.join(results.trial_dir(workdir, 'learning_rate=10000000.0'),
                         'status')) as f:
    assert f.read() == ('diverged\nloss or weights not finite at step 3 (epoch 2); training '
                        'stopped there.\n')
  recorder = Recorder(monkeypatch)
  runner.run_sweep(config, str(sweep_path), workdir, dataset=dataset, log=lambda line: None)
  assert recorder.calls == []


def test_sweep_script_end_to_end_and_resume(tmp_path):
  write_dataset_cache(tmp_path / 'cache', synthetic_dataset(num_train=64, num_test=30))
  sweep_path = tmp_path / 'sweep.py'
  sweep_path.write_text("def get_sweep(hyper):\n  return hyper.sweep('seed', [0, 1, 2])\n")
  command = [sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'),
             f'--config={os.path.join(REPO, "configs", "default.py")}', f'--sweep={sweep_path}',
             f'--workdir={tmp_path / "run"}', '--config.num_epochs=1', '--jax_cache_dir=',
             f'--config.data.cache_dir={tmp_path / "cache"}', '--config.data.download=False']
  first = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO)
  assert first.returncode == 0, first.stderr
  assert '3 trials: 3 done' in first.stdout
  with open(tmp_path / 'run' / 'results.csv') as f:
    assert [r['status'] for r in csv.DictReader(f)] == ['done'] * 3
  second = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO)
  assert second.returncode == 0, second.stderr
  assert '3 of them here: 3 already finished, 0 to train' in second.stdout


def test_benchmark_script_quick(tmp_path):
  write_dataset_cache(tmp_path / 'cache', synthetic_dataset(num_train=64, num_test=30))
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'benchmark_sweep.py'),
       f'--config={os.path.join(REPO, "configs", "default.py")}', '--quick', '--num_trials=2',
       f'--config.data.cache_dir={tmp_path / "cache"}', '--config.data.download=False',
       '--jax_cache_dir='],
      capture_output=True, text=True, timeout=240, cwd=REPO)
  assert result.returncode == 0, result.stderr
  assert '2 trials (1 program group(s)), 1 epoch(s), 64 training and 30 test examples' in (
      result.stdout)
  for label in ('vectorized:', 'one at a time:', 'scripts/sweep.py, once:',
                'scripts/train.py, once per trial:'):
    assert label in result.stdout
  # In one process, and as commands: each trial gives what it gives alone.
  assert result.stdout.count(
      'largest difference in final test accuracy between the two: 0.0000') == 2


def test_processes_of_a_multiprocess_run_share_the_sweep(tmp_path):
  """Two JAX processes (2 CPU devices each) split the trials by process index, train them on
  their own devices, and give what one process gives."""
  write_dataset_cache(tmp_path / 'cache', synthetic_dataset(num_train=64, num_test=30))
  sweep_path = tmp_path / 'sweep.py'
  sweep_path.write_text("def get_sweep(hyper):\n  return hyper.sweep('seed', [0, 1, 2, 3])\n")
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  procs = [subprocess.Popen(
      [sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'),
       f'--config={os.path.join(REPO, "configs", "default.py")}', f'--sweep={sweep_path}',
       f'--workdir={tmp_path / "run"}', '--config.num_epochs=1', '--jax_cache_dir=',
       f'--config.data.cache_dir={tmp_path / "cache"}', '--config.data.download=False',
       '--cpu_devices=2', '--distributed=on', f'--coordinator_address=localhost:{port}',
       '--num_processes=2', f'--process_id={i}', '--heartbeat_timeout_sec=10'],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
           for i in range(2)]
  try:
    outputs = [p.communicate(timeout=150)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [0, 0], outputs
  for i, output in enumerate(outputs):
    assert f'worker {i} of 2: 2 of them here: 0 already finished, 2 to train on 2 cpu' in output
  # Process 0 writes the results once both have finished; process 1 writes none.
  assert '4 trials: 4 done' in outputs[0] and '4 trials: ' not in outputs[1]
  with open(tmp_path / 'run' / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['status'] for r in rows] == ['done'] * 4
  # Each process saves the checkpoints of its own trials, alone.
  assert all(os.listdir(os.path.join(results.trial_dir(str(tmp_path / 'run'), r['trial']),
                                     'checkpoints')) for r in rows)
  config = _config()
  config.num_epochs = 1
  alone = runner.run_sweep(config, str(sweep_path), str(tmp_path / 'alone'),
                          devices=jax.devices()[:1],
                          dataset=synthetic_dataset(num_train=64, num_test=30),
                          log=lambda line: None)
  rows = sorted(rows, key=lambda r: r['trial'])  # results.csv lists the best first.
  for row, want in zip(rows, alone):
    assert row['trial'] == want['trial']
    assert float(row['test_loss']) == pytest.approx(want['test_loss'], rel=1e-5)


def _read_events(directory):
  """Every TensorBoard event in `directory`'s event files (TFRecord framing, read by hand)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = []
  for name in sorted(os.listdir(directory)):
    if name.startswith('events.out.tfevents.'):
      with open(os.path.join(directory, name), 'rb') as f:
        data = f.read()
      offset = 0
      while offset < len(data):
        length = int.from_bytes(data[offset:offset + 8], 'little')
        events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
        offset += 12 + length + 4
  return events


def test_trials_write_tensorboard_events_with_hparams(finished_sweep):
  for name in (NAMES[0], NAMES[5]):
    directory = results.trial_dir(finished_sweep['workdir'], name)
    events = _read_events(directory)
    scalars = {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value
               if v.HasField('simple_value')}
    for record in run_files.read_metrics(directory):
      assert scalars[('test/accuracy', record['step'])] == pytest.approx(record['test_accuracy'])
      assert scalars[('train/loss', record['step'])] == pytest.approx(record['train_loss'])
    plugins = [v.metadata.plugin_data.plugin_name for e in events for v in e.summary.value
               if v.metadata.plugin_data.plugin_name]
    assert plugins.count('hparams') == 3  # Experiment, session start and end.
    start = next(e for e in events for v in e.summary.value
                 if v.tag == '_hparams_/session_start_info')
    content = start.summary.value[0].metadata.plugin_data.content
    assert b'optimizer.learning_rate' in content and b'seed' in content


def test_sweep_writes_summary_and_report(finished_sweep):
  workdir = finished_sweep['workdir']
  with open(os.path.join(workdir, 'summary.csv')) as f:
    settings = list(csv.DictReader(f))
  assert len(settings) == 4 and {s['n'] for s in settings} == {'2'}
  for name in ('report.md', 'report.html', 'summary.jsonl'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  log = '\n'.join(finished_sweep['logs'][1])
  assert (f'{aggregate.NOT_RANKED}\n4 settings in sweep order, final test accuracy as a result '
          'only (mean over seed)') in log


def test_a_trial_folder_holds_what_its_single_run_writes(tmp_path):
  """One recorder: a trial's folder holds a run's files (but the run's curves plot), the same
  records, summary keys and status, and early stopping acts on both alike."""
  config = _config()
  config.num_epochs = 3
  config.data.validation_split = 16
  config.early_stopping.monitor = 'validation_accuracy'
  config.early_stopping.patience = 1
  config.early_stopping.restore_best_weights = True
  sweep_path = tmp_path / 'sweep.py'
  sweep_path.write_text("def get_sweep(hyper):\n  return hyper.sweep('seed', [3])\n")
  dataset = synthetic_dataset(num_train=96, num_test=40)
  runner.run_sweep(config, str(sweep_path), str(tmp_path / 'sweep'), devices=jax.devices()[:1],
                   dataset=dataset, log=lambda _: None)
  config.seed = 3
  train.train_and_evaluate(config, str(tmp_path / 'run'), devices=jax.devices()[:1],
                           dataset=dataset, log=lambda _: None)
  trial, run = results.trial_dir(str(tmp_path / 'sweep'), 'seed=3'), str(tmp_path / 'run')
  files = lambda d: {n if not n.startswith('events.') else 'events' for n in os.listdir(d)}
  assert files(trial) == files(run) - {'plots'}
  got, want = run_files.read_metrics(trial), run_files.read_metrics(run)
  assert [r['epoch'] for r in got] == [r['epoch'] for r in want]
  for g, w in zip(got, want):
    assert set(g) == set(w)
    for key in ('train_loss', 'validation_accuracy', 'test_accuracy'):
      assert g[key] == pytest.approx(w[key], rel=2e-5, abs=1e-6)
  summaries = [json.loads(open(os.path.join(d, run_files.SUMMARY_FILE)).read())
               for d in (trial, run)]
  assert set(summaries[0]) == set(summaries[1]) - {'parameters'}
  assert summaries[0]['early_stopping'] == summaries[1]['early_stopping']
  assert open(os.path.join(trial, 'status')).read() == open(os.path.join(run, 'status')).read()


def test_evaluate_predict_and_compare_work_on_trial_folders(tmp_path):
  """Trials are runs: each keeps its latest and best checkpoints, which scripts/evaluate.py
  (`--step best`) and predict read as a run's; compare takes trials and runs alike."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from mlp_mnist.tools import compare, prediction  # pylint: disable=g-import-not-at-top
  dataset = synthetic_dataset(num_train=96, num_test=40)
  write_dataset_cache(tmp_path / 'cache', dataset)
  config = _config()
  config.num_epochs = 3
  config.checkpoint.keep = 1
  config.data.cache_dir = str(tmp_path / 'cache')
  config.data.validation_split = 24.0  # The best checkpoint is chosen on it, never on the test set.
  sweep_path = tmp_path / 'sweep.py'
  sweep_path.write_text("def get_sweep(hyper):\n  return hyper.sweep('seed', [0, 1])\n")
  # The data its config names (the cache), which scripts/evaluate.py loads again.
  runner.run_sweep(config, str(sweep_path), str(tmp_path / 'sweep'), devices=jax.devices()[:1],
                   log=lambda _: None)
  trial = results.trial_dir(str(tmp_path / 'sweep'), 'seed=1')
  history = run_files.read_metrics(trial)
  best = min(history, key=lambda r: (r['validation_loss'], r['epoch']))  # Ties: the first.
  kept = sorted(int(n) for n in os.listdir(os.path.join(trial, 'checkpoints')) if n.isdigit())
  assert kept == sorted({best['step'], history[-1]['step']})
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'evaluate.py'), f'--workdir={trial}',
       '--step=best', '--json'], capture_output=True, text=True, timeout=120, cwd=REPO)
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  assert report['step'] == best['step'] and report['test_accuracy'] == best['test_accuracy']
  assert report['test_loss'] == pytest.approx(best['test_loss'], rel=1e-5)
  image = tmp_path / 'digit.png'
  Image.fromarray(dataset['test'][0][0].reshape(28, 28)).save(image)
  predicted = prediction.predict_files(trial, [str(image)], step='best',
                                       devices=jax.devices()[:1])
  assert 0 <= predicted[0]['label'] < 10, predicted
  other = results.trial_dir(str(tmp_path / 'sweep'), 'seed=0')
  table = compare.compare([trial, other], str(tmp_path / 'compare.png'))
  assert 'seed' in table and os.path.exists(tmp_path / 'compare.png')
