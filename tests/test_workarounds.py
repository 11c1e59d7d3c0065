"""mlp_mnist/workarounds.py: each reach past a dependency's public API still does what it is for;
an upgrade that breaks one fails here (or in the tests its docstring names)."""

import errno
from importlib import metadata
import logging
import os
import subprocess
import sys
import types

import ml_collections
from packaging import version
import pytest
from etils import epath

from mlp_mnist import workarounds
from mlp_mnist.records import checkpointing

from conftest import REPO


def test_jax_cluster_types_are_those_jax_detects():
  names = [env.name for env in workarounds.jax_cluster_types()]
  assert {'slurm', 'ompi', 'mpi4py', 'tpu'} <= set(names)


def test_unfinished_saves_are_removed_before_the_checkpointer_returns(tmp_path):
  unfinished = tmp_path / checkpointing.CHECKPOINTS_DIR / '5.orbax-checkpoint-tmp' / 'state'
  unfinished.mkdir(parents=True)
  checkpointing.Checkpointer(str(tmp_path)).close()
  assert not os.listdir(tmp_path / checkpointing.CHECKPOINTS_DIR)


def test_a_failed_cleanup_of_unfinished_saves_is_one_line(tmp_path, monkeypatch):
  (tmp_path / checkpointing.CHECKPOINTS_DIR / '5.orbax-checkpoint-tmp').mkdir(parents=True)

  def denied(path, *_, **__):
    raise PermissionError(errno.EACCES, 'Permission denied', str(path))
  monkeypatch.setattr(type(epath.Path(tmp_path)), 'rmtree', denied)
  # Without the wait the error would stay in orbax's thread and the constructor would return.
  with pytest.raises(checkpointing.CheckpointError,
                     match='cannot clean up unfinished saves .* Permission denied') as error:
    checkpointing.Checkpointer(str(tmp_path))
  assert '\n' not in str(error.value)


def _unraisable(filename, exc_value):
  code = compile('pass', filename, 'exec')
  return types.SimpleNamespace(object=types.SimpleNamespace(cr_code=code), exc_value=exc_value,
                               exc_type=type(exc_value), exc_traceback=None, err_msg=None)


def test_unraisable_exceptions_other_than_orbax_reads_are_still_reported(monkeypatch):
  reported = []
  monkeypatch.setattr(sys, 'unraisablehook', reported.append)
  workarounds.ignore_reads_finishing_after_a_failed_restore()
  workarounds.ignore_reads_finishing_after_a_failed_restore()  # Installed once.
  orbax_read = _unraisable(f'{os.sep}site-packages{os.sep}orbax{os.sep}x.py', ValueError('read'))
  closed_loop = _unraisable('mine.py', RuntimeError('Event loop is closed'))
  other = _unraisable('mine.py', ValueError('a bug'))
  for unraisable in (orbax_read, closed_loop, other):
    sys.unraisablehook(unraisable)
  assert reported == [other]


def _record(pathname, error):
  record = logging.LogRecord('absl', logging.ERROR, pathname, 1, 'save failed', (), None)
  record.exc_info = (type(error), error, None)
  return record


def test_storage_traceback_filter_drops_only_orbax_storage_errors():
  keep = workarounds.storage_traceback_filter(checkpointing.is_storage_error)
  orbax = f'{os.sep}orbax{os.sep}checkpoint{os.sep}x.py'
  full = OSError(errno.ENOSPC, 'No space left on device')
  assert not keep(_record(orbax, full))
  assert keep(_record(orbax, ValueError('a bug')))
  assert keep(_record('mine.py', full))


@pytest.mark.parametrize('how', ['item', 'attribute'])
def test_unknown_config_key_reads_ml_collections_errors(how):
  config = ml_collections.ConfigDict({'learning_rate': 0.1, 'seed': 0})
  config.lock()
  for name, expected in (('learnin_rate', 'learning_rate'), ('nope', None)):
    with pytest.raises((KeyError, AttributeError)) as error:
      _ = config[name] if how == 'item' else getattr(config, name)
    assert workarounds.unknown_config_key(error.value) == (name, expected)


def test_ml_dtypes_is_not_the_release_that_imports_slowly_with_this_numpy():
  """pyproject.toml keeps ml_dtypes below 0.7 on Python 3.11, whose newest numpy is 2.4: that pair
  spends half a second of every `import jax` registering ml_dtypes' numpy loops."""
  numpy_version = version.Version(metadata.version('numpy'))
  if numpy_version >= version.Version('2.5'):
    pytest.skip(f'numpy {numpy_version} registers ml_dtypes 0.7 loops fast')
  assert version.Version(metadata.version('ml_dtypes')) < version.Version('0.7')


