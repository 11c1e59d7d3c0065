"""Fault injection: damaged files of every kind in a workdir, storage errors, a code change.

Each test starts from a copy of one tiny trained workdir (checkpoints at steps 8 and 16) and checks
what issue 12 promises: damage is set aside and the previous checkpoint used, a mismatch or a
storage error stops with one line, and no good checkpoint is ever moved or deleted.
"""

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from mlp_mnist import config_checks
from mlp_mnist import data
from mlp_mnist import train
from mlp_mnist.records import checkpointing
from mlp_mnist.records import provenance
from mlp_mnist.records import run_files
from mlp_mnist.records import workdirs
from mlp_mnist.tools import evaluation

import default
from conftest import REPO, synthetic_dataset, write_dataset_cache
from test_checkpointing import _steps

NUM_DEVICES = 2
STEPS = [8, 16]  # 256 examples in batches of 32, two epochs.
QUIET = pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')


def _config(**overrides):
  config = default.get_config()
  config.update_from_flattened_dict({'num_epochs': 2, 'model.hidden_sizes': (16,),
                                     'eval_batch_size': 50, **overrides})
  return config


def _run(config, workdir, log=lambda _: None, **kwargs):
  return train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:NUM_DEVICES],
                                  dataset=synthetic_dataset(), log=log, **kwargs)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished two-epoch run: {'workdir', 'result'}; tests work on copies (`workdir` below)."""
  root = tmp_path_factory.mktemp('trained') / 'run'
  return {'workdir': root, 'result': _run(_config(), root)}


@pytest.fixture
def workdir(trained, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(trained['workdir'], copy)
  return copy


@pytest.fixture(scope='module')
def trained_best(tmp_path_factory):
  """As `trained`, with a best checkpoint (by validation loss), so each checkpoint carries orbax's
  metrics file."""
  root = tmp_path_factory.mktemp('trained_best') / 'run'
  return {'workdir': root, 'result': _run(_config(**{'early_stopping.monitor': 'validation_loss',
                                                     'data.validation_split': 16}), root)}


@pytest.fixture
def workdir_best(trained_best, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(trained_best['workdir'], copy)
  return copy


def _snapshot(root):
  """Every file under `root` with its bytes, by path relative to `root`."""
  return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob('*') if p.is_file()}


def _checkpoint_files(workdir):
  """Every checkpoint file, wherever it is now (kept or set aside), by step and relative path."""
  files = {}
  for parent in (checkpointing.CHECKPOINTS_DIR, checkpointing.CORRUPT_DIR):
    for step_dir in (workdir / parent).glob('*'):
      if step_dir.is_dir():
        step = step_dir.name.split('-')[0]
        files.update({(step, k): v for k, v in _snapshot(step_dir).items()})
  return files


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(x, y)


def _one_line(error):
  message = str(error.value)
  assert '\n' not in message and 'Traceback' not in message, message
  return message


def _damage(path, how):
  data = path.read_bytes()
  if how == 'truncate':
    path.write_bytes(data[:len(data) // 2])
  else:  # Flip 16 bytes in the middle: the size stays, the content does not.
    middle = len(data) // 2
    path.write_bytes(data[:middle] + bytes(b ^ 0x5A for b in data[middle:middle + 16])
                     + data[middle + 16:])


@QUIET
@pytest.mark.parametrize('how', ['truncate', 'garble'])
def test_each_damaged_checkpoint_file_restores_exactly_or_falls_back(trained, tmp_path, how):
  """Every file orbax writes, damaged in turn: the newest checkpoint restores bit for bit (the file
  is not needed) or it is set aside whole and the previous one restores; nothing is lost."""
  target = trained['result']['state']
  newest = trained['workdir'] / checkpointing.CHECKPOINTS_DIR / '16'
  names = sorted(str(p.relative_to(newest)) for p in newest.rglob('*') if p.is_file())
  assert {'_CHECKPOINT_METADATA', 'state/_METADATA', 'state/manifest.ocdbt',
          'run/metadata'} <= set(names)
  with contextlib.closing(
      checkpointing.Checkpointer(str(trained['workdir']), read_only=True)) as reader:
    previous = jax.device_get(reader.restore(target, 8)[0])
  fell_back = []
  for name in names:
    workdir = tmp_path / name.replace('/', '_')
    shutil.copytree(trained['workdir'], workdir)
    _damage(workdir / checkpointing.CHECKPOINTS_DIR / '16' / name, how)
    before = _checkpoint_files(workdir)
    warnings = []
    with contextlib.closing(checkpointing.Checkpointer(str(workdir))) as checkpoints:
      state, step, run = checkpoints.restore_latest(target, warnings.append)
    assert _checkpoint_files(workdir) == before, name  # Moved at most, never changed or deleted.
    if step == 16:
      assert not warnings and run['epoch'] == 2, name
      _assert_same(state, target)
    else:
      assert step == 8 and run['epoch'] == 1, name
      assert len(warnings) == 1 and 'cannot be restored' in warnings[0], (name, warnings)
      assert '\n' not in warnings[0]
      assert os.listdir(workdir / checkpointing.CORRUPT_DIR)[0].startswith('16-')
      assert _steps(workdir) == [8]
      _assert_same(state, previous)
      fell_back.append(name)
  # The array data, its index and orbax's metadata are needed; garbled data is caught by the
  # checksum saved with the run record, where orbax alone would restore other numbers.
  assert {'state/_METADATA', 'state/manifest.ocdbt', 'run/metadata'} <= set(fell_back)
  assert any(name.startswith('state/ocdbt.process_0/d/') for name in fell_back)


def test_damaged_metrics_file_is_one_line_read_only_and_set_aside_on_resume(trained_best,
                                                                           workdir_best):
  """orbax reads every checkpoint's metrics (the best checkpoint's value) when it opens them: a
  damaged file stops evaluation with one line, and the resumed run sets that checkpoint aside."""
  trained, workdir = trained_best, workdir_best
  _damage(workdir / checkpointing.CHECKPOINTS_DIR / '16' / checkpointing.METRICS_FILE, 'truncate')
  with pytest.raises(checkpointing.CheckpointError, match='damaged metrics file') as error:
    evaluation.load_run(str(workdir))
  assert '\n' not in str(error.value)
  assert (workdir / checkpointing.CHECKPOINTS_DIR / '16').is_dir()  # Read-only: nothing moved.
  with contextlib.closing(
      checkpointing.Checkpointer(str(workdir), best=('test_loss', 'min'))) as checkpoints:
    warnings = []
    _, step, _ = checkpoints.restore_latest(trained['result']['state'], warnings.append)
    assert step == 8 and checkpoints.steps() == [8] and checkpoints.best_step() == 8
  assert len(warnings) == 1 and 'metrics file is damaged' in warnings[0]
  assert os.listdir(workdir / checkpointing.CORRUPT_DIR)[0].startswith('16-')


def test_deleted_metrics_file_restores_exactly(trained_best, workdir_best):
  trained, workdir = trained_best, workdir_best
  (workdir / checkpointing.CHECKPOINTS_DIR / '16' / checkpointing.METRICS_FILE).unlink()
  with contextlib.closing(
      checkpointing.Checkpointer(str(workdir), best=('test_loss', 'min'))) as checkpoints:
    warnings = []
    state, step, _ = checkpoints.restore_latest(trained['result']['state'], warnings.append)
    assert step == 16 and not warnings and checkpoints.steps() == [8, 16]
    assert checkpoints.best_step() == 8  # The only one left with a metric.
  _assert_same(state, trained['result']['state'])


def test_structure_change_with_the_same_config_stops_with_one_line(workdir):
  """A code change that alters the state (here: a wider layer) while config.json says the same:
  one line naming the difference and --restart; nothing moved."""
  config = _config(**{'model.hidden_sizes': (24,)})
  run_files.write_config(str(workdir), config)  # As if the code's default had changed.
  before = _snapshot(workdir / checkpointing.CHECKPOINTS_DIR)
  with pytest.raises(checkpointing.CheckpointError) as error:
    _run(config, workdir)
  message = _one_line(error)
  assert message.startswith(f'checkpoint 16 in {workdir / "checkpoints"} does not match this code')
  assert 'params.Dense_0.kernel has shape (784, 16) in the checkpoint, (784, 24) here' in message
  assert '--restart' in message
  assert _snapshot(workdir / checkpointing.CHECKPOINTS_DIR) == before
  assert not (workdir / checkpointing.CORRUPT_DIR).exists()


def test_dtype_and_tree_differences_are_named(trained):
  target = trained['result']['state']
  with contextlib.closing(
      checkpointing.Checkpointer(str(trained['workdir']), read_only=True)) as checkpoints:
    half = target.replace(params=jax.tree.map(lambda x: x.astype(np.float16), target.params))
    assert ('params.Dense_0.bias has dtype float32 in the checkpoint, float16 here'
            in checkpoints.differences(half, 16))
    extra = target.replace(params={**target.params, 'Dense_9': {'bias': target.params[
        'Dense_0']['bias']}})
    assert 'params.Dense_9.bias is missing from the checkpoint' in checkpoints.differences(
        extra, 16)
    assert checkpoints.differences(target, 16) == []


@pytest.mark.parametrize('error', [
    OSError(errno.EIO, 'Input/output error'), TimeoutError('read timed out'),
    ValueError('UNAVAILABLE: Error reading "gs://bucket/run/checkpoints/16/state": 503')])
def test_transient_read_error_is_retried_and_resumes_normally(trained, workdir, monkeypatch,
                                                              error):
  original, calls = checkpointing.Checkpointer.restore, []

  def flaky(self, target, step=None):
    calls.append(step)
    if len(calls) <= 2:
      raise error
    return original(self, target, step)

  monkeypatch.setattr(checkpointing.Checkpointer, 'restore', flaky)
  monkeypatch.setattr(checkpointing, 'RETRY_DELAYS_SEC', (0.125, 0.25, 5.0))
  lines = []
  result = _run(_config(), workdir, log=lines.append)
  assert calls == [16, 16, 16]
  retries = [line for line in lines if 'retrying' in line]
  assert [line.split('retrying in ')[1] for line in retries] == ['0.125s.', '0.25s.']
  assert f'({type(error).__name__}: ' in retries[0]
  assert any('Resumed from the checkpoint at step 16' in line for line in lines)
  _assert_same(result['state'], trained['result']['state'])
  assert _steps(workdir) == STEPS and not (workdir / checkpointing.CORRUPT_DIR).exists()


def test_lasting_storage_error_stops_with_one_line_and_moves_nothing(workdir, monkeypatch):
  def denied(self, target, step=None):
    raise PermissionError(errno.EACCES, 'Permission denied')

  monkeypatch.setattr(checkpointing.Checkpointer, 'restore', denied)
  monkeypatch.setattr(checkpointing, 'RETRY_DELAYS_SEC', (0, 0))
  before = _snapshot(workdir)
  with pytest.raises(checkpointing.CheckpointError) as error:
    _run(_config(), workdir)
  message = _one_line(error)
  assert 'cannot read checkpoint 16' in message and 'after 3 attempts' in message
  assert 'left in place' in message
  assert _snapshot(workdir) == before


def test_damaged_config_json_is_one_line_naming_it(workdir):
  _damage(workdir / 'config.json', 'truncate')
  before = _snapshot(workdir)
  with pytest.raises(workdirs.WorkdirError) as error:
    _run(_config(), workdir)
  message = _one_line(error)
  assert message.startswith(f'{workdir / "config.json"} is damaged (JSONDecodeError')
  assert '--restart' in message and 'delete it' in message
  assert _snapshot(workdir) == before
  with pytest.raises(workdirs.WorkdirError):
    workdirs.load_config(str(workdir))  # What evaluate.py and predict.py read.


def test_damaged_metrics_jsonl_is_rewritten_from_the_checkpoint_on_resume(trained, workdir):
  path = workdir / run_files.METRICS_FILE
  good = path.read_text()
  path.write_text(good.replace('"epoch": 1', '"epoch": 1}}garbage', 1))
  with pytest.raises(workdirs.WorkdirError) as error:
    run_files.read_metrics(str(workdir))
  assert f'{path} is damaged at line 1' in _one_line(error)
  # An append cut short (no final newline) is left out, not an error.
  path.write_text(good + '{"epoch": 3, "ste')
  assert run_files.read_metrics(str(workdir)) == run_files.read_metrics(
      str(trained['workdir']))
  path.write_text('\0garbage' * 10)
  lines = []
  _run(_config(), workdir, log=lines.append)  # The checkpoint holds the history.
  assert any('nothing to train' in line for line in lines)
  assert path.read_text() == good


def test_damaged_provenance_is_kept_aside_and_started_afresh(workdir):
  path = workdir / provenance.PROVENANCE_FILE
  _damage(path, 'truncate')
  damaged = path.read_bytes()
  with pytest.raises(workdirs.WorkdirError) as error:
    provenance.read(str(workdir))
  assert str(path) in _one_line(error)
  lines = []
  _run(_config(), workdir, log=lines.append)
  warning = next(line for line in lines if line.startswith('warning: '))
  assert f'{path} is damaged' in warning and 'started a new one' in warning
  kept = list(workdir.glob('provenance.json.damaged-*'))
  assert len(kept) == 1 and kept[0].read_bytes() == damaged
  assert [p['resumed_from_step'] for p in provenance.read(str(workdir))] == [16]


@pytest.mark.parametrize('error, remedy', [
    (PermissionError(errno.EACCES, 'Permission denied'), 'make the workdir writable'),
    (OSError(errno.EROFS, 'Read-only file system'), 'make the workdir writable'),
    (OSError(errno.ENOSPC, 'No space left on device'), 'free disk space')])
def test_unwritable_workdir_is_one_line_and_changes_nothing(workdir, monkeypatch, error, remedy):
  def fail(path, text):
    raise error

  monkeypatch.setattr(run_files, 'write_file', fail)
  before = _snapshot(workdir)
  with pytest.raises(workdirs.WorkdirError) as raised:
    _run(_config(), workdir)
  message = _one_line(raised)
  assert message.startswith(f'cannot write {workdir / "config.json"} ({error.strerror}); {remedy}')
  assert 'rerun the same command' in message
  assert _snapshot(workdir) == before


def test_disk_full_mid_run_keeps_every_checkpoint_and_record(trained, workdir, monkeypatch):
  """The disk fills while epoch 3 is written: its metrics, or its checkpoint."""
  run_files.write_config(str(workdir), _config(num_epochs=3))  # A 3-epoch run stopped after 2.
  write_file = run_files.write_file

  def full_for_metrics(path, text):
    if path.name.startswith(f'.{run_files.METRICS_FILE}') and '"epoch": 3' in text:
      raise OSError(errno.ENOSPC, 'No space left on device')
    write_file(path, text)

  monkeypatch.setattr(run_files, 'write_file', full_for_metrics)
  with pytest.raises(workdirs.WorkdirError) as error:
    _run(_config(num_epochs=3), workdir)
  assert 'metrics.jsonl (No space left on device); free disk space' in _one_line(error)
  assert _steps(workdir) == STEPS
  assert (run_files.read_metrics(str(workdir))
          == run_files.read_metrics(str(trained['workdir'])))
  assert not list(workdir.glob('.*.tmp-*'))

  monkeypatch.setattr(run_files, 'write_file', write_file)
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  def full(*args, **kwargs):
    raise ValueError('UNKNOWN: Error writing local file "/x/d/3a73": No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full)
  with pytest.raises(checkpointing.CheckpointError) as error:
    _run(_config(num_epochs=3), workdir)
  message = _one_line(error)
  assert message.startswith(f'cannot save checkpoint 24 in {workdir / "checkpoints"}')
  assert 'the earlier checkpoints are kept' in message
  assert _steps(workdir) == STEPS


def _train_script_patched_by(code: str, tmp_path):
  """scripts/train.py (one epoch of a small MLP on the cached synthetic data, workdir
  tmp_path/run) run by `code`, which patches a layer of the program before it starts it."""
  return subprocess.run(
      [sys.executable, '-c', code, os.path.join(REPO, 'scripts', 'train.py'),
       f'--config={os.path.join(REPO, "configs", "default.py")}', '--config.num_epochs=1',
       f'--config.data.cache_dir={tmp_path / "cache"}', f'--workdir={tmp_path / "run"}',
       '--config.model.hidden_sizes=(16,)', '--jax_cache_dir='],
      capture_output=True, text=True, timeout=180, cwd=REPO,
      env={**os.environ, 'PYTHONPATH': REPO})


def test_full_disk_in_the_train_script_is_one_line_and_exit_2(tmp_path):
  write_dataset_cache(tmp_path / 'cache', synthetic_dataset())
  code = ('import errno, runpy, sys\n'
          'from mlp_mnist.records import run_files\n'
          'def full(path, text):\n'
          '  raise OSError(errno.ENOSPC, "No space left on device")\n'
          'run_files.write_file = full\n'
          'sys.argv = sys.argv[1:]\n'
          'runpy.run_path(sys.argv[0], run_name="__main__")\n')
  result = _train_script_patched_by(code, tmp_path)
  assert result.returncode == 2, result.stderr
  assert result.stderr.startswith(f'error: cannot write {tmp_path / "run" / "config.json"} '
                                  '(No space left on device); free disk space'), result.stderr
  assert result.stderr.count('\n') == 1 and 'Traceback' not in result.stderr


@pytest.mark.parametrize('key', ['optimizer.learning_rate', 'optimizer.weight_decay',
                                 'model.dropout_rate', 'optimizer.warmup_epochs'])
@pytest.mark.parametrize('value', [float('inf'), float('-inf'), float('nan')])
def test_non_finite_config_floats_are_one_line_errors(key, value):
  config = _config(**{key: value})
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.validate_config(config)
  assert _one_line(error).startswith(f'config.{key}={value!r} is not a finite number')


def test_remote_set_aside_copies_then_removes(tmp_path, monkeypatch):
  """On remote storage a checkpoint is copied under corrupt_checkpoints/ file by file, and the
  source removed only after every copy (a local path stands in for gs:// here)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  source = tmp_path / 'checkpoints' / '16'
  (source / 'state' / 'd').mkdir(parents=True)
  (source / 'state' / 'd' / 'chunk').write_bytes(b'\1\2\3')
  (source / '_CHECKPOINT_METADATA').write_text('{}')
  before = _snapshot(source)
  path_type = type(epath.Path(tmp_path))
  original = path_type.copy
  copied = []

  def copy(self, dst, overwrite=False):
    copied.append(self.name)
    assert source.exists()  # Nothing removed before every file is copied.
    return original(self, dst, overwrite=overwrite)

  monkeypatch.setattr(path_type, 'copy', copy)
  target = epath.Path(tmp_path) / 'corrupt_checkpoints' / '16-x'
  checkpointing.move_tree(epath.Path(source), target, remote=True)
  assert sorted(copied) == ['_CHECKPOINT_METADATA', 'chunk']
  assert not source.exists() and _snapshot(tmp_path / 'corrupt_checkpoints' / '16-x') == before


# Issue 23: tracebacks where one line was promised.

def _evaluate(workdir, **kwargs):
  return evaluation.evaluate_run(str(workdir), devices=jax.devices()[:NUM_DEVICES],
                                 dataset=synthetic_dataset(), **kwargs)


@pytest.mark.parametrize('error', [OSError(errno.ENOSPC, 'No space left on device'),
                                   PermissionError(errno.EACCES, 'Permission denied')])
def test_unwritable_or_full_cache_warns_once_and_trains_without_it(tmp_path, monkeypatch, capsys,
                                                                   error):
  """The decoded cache's write fails midway (a full disk) or at once (HOME not writable)."""
  import zipfile  # pylint: disable=g-import-not-at-top
  from mlp_mnist.data import pipeline  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(pipeline, '_load_from_tfds',
                      lambda data_config: synthetic_dataset())
  if error.errno == errno.ENOSPC:
    def full(*args, **kwargs):  # The archive file exists, partly written, when the disk fills.
      raise error
    monkeypatch.setattr(zipfile.ZipFile, 'open', full)
  else:
    makedirs = os.makedirs

    def unwritable(path, *args, **kwargs):
      if str(path).startswith(str(tmp_path / 'cache')):
        raise error
      return makedirs(path, *args, **kwargs)
    monkeypatch.setattr(os, 'makedirs', unwritable)
  config = _config(**{'data.cache_dir': str(tmp_path / 'cache')})
  lines = []
  train.train_and_evaluate(config, str(tmp_path / 'run'), devices=jax.devices()[:NUM_DEVICES],
                           log=lines.append)
  warnings = capsys.readouterr().err.strip().splitlines()
  assert len(warnings) == 1 and warnings[0].startswith(
      f'warning: cannot write the dataset cache {tmp_path / "cache"}'), warnings
  assert f'({error.strerror}); training goes on without it' in warnings[0]
  assert not list(tmp_path.rglob('*.tmp*')), list(tmp_path.rglob('*'))
  assert any(line.startswith('Final test accuracy') for line in lines)


@pytest.mark.parametrize('how', ['truncate', 'garble', 'empty object'])
def test_damaged_dataset_json_is_one_line_naming_it(workdir, how):
  path = workdir / run_files.DATASET_FILE
  if how == 'empty object':
    path.write_text('{}')
  else:
    _damage(path, how)
  before = _snapshot(workdir)
  for action in (lambda: _run(_config(), workdir), lambda: _evaluate(workdir)):
    with pytest.raises(workdirs.WorkdirError) as error:
      action()
    message = _one_line(error)
    assert message.startswith(f'{path} is damaged (') and 'delete it' in message
  assert _snapshot(workdir) == before


@QUIET
def test_evaluate_and_predict_on_a_damaged_checkpoint_are_one_line_and_move_nothing(workdir,
                                                                                    tmp_path):
  from mlp_mnist.tools import prediction  # pylint: disable=g-import-not-at-top
  arrays = max((workdir / 'checkpoints' / '16' / 'state').rglob('ocdbt.process_0/d/*'),
               key=lambda p: p.stat().st_size)
  _damage(arrays, 'truncate')
  before = _snapshot(workdir)
  for action in (lambda: _evaluate(workdir, plots_dir=str(tmp_path)),
                 lambda: prediction.predict_files(str(workdir), [], devices=jax.devices()[:1])):
    with pytest.raises(checkpointing.CheckpointError) as error:
      action()
    message = _one_line(error)
    assert message.startswith(f'checkpoint 16 in {workdir / "checkpoints"} is damaged (')
    assert 'evaluate another --step (the workdir has steps 8, 16)' in message
  assert _snapshot(workdir) == before
  assert _evaluate(workdir, step=8, plots_dir=str(tmp_path))['step'] == 8


def test_evaluate_on_a_checkpoint_whose_shapes_differ_from_config_json_is_one_line(workdir):
  config = run_files.read_config(str(workdir))
  config['model']['hidden_sizes'] = [24]
  (workdir / 'config.json').write_text(json.dumps(config))
  before = _snapshot(workdir)
  with pytest.raises(checkpointing.CheckpointError) as error:
    _evaluate(workdir)
  message = _one_line(error)
  assert message.startswith(f'checkpoint 16 in {workdir / "checkpoints"} does not match the '
                            "run's config.json")
  assert 'params.Dense_0.kernel has shape (784, 16) in the checkpoint, (784, 24) here' in message
  assert _snapshot(workdir) == before


def test_evaluate_on_a_read_only_workdir_reports_and_skips_the_plots(trained, workdir,
                                                                    monkeypatch):
  from etils import epath  # pylint: disable=g-import-not-at-top

  def read_only(self, data):
    raise OSError(errno.EROFS, 'Read-only file system')

  monkeypatch.setattr(type(epath.Path(workdir)), 'write_bytes', read_only)
  report = _evaluate(workdir)
  assert report['test_accuracy'] == trained['result']['history'][-1]['test_accuracy']
  assert report['plots'] == {}
  assert report['warnings'] == [
      f'warning: cannot write the plots into {workdir / "plots"} (Read-only file system); skipped '
      'them (make it writable or free disk space to get them).']
  assert 'test accuracy' in evaluation.format_report(report)


def test_workdir_that_is_a_file_is_one_line_and_exit_2(tmp_path):
  write_dataset_cache(tmp_path / 'cache', synthetic_dataset())
  (tmp_path / 'run').write_text('not a folder')
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'train.py'),
       f'--config={os.path.join(REPO, "configs", "default.py")}', '--config.num_epochs=1',
       f'--config.data.cache_dir={tmp_path / "cache"}', f'--workdir={tmp_path / "run"}',
       '--jax_cache_dir='], capture_output=True, text=True, timeout=180, cwd=REPO)
  assert result.returncode == 2, result.stderr
  assert result.stderr == (f'error: {tmp_path / "run"} is a file, not a folder; give a folder as '
                           '--workdir (a new one, or that of the run to resume).\n')
  assert (tmp_path / 'run').read_text() == 'not a folder'
  from mlp_mnist.sweeps import runner  # pylint: disable=g-import-not-at-top
  sweep_path = tmp_path / 'sweep.py'
  sweep_path.write_text("def get_sweep(hyper):\n  return hyper.sweep('seed', [0, 1])\n")
  with pytest.raises(workdirs.WorkdirError) as error:
    runner.run_sweep(_config(), str(sweep_path), str(tmp_path / 'run'),
                     dataset=synthetic_dataset(), log=lambda _: None)
  assert _one_line(error).startswith(f'{tmp_path / "run"} is a file, not a folder')


