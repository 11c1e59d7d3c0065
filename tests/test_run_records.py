"""What a run leaves in its workdir: metrics, TensorBoard events, provenance, plots; process 0 only."""

import glob
import json
import os
import shutil
import struct
import subprocess
import sys

import jax
import pytest

from mlp_mnist import config_checks
from mlp_mnist import train
from mlp_mnist.records import plots
from mlp_mnist.records import provenance
from mlp_mnist.records import run_files
from mlp_mnist.records import tensorboard
from mlp_mnist.records import workdirs

from conftest import REPO, assert_png, synthetic_dataset


def _run(config, workdir, **kwargs):
  return train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1],
                                  dataset=synthetic_dataset(), log=lambda _: None, **kwargs)


def read_events(workdir):
  """Every event of the workdir's TensorBoard files, in file order (TFRecord framing)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = []
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    with open(path, 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      offset += 12  # length and its CRC
      events.append(event_pb2.Event.FromString(data[offset:offset + length]))
      offset += length + 4  # data and its CRC
  return events


def test_two_runs_write_identical_metrics_apart_from_timing(config, tmp_path):
  config.num_epochs = 3
  config.model.dropout_rate = 0.1
  _run(config, tmp_path / 'a')
  _run(config, tmp_path / 'b')
  first, second = (run_files.read_metrics(str(tmp_path / d)) for d in 'ab')
  assert [r['epoch'] for r in first] == [1, 2, 3]
  assert set(first[0]) - set(run_files.TIMING_KEYS) >= {'train_loss', 'test_loss', 'step'}
  assert [run_files.without_timing(r) for r in first] == [
      run_files.without_timing(r) for r in second]
  # Only the timing fields may differ, and the file is nothing but these records.
  assert set(run_files.TIMING_KEYS) == {'examples_per_sec', 'elapsed_sec'}
  with open(tmp_path / 'a' / 'metrics.jsonl') as f:
    assert len(f.read().splitlines()) == 3


def test_tensorboard_events_hold_the_metrics_and_the_config(config, tmp_path):
  config.num_epochs = 2
  result = _run(config, tmp_path)
  events = read_events(str(tmp_path))
  scalars = {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value
             if v.HasField('simple_value')}
  for record in result['history']:
    for key, tag in tensorboard.SCALAR_TAGS.items():
      if key.startswith('validation_'):  # Only with a validation split (test_datasets.py).
        assert (tag, record['step']) not in scalars
        continue
      assert scalars[(tag, record['step'])] == pytest.approx(record[key], rel=1e-6), tag
  hparams = {v.tag: v.metadata.plugin_data.content for e in events for v in e.summary.value
             if v.metadata.plugin_data.plugin_name == 'hparams'}
  assert set(hparams) == {'_hparams_/experiment', '_hparams_/session_start_info',
                          '_hparams_/session_end_info'}
  for key in (b'optimizer.learning_rate', b'model.hidden_sizes', b'batch_size'):
    assert key in hparams['_hparams_/experiment']
    assert key in hparams['_hparams_/session_start_info']
  for tag in tensorboard.HPARAM_METRICS:
    assert tag.encode() in hparams['_hparams_/experiment']


def test_tensorboard_shows_the_scalars_and_hparams_of_the_run(config, tmp_path):
  """Read with TensorBoard's own event reader and HParams plugin parsers."""
  pytest.importorskip('tensorboard')
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import api_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import metadata  # pylint: disable=g-import-not-at-top
  config.num_epochs = 2
  config.data.validation_split = 64  # Every built-in tag: 192 training examples, 6 steps.
  result = _run(config, tmp_path)
  events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={'scalars': 0})
  events.Reload()
  assert set(events.Tags()['scalars']) == set(tensorboard.SCALAR_TAGS.values())
  for key, tag in tensorboard.SCALAR_TAGS.items():
    shown = [(e.step, e.value) for e in events.Scalars(tag)]
    assert [s for s, _ in shown] == [r['step'] for r in result['history']] == [6, 12]
    assert [v for _, v in shown] == pytest.approx([r[key] for r in result['history']], rel=1e-6)
  content = events.PluginTagToContent(metadata.PLUGIN_NAME)
  experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
  assert {m.name.tag for m in experiment.metric_infos} == set(tensorboard.HPARAM_METRICS)
  start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
  flat = config_checks.flatten_config(json.loads(config.to_json_best_effort()))
  assert {h.name for h in experiment.hparam_infos} == set(start.hparams) == set(flat)
  assert start.hparams['optimizer.learning_rate'].number_value == 1e-3
  assert start.hparams['batch_size'].number_value == 32
  assert start.hparams['model.hidden_sizes'].string_value == '[128]'
  assert start.hparams['optimizer.name'].string_value == 'adam'
  assert start.hparams['data.use_cache'].bool_value is True
  end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
  assert end.status == api_pb2.STATUS_SUCCESS