_TENSORBOARDX_IMPORT_CHECK = '''
import subprocess
import sys
from mlp_mnist import workarounds
{before}
workarounds.import_tensorboardx_without_unused_imports()
from tensorboardX import summary, event_file_writer
print(*(name in sys.modules for name in workarounds.TENSORBOARDX_UNUSED_IMPORTS))
import torch, google.cloud.storage, boto3
print(torch.IMPORTED, google.cloud.storage.IMPORTED, boto3.IMPORTED)
'''


_EVENT_FILE_CHECK = '''
import sys
from mlp_mnist import workarounds
from mlp_mnist.records import tensorboard
{before}
tensorboard.import_in_background()
writer = tensorboard.BufferedTensorBoardWriter({logdir!r})
writer.write_hparams({{'seed': 0}})
writer.write_scalars(1, {{'train_loss': 0.5}})
writer.close()
print(*(name in sys.modules for name in workarounds.TENSORBOARDX_UNUSED_IMPORTS))
'''


def _python_output(code: str, *first_on_path) -> str:
  """What a fresh Python process running `code` prints, with `first_on_path` (stand-in packages)
  and then the repository on its path."""
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([*map(str, first_on_path), REPO])}
  return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                        check=True).stdout


@pytest.mark.parametrize('loaded_first', [False, True])
def test_tensorboardx_is_imported_without_unused_imports_unless_loaded(tmp_path, loaded_first):
  """Stand-in torch, google.cloud.storage and boto3 packages: tensorboardX imports each when it
  can; the workaround keeps them out (and later imports of them still work), and leaves those
  loaded before alone."""
  for package in ('torch', 'google/cloud/storage', 'boto3'):  # google, google.cloud: namespaces.
    (tmp_path / package).mkdir(parents=True)
    (tmp_path / package / '__init__.py').write_text('IMPORTED = True\nTensor = object\n')
  run = lambda code: _python_output(code, tmp_path).split()
  before = 'import torch, google.cloud.storage, boto3' if loaded_first else ''
  assert run(_TENSORBOARDX_IMPORT_CHECK.format(before=before)) == [
      str(loaded_first)] * 3 + ['True'] * 3
  # Without it, tensorboardX imports the stand-ins: the check can fail.
  assert run('import sys, tensorboardX; print("torch" in sys.modules, "boto3" in sys.modules, '
             '"google.cloud.storage" in sys.modules)') == ['True'] * 3
  # A run's event file: tensorboardX imported on a thread, then written to.
  assert run(_EVENT_FILE_CHECK.format(before=before, logdir=str(tmp_path / 'tb'))) == [
      str(loaded_first)] * 3


_OTHER_THREAD_CHECK = '''
import threading
from mlp_mnist import workarounds
imported = []
with workarounds.imports_refused_in_this_thread(('torch',)):
  try:
    import torch
  except ModuleNotFoundError:
    print('refused here')
  other = threading.Thread(target=lambda: imported.append(__import__('torch').IMPORTED))
  other.start()
  other.join()
print('other thread', imported)
import torch
print('after', torch.IMPORTED)
'''


def test_imports_are_refused_only_in_the_importing_thread(tmp_path):
  """While tensorboardX is imported, another thread (gcsfs uploading in chunks, say) still imports
  what that import leaves out."""
  (tmp_path / 'torch').mkdir()
  (tmp_path / 'torch' / '__init__.py').write_text('IMPORTED = True\n')
  assert _python_output(_OTHER_THREAD_CHECK, tmp_path).splitlines() == [
      'refused here', 'other thread [True]', 'after True']


_COLLECTION_CHECK = '''
import gc, weakref
from mlp_mnist import cli
class Cycle: pass
cycle = Cycle()
cycle.self = cycle
alive = weakref.ref(cycle)
del cycle  # Garbage now, reachable only by the cyclic collector.
{call}
gc.collect()
print(alive() is not None)
'''


@pytest.mark.parametrize('skip', [False, True])
def test_skip_collection_at_exit_leaves_the_objects_alive_now_to_the_os(skip):
  """The scripts' exit: after `cli.skip_collection_at_exit`, no collection walks (or frees) the
  objects there were; without it the same cycle is collected (the check can fail)."""
  assert _python_output(_COLLECTION_CHECK.format(
      call='cli.skip_collection_at_exit()' if skip else '')).split() == [str(skip)]