@pytest.mark.parametrize('where', ['compile', 'first call'])
def test_a_run_that_does_not_fit_in_memory_is_one_line_and_the_fixed_rerun_needs_no_restart(
    tmp_path, monkeypatch, capsys, where):
  """XLA's RESOURCE_EXHAUSTED at compile time or at the first call of the train step."""
  from mlp_mnist import cli  # pylint: disable=g-import-not-at-top
  from mlp_mnist.devices import compilation  # pylint: disable=g-import-not-at-top
  write_dataset_cache(tmp_path / 'cache', synthetic_dataset())
  config = _config(**{'data.cache_dir': str(tmp_path / 'cache'), 'batch_size': 64})
  exhausted = jax.errors.JaxRuntimeError(
      'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 68719476736 bytes.')

  def out_of_memory(*args, **kwargs):
    raise exhausted

  if where == 'compile':
    monkeypatch.setattr(compilation, 'compile_program', out_of_memory)
  else:
    monkeypatch.setattr(train.Trainer, 'train_steps', out_of_memory)
  with pytest.raises(SystemExit) as exit_status:
    cli.run_training(config, str(tmp_path / 'run'))
  assert exit_status.value.code == 2
  assert capsys.readouterr().err == (
      'error: the run does not fit in memory (JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory '
      'while trying to allocate 68719476736 bytes.); lower batch_size (now 64), eval_batch_size '
      '(now 50) or the width (model.hidden_sizes=(16,)), then rerun: a workdir without a '
      'checkpoint yet takes the new config without --restart.\n')
  assert (tmp_path / 'run' / 'config.json').exists()  # Written before the failure.
  monkeypatch.undo()
  config.batch_size = 32
  cli.run_training(config, str(tmp_path / 'run'))  # No --restart.
  assert run_files.read_config(str(tmp_path / 'run'))['batch_size'] == 32
  assert _steps(tmp_path / 'run') == STEPS


