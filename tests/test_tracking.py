"""W&B (offline, its local files read back) and MLflow (a local file store, read back with its
client) mirror a run's records; a resumed run continues its tracked runs; a sweep logs one run per
trial; a tracker that fails is one warning and training goes on; nothing is imported unasked."""

import glob
import json
import os
import socket
import struct
import subprocess
import sys
import time

import jax
import pytest

from mlp_mnist import train
from mlp_mnist.records import run_files
from mlp_mnist.records import tracking
from mlp_mnist.sweeps import runner

from conftest import REPO, synthetic_dataset

wandb = pytest.importorskip('wandb')
mlflow = pytest.importorskip('mlflow')

STEPS_PER_EPOCH = 8  # 256 synthetic examples in batches of 32.


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  monkeypatch.setenv('WANDB_SILENT', 'true')
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('MLFLOW_ALLOW_FILE_STORE', 'true')  # MLflow 3 asks for it for `file:` URIs.


def _tracked(config, tmp_path, wandb_on=True, mlflow_on=True):
  config.tracking.wandb.enabled = wandb_on
  config.tracking.wandb.mode = 'offline'
  config.tracking.wandb.tags = ('test',)
  config.tracking.mlflow.enabled = mlflow_on
  config.tracking.mlflow.tracking_uri = f'file:{tmp_path}/mlruns'
  config.tracking.mlflow.tags = ('owner=tests',)
  return config


def _run(config, workdir, log=lambda _: None):
  return train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1],
                                  dataset=synthetic_dataset(), log=log)