def test_summary_and_console_give_the_parameter_overview(config, tmp_path):
  config.num_epochs = 1
  lines = []
  train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1],
                           dataset=synthetic_dataset(), log=lines.append)
  with open(tmp_path / run_files.SUMMARY_FILE) as f:
    parameters = json.load(f)['parameters']
  shapes = {'Dense_0/bias': [128], 'Dense_0/kernel': [784, 128], 'Dense_1/bias': [10],
            'Dense_1/kernel': [128, 10]}
  assert parameters == {'total': 784 * 128 + 128 + 128 * 10 + 10, 'shapes': shapes}
  lines = '\n'.join(lines).splitlines()
  start = lines.index('Parameters: 101,770')
  assert [line.split() for line in lines[start + 1:start + 5]] == [
      ['Dense_0/bias', '(128,)', '128'], ['Dense_0/kernel', '(784,', '128)', '100,352'],
      ['Dense_1/bias', '(10,)', '10'], ['Dense_1/kernel', '(128,', '10)', '1,280']]


def test_resumed_run_hides_later_events_of_the_interrupted_one(config, tmp_path):
  config.num_epochs = 2
  _run(config, tmp_path)
  config.num_epochs = 2
  _run(config, tmp_path)  # Nothing to train, but a new session of the same run.
  starts = [e.step for e in read_events(str(tmp_path)) if e.HasField('session_log')]
  assert starts == [1, 2 * 8 + 1]


def test_sessions_opened_in_one_second_are_read_in_the_order_they_were_opened(tmp_path):
  # TensorBoard reads a run's event files in name order, and a session's purge step must come after
  # the events it hides: names made within one second must sort as they were made.
  for session in range(20):
    tensorboard.BufferedTensorBoardWriter(str(tmp_path), purge_step=session).close()
  starts = [e.step for e in read_events(str(tmp_path)) if e.HasField('session_log')]
  assert starts == list(range(20))


def test_provenance_records_versions_devices_and_commit(config, tmp_path):
  config.num_epochs = 1
  _run(config, tmp_path)
  (record,) = provenance.read(str(tmp_path))
  assert record['packages']['jax'] == jax.__version__
  assert record['packages']['flax'] and record['packages']['optax']
  assert record['packages']['tensorflow-datasets']
  assert (record['platform'], record['device_kind'], record['device_count']) == ('cpu', 'cpu', 1)
  assert record['resumed_from_step'] is None and record['python']
  try:
    head = subprocess.run(['git', '-C', REPO, 'rev-parse', 'HEAD'], capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    head = None
  assert (record['git'] or {}).get('commit') == head


def test_resuming_on_another_device_count_warns(config, tmp_path):
  config.num_epochs = 2
  config.model.hidden_sizes = (8,)
  _run(config, tmp_path)
  shutil.rmtree(tmp_path / 'checkpoints' / '16')  # Killed before its last checkpoint.
  lines = []
  train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:2],
                           dataset=synthetic_dataset(), log=lines.append)
  warnings = [line for line in lines if line.startswith('warning')]
  assert len(warnings) == 1, lines
  assert 'was trained on 1 device(s) in 1 process(es) and resumes on 2 in 1' in warnings[0]
  assert [r['device_count'] for r in provenance.read(str(tmp_path))] == [1, 2]
  shutil.rmtree(tmp_path / 'checkpoints' / '16')
  lines = []  # On the devices it last ran on: no warning.
  train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:2],
                           dataset=synthetic_dataset(), log=lines.append)
  assert any('Resumed from the checkpoint' in line for line in lines)
  assert not [line for line in lines if line.startswith('warning')]