def test_a_seed_too_large_for_uint32_is_a_one_line_config_error():
  config_checks.validate_config(_config(seed=2**32 - 1))
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.validate_config(_config(seed=2**32))
  assert _one_line(error) == ('config.seed=4294967296 is invalid: it must be an integer in '
                              '[0, 2**32) (JAX seeds are uint32).')


def test_an_npz_image_dimension_of_zero_is_one_line(tmp_path):
  path = tmp_path / 'zero.npz'
  np.savez(path, x_train=np.zeros((4, 28, 0), np.uint8), y_train=np.arange(4) % 2,
           x_test=np.zeros((2, 28, 0), np.uint8), y_test=np.arange(2))
  with pytest.raises(data.DataError) as error:
    data.load_dataset(_config(**{'data.npz_path': str(path)}).data)
  assert _one_line(error).endswith('x_train has shape (4, 28, 0), an image dimension of zero; '
                                   'every image needs a height, a width (and channels) of at '
                                   'least 1.')


@pytest.mark.parametrize('how', ['truncate', 'garble', 'delete'])
def test_a_damaged_tfds_data_directory_is_one_line(tmp_path, how):
  """A tfrecord of a prepared TFDS dataset truncated, garbled or missing."""
  from test_data import _write_idx_dir  # pylint: disable=g-import-not-at-top
  _write_idx_dir(tmp_path / 'idx', synthetic_dataset(num_train=40, num_test=12, seed=3))
  data_config = _config(**{'data.data_dir': str(tmp_path / 'tfds'), 'data.use_cache': False,
                           'data.download': False}).data
  data.prepare_from_idx(str(tmp_path / 'idx'), data_config.data_dir)  # scripts/prepare_data.py
  (record,) = (tmp_path / 'tfds').rglob('mnist-train.tfrecord-*')
  if how == 'delete':
    record.unlink()
  else:
    _damage(record, how)
  with pytest.raises(data.DataError) as error:
    data.load_dataset(data_config)
  message = _one_line(error)
  assert message.startswith(f'the TFDS data of mnist/3.0.1 in {record.parent} is damaged (')
  assert 'delete that folder and prepare it again' in message