def wandb_records(run_dir):
  """The records of a W&B offline run file (`run-<id>.wandb`: LevelDB log framing, 32 KiB
  blocks, each record a `wandb_internal_pb2.Record`)."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  (path,) = glob.glob(os.path.join(run_dir, 'run-*.wandb'))
  with open(path, 'rb') as f:
    data = f.read()
  assert data[:4] == b':W&B'
  records, pos, pending, block = [], 7, b'', 32768
  while pos + 7 <= len(data):
    left = block - pos % block
    _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
    if left < 7 or (length == 0 and kind == 0):
      pos += left  # The block's zero padding.
      continue
    pending += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):  # A whole record, or its last fragment.
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
      pending = b''
  return records


def wandb_history(records):
  """{step: {key: value}} of a W&B run's `run.log` calls."""
  rows = {}
  for r in records:
    if r.WhichOneof('record_type') == 'history':
      row = {'/'.join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
      rows[row['_step']] = {k: v for k, v in row.items() if not k.startswith('_')}
  return rows


def wandb_summary(records):
  summary = {}
  for r in records:
    if r.WhichOneof('record_type') == 'summary':
      for item in r.summary.update:
        summary['/'.join(item.nested_key) or item.key] = json.loads(item.value_json)
  return summary


class Interrupted(Exception):
  pass


def _stop_after_epoch(epoch):
  def log(line):
    if line.startswith(f'epoch {epoch:3d}'):
      raise Interrupted  # After the epoch's records are written, before its checkpoint.
  return log


def test_wandb_and_mlflow_mirror_the_run_and_a_resumed_run_continues_them(config, tmp_path,
                                                                          monkeypatch):
  config.num_epochs = 3
  config.logging.progress_bar = 'off'
  _tracked(config, tmp_path)
  workdir = tmp_path / 'run'
  opened, open_trackers = [], tracking.Trackers.__init__

  def init(self, *args, **kwargs):
    open_trackers(self, *args, **kwargs)
    opened.append(self)

  monkeypatch.setattr(tracking.Trackers, '__init__', init)
  with pytest.raises(Interrupted):
    _run(config, workdir, log=_stop_after_epoch(2))  # Epoch 2 is logged, not checkpointed.
  ids = json.loads((workdir / tracking.TRACKING_FILE).read_text())
  opened[0].close(failed=True)  # What the killed process's exit does.
  lines = []
  result = _run(config, workdir, log=lines.append)
  assert any('Resumed from the checkpoint at step 8' in line for line in lines)
  assert not [line for line in lines if line.startswith('warning')]
  again = json.loads((workdir / tracking.TRACKING_FILE).read_text())
  assert {s: again[s]['run_id'] for s in again} == {s: ids[s]['run_id'] for s in ids}
  history = run_files.read_metrics(str(workdir))
  expected = {r['step']: tracking.scalars(r) for r in history}
  assert sorted(expected) == [8, 16, 24]
  summary = json.loads((workdir / run_files.SUMMARY_FILE).read_text())

  # W&B: two offline sessions of one run; every step logged once, in order, as in metrics.jsonl.
  run_dirs = sorted(glob.glob(str(workdir / 'wandb' / 'offline-run-*')))
  assert len(run_dirs) == 2 and all(d.endswith(ids['wandb']['run_id']) for d in run_dirs)
  first, second = (wandb_records(d) for d in run_dirs)
  assert sorted(wandb_history(first)) == [8, 16] and sorted(wandb_history(second)) == [24]
  logged = {**wandb_history(first), **wandb_history(second)}
  for step, values in expected.items():
    if step == 16:  # Retrained after the resume, identical but for its timing: logged once.
      values = {**values, 'train/examples_per_sec': logged[16]['train/examples_per_sec']}
    assert logged[step] == pytest.approx(values, rel=1e-6)
  (run,) = [r.run for r in first if r.WhichOneof('record_type') == 'run']
  assert (run.project, run.display_name, list(run.tags)) == ('mlp_mnist', 'run', ['test'])
  config_items = {i.key: json.loads(i.value_json) for r in first
                  if r.WhichOneof('record_type') == 'config' for i in r.config.update}
  assert config_items['optimizer']['learning_rate'] == 1e-3
  assert config_items['model']['hidden_sizes'] == [128]
  final = wandb_summary(second)
  assert final['test_accuracy'] == summary['test_accuracy']
  assert final['parameters'] == summary['parameters']
  assert os.path.exists(os.path.join(run_dirs[1], 'files', 'curves.png'))

  # MLflow: one run, each step once, the config as parameters, summary and curves as artifacts.
  client = mlflow.tracking.MlflowClient(f'file:{tmp_path}/mlruns')
  run = client.get_run(ids['mlflow']['run_id'])
  assert run.info.status == 'FINISHED' and run.info.run_name == 'run'
  assert run.data.tags['owner'] == 'tests'
  assert run.data.params['optimizer.learning_rate'] == '0.001'
  assert run.data.params['model.hidden_sizes'] == '[128]'
  for tag in expected[8]:
    points = client.get_metric_history(run.info.run_id, tag)
    assert [p.step for p in points] == [8, 16, 24]
    if tag != 'train/examples_per_sec':
      assert [p.value for p in points] == pytest.approx([expected[p.step][tag] for p in points],
                                                        rel=1e-6)
  artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
  assert {'plots', run_files.SUMMARY_FILE} <= artifacts
  assert [a.path for a in client.list_artifacts(run.info.run_id, 'plots')] == ['plots/curves.png']
  assert len(client.search_runs([run.info.experiment_id])) == 1
  assert result['history'][-1]['test_accuracy'] == summary['test_accuracy']


def _closed_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_a_missing_package_or_an_unreachable_server_is_one_warning(config, tmp_path,
                                                                    monkeypatch):
  config.num_epochs = 2
  _tracked(config, tmp_path)
  monkeypatch.setitem(sys.modules, 'wandb', None)  # `import wandb` fails as if not installed.
  monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
  config.tracking.mlflow.tracking_uri = f'http://127.0.0.1:{_closed_port()}'
  lines = []
  result = _run(config, tmp_path / 'run', log=lines.append)
  warnings = [line for line in lines if line.startswith('warning')]
  assert len(warnings) == 2, warnings
  assert "W&B tracking is off" in warnings[0] and "pip install 'mlp_mnist[wandb]'" in warnings[0]
  assert 'MLflow tracking is off' in warnings[1] and 'training goes on' in warnings[1]
  assert [r['epoch'] for r in run_files.read_metrics(str(tmp_path / 'run'))] == [1, 2]
  assert result['history'][-1]['test_accuracy'] > 0.5
  assert not (tmp_path / 'run' / tracking.TRACKING_FILE).exists()


def test_an_unreachable_mlflow_server_is_one_warning_within_seconds(config, tmp_path,
                                                                     monkeypatch):
  """MLflow's own retries (about four minutes by default) never start: the connection is tried
  once, for at most `MLFLOW_CONNECT_TIMEOUT_SEC`."""
  config.num_epochs = 1
  _tracked(config, tmp_path, wandb_on=False)
  monkeypatch.delenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', raising=False)
  config.tracking.mlflow.tracking_uri = f'http://127.0.0.1:{_closed_port()}'
  lines = []
  start = time.monotonic()
  tracking.Trackers(config, str(tmp_path / 'run'), failures=tracking.Failures(lines.append))
  assert time.monotonic() - start < 30
  assert len(lines) == 1 and 'MLflow tracking is off' in lines[0], lines
  assert 'ConnectionError: cannot connect to http://127.0.0.1:' in lines[0]


def test_run_names_from_the_config_name_the_tracked_runs(config, tmp_path):
  config.num_epochs = 1
  _tracked(config, tmp_path)
  config.tracking.wandb.run_name = 'wandb-name'
  config.tracking.mlflow.run_name = 'mlflow-name'
  workdir = tmp_path / 'run'
  _run(config, workdir)
  ids = json.loads((workdir / tracking.TRACKING_FILE).read_text())
  client = mlflow.tracking.MlflowClient(f'file:{tmp_path}/mlruns')
  assert client.get_run(ids['mlflow']['run_id']).info.run_name == 'mlflow-name'
  (run_dir,) = glob.glob(str(workdir / 'wandb' / 'offline-run-*'))
  (run,) = [r.run for r in wandb_records(run_dir) if r.WhichOneof('record_type') == 'run']
  assert run.display_name == 'wandb-name'


def test_a_tracker_failing_mid_run_is_one_warning_and_its_run_is_marked_failed(
    config, tmp_path, monkeypatch):
  config.num_epochs = 3
  _tracked(config, tmp_path, wandb_on=False)
  calls = []

  def failing(self, step, record):
    calls.append(step)
    if step > STEPS_PER_EPOCH:
      raise ConnectionError('the tracking server went away')
    original(self, step, record)

  original = tracking.MlflowWriter.write_scalars
  monkeypatch.setattr(tracking.MlflowWriter, 'write_scalars', failing)
  lines = []
  _run(config, tmp_path / 'run', log=lines.append)
  warnings = [line for line in lines if line.startswith('warning')]
  assert warnings == ['warning: MLflow tracking is off for this run: ConnectionError: the '
                      'tracking server went away; training goes on without it.']
  assert calls == [8, 16]  # Not called again after it failed.
  assert len(run_files.read_metrics(str(tmp_path / 'run'))) == 3
  client = mlflow.tracking.MlflowClient(f'file:{tmp_path}/mlruns')
  (run,) = client.search_runs([client.get_experiment_by_name('mlp_mnist').experiment_id])
  assert run.info.status == 'FAILED'
  assert [p.step for p in client.get_metric_history(run.info.run_id, 'test/loss')] == [8]


def test_sweep_logs_one_tracked_run_per_trial_with_its_swept_values(config, tmp_path):
  config.num_epochs = 1
  _tracked(config, tmp_path)
  sweep_path = tmp_path / 'lr.py'
  sweep_path.write_text("def get_sweep(hyper):\n"
                        "  return hyper.sweep('optimizer.learning_rate', [0.001, 0.002])\n")
  workdir = tmp_path / 'lr_sweep'
  rows = runner.run_sweep(config, str(sweep_path), str(workdir), devices=jax.devices()[:1],
                          dataset=synthetic_dataset(), log=lambda _: None)
  client = mlflow.tracking.MlflowClient(f'file:{tmp_path}/mlruns')
  experiment = client.get_experiment_by_name('mlp_mnist').experiment_id
  runs = {r.data.tags['trial']: r for r in client.search_runs([experiment])}
  assert sorted(runs) == sorted(row['trial'] for row in rows)
  for row in rows:
    run = runs[row['trial']]
    assert run.info.run_name == row['trial'] and run.data.tags['sweep'] == 'lr_sweep'
    assert run.data.params['swept.optimizer.learning_rate'] == str(
        row['optimizer.learning_rate'])
    assert run.data.params['optimizer.learning_rate'] == str(row['optimizer.learning_rate'])
    assert run.data.metrics['test/accuracy'] == pytest.approx(row['test_accuracy'], rel=1e-6)
    assert run.info.status == 'FINISHED'
    trial_dir = workdir / 'trials' / row['trial']
    (run_dir,) = glob.glob(str(trial_dir / 'wandb' / 'offline-run-*'))
    records = wandb_records(run_dir)
    (wandb_run,) = [r.run for r in records if r.WhichOneof('record_type') == 'run']
    assert (wandb_run.run_group, wandb_run.display_name) == ('lr_sweep', row['trial'])
    assert wandb_history(records)[STEPS_PER_EPOCH]['test/accuracy'] == pytest.approx(
        row['test_accuracy'], rel=1e-6)
    assert wandb_summary(records)['test_accuracy'] == pytest.approx(row['test_accuracy'])


def test_tracking_config_is_checked(config):
  from mlp_mnist import config_checks  # pylint: disable=g-import-not-at-top
  config.tracking.wandb.mode = 'cloud'
  with pytest.raises(config_checks.ConfigError, match='tracking.wandb.mode'):
    config_checks.validate_config(config)
  config.tracking.wandb.mode = 'offline'
  config.tracking.mlflow.tags = ('',)
  with pytest.raises(config_checks.ConfigError, match='tracking.mlflow.tags'):
    config_checks.validate_config(config)


# A default run, to its end, in a fresh interpreter: which optional packages did it import?
IMPORTS = '''
import sys
sys.path[:0] = [{tests!r}, {configs!r}]
import default, fake_data, jax
from mlp_mnist import train
config = default.get_config()
config.num_epochs = 1
config.logging.progress_bar = 'on'
train.train_and_evaluate(config, {workdir!r}, dataset=fake_data.synthetic_dataset(num_train=64),
                         log=lambda _: None)
print(sorted(m for m in sys.modules if m.split('.')[0] in
             ('wandb', 'mlflow', 'tensorboard', 'IPython', 'ipywidgets') or m == 'tqdm.notebook'))
'''


def test_a_default_run_imports_no_tracker_nor_notebook_package(tmp_path):
  code = IMPORTS.format(tests=os.path.join(REPO, 'tests'), configs=os.path.join(REPO, 'configs'),
                        workdir=str(tmp_path / 'run'))
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=300, check=True).stdout
  assert out.strip().splitlines()[-1] == '[]'