def test_curves_plot_is_written(config, tmp_path):
  config.num_epochs = 3
  _run(config, tmp_path)
  assert_png(tmp_path / 'plots' / 'curves.png', min_size=(600, 300))


_HISTORY = [{'epoch': e, 'train_loss': 1 / e, 'test_loss': 1.2 / e, 'train_accuracy': 1 - 0.1 / e,
             'test_accuracy': 1 - 0.12 / e} for e in (1, 2, 3)]


def test_curves_drawn_by_the_child_process_equal_those_drawn_here(tmp_path, monkeypatch):
  here = plots.save_curves(_HISTORY, str(tmp_path / 'here.png'), title='run')
  child = plots.CurvesProcess()
  with monkeypatch.context() as patched:  # The child draws; drawing here would fail.
    patched.setattr(plots, 'save_curves', lambda *_: pytest.fail('drawn here'))
    drawn = child.save_curves(_HISTORY, str(tmp_path / 'plots' / 'child.png'), title='run')
  assert (tmp_path / 'plots' / 'child.png').read_bytes() == (tmp_path / 'here.png').read_bytes()
  assert drawn == str(tmp_path / 'plots' / 'child.png') and here == str(tmp_path / 'here.png')
  # Once drawn, a second call draws here.
  child.save_curves(_HISTORY, str(tmp_path / 'again.png'), title='run')
  assert (tmp_path / 'again.png').read_bytes() == (tmp_path / 'here.png').read_bytes()


def test_curves_are_drawn_here_when_the_child_failed(tmp_path):
  child = plots.CurvesProcess()
  child._process.kill()  # pylint: disable=protected-access
  child.save_curves(_HISTORY, str(tmp_path / 'curves.png'), title='run')
  plots.save_curves(_HISTORY, str(tmp_path / 'here.png'), title='run')
  assert (tmp_path / 'curves.png').read_bytes() == (tmp_path / 'here.png').read_bytes()


def test_a_run_draws_its_curves_in_the_child_when_a_core_is_idle_for_it(config, tmp_path,
                                                                        monkeypatch):
  config.num_epochs = 2
  monkeypatch.delitem(sys.modules, 'matplotlib.figure', raising=False)
  monkeypatch.setattr(os, 'getloadavg', lambda: (0.0, 0.0, 0.0))
  monkeypatch.setattr(plots, 'save_curves', lambda *_: pytest.fail('drawn in the process'))
  result = _run(config, tmp_path / 'run')
  monkeypatch.undo()
  plots.save_curves(result['history'], str(tmp_path / 'here.png'), title=str(tmp_path / 'run'))
  assert (tmp_path / 'run' / 'plots' / 'curves.png').read_bytes() == (
      tmp_path / 'here.png').read_bytes()


def test_no_child_draws_on_a_busy_machine_or_where_matplotlib_is_loaded(monkeypatch):
  monkeypatch.delitem(sys.modules, 'matplotlib.figure', raising=False)
  cores = len(os.sched_getaffinity(0))
  monkeypatch.setattr(os, 'getloadavg', lambda: (cores - 0.5, 0.0, 0.0))
  assert plots.curves_process() is None
  monkeypatch.setattr(os, 'getloadavg', lambda: (cores - 1.0, 0.0, 0.0))
  child = plots.curves_process()
  assert isinstance(child, plots.CurvesProcess)
  child.close()
  monkeypatch.setitem(sys.modules, 'matplotlib.figure', object())
  assert plots.curves_process() is None


def test_a_child_that_never_draws_is_ended(tmp_path):
  child = plots.CurvesProcess()
  process = child._process  # pylint: disable=protected-access
  child.close()
  assert process.returncode is not None
  assert not list(tmp_path.iterdir())


def test_only_the_lead_process_writes(config, tmp_path, monkeypatch):
  monkeypatch.setattr(workdirs, 'is_lead_process', lambda: False)
  config.num_epochs = 1
  config.checkpoint.every_epochs = 0  # Checkpoints are orbax's collective saves.
  lines = []
  train.train_and_evaluate(config, str(tmp_path / 'run'), devices=jax.devices()[:1],
                           dataset=synthetic_dataset(), log=lines.append)
  assert lines == []
  written = [os.path.relpath(os.path.join(d, f), tmp_path) for d, _, files in os.walk(tmp_path)
             for f in files]
  assert written == []