def test_full_disk_in_orbax_save_threads_is_one_line_without_their_tracebacks(tmp_path):
  """tensorstore fails to write the arrays inside orbax's save threads (as on a full disk): orbax
  logs it on each thread and asyncio on each write task; the script prints only the one line."""
  write_dataset_cache(tmp_path / 'cache', synthetic_dataset())
  code = ('import runpy, sys\n'
          'import tensorstore\n'
          'original = tensorstore.open\n'
          'def full(spec, *args, **kwargs):\n'
          '  if "orbax-checkpoint-tmp" in str(spec):\n'
          '    raise ValueError("RESOURCE_EXHAUSTED: Error writing \\"step/0\\" in OCDBT database: '
          'Failed to write 95920 bytes to file 17: No space left on device")\n'
          '  return original(spec, *args, **kwargs)\n'
          'tensorstore.open = full\n'
          'sys.argv = sys.argv[1:]\n'
          'runpy.run_path(sys.argv[0], run_name="__main__")\n')
  result = _train_script_patched_by(code, tmp_path)
  assert result.returncode == 2, result.stderr
  assert result.stderr.startswith(f'error: cannot save checkpoint 8 in {tmp_path / "run"}'), (
      result.stderr)
  assert result.stderr.count('\n') == 1 and 'Traceback' not in result.stderr, result.stderr
