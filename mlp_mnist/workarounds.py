"""Where this package reaches past the public APIs of JAX, orbax and ml_collections, and why.

Each function works around one behaviour of a dependency that no public API covers (checked on
jax 0.10.2 and 0.12.0.1, orbax-checkpoint 0.12.8, ml_collections 1.1.0, absl-py 2.x); each names
the tests that fail if an upgrade breaks it. Everything else in the package uses public APIs only.

- `jax_cluster_types`: `jax._src.clusters.ClusterEnv._cluster_types`. The public
  `jax.distributed.initialize()` detects a cluster and connects in one call (and fails without
  one); `--distributed=auto` must know beforehand whether a cluster of several processes is there,
  and re-implementing each cluster's detection would drift from JAX's
  (tests/test_workarounds.py, tests/test_multiprocess.py::test_a_single_slurm_task_trains_alone).
- `wait_for_unfinished_save_cleanup`: orbax's `CheckpointManager._cleanup_tmp_directory_future`.
  `cleanup_tmp_directories=True` removes a killed process's unfinished saves on a thread that only
  the next `save` awaits; `wait_until_finished` and `close` do not, and orbax exports no cleanup
  function to run instead.
- `ignore_reads_finishing_after_a_failed_restore`: a `sys.unraisablehook` filter. A failed orbax
  restore leaves tensorstore reads running on an event loop orbax then closes; Python reports each
  as an unraisable exception, and neither orbax nor asyncio has a public way to collect them.
- `storage_traceback_filter`: a `logging` filter on the `absl` and `asyncio` loggers. orbax logs a
  storage error (a full disk) on each of its save threads with its traceback (`logging.exception`)
  and asyncio on each write task, about 110 lines, before the same error reaches the caller; orbax
  has no option to not log them.
- `import_tensorboardx_without_unused_imports`: while tensorboardX is imported, a finder first on
  `sys.meta_path` refuses torch, google.cloud.storage and boto3 in the importing thread. Its
  package imports its `writer`, which imports torch where torch is installed (0.74 s of a 3 s run
  on a 2-core CPU) only to accept torch tensors, which this package never passes, and its
  `record_writer`, which imports the clients of its own bucket writers (google.cloud.storage:
  0.16 s where gcsfs is installed), which this package replaces; tensorboardX has no option to
  leave them out. Other threads import them as usual meanwhile (gcsfs imports
  google.cloud.storage when it uploads in chunks), and one loaded already is used
  (tests/test_workarounds.py).
- `unknown_config_key`: ml_collections reports an unknown `--config.x.y` key as a plain
  `KeyError`/`AttributeError` whose only content is its text (the key, and difflib's suggestion as
  'Did you mean "y"'); it has no error class or attribute that names them.
"""

import contextlib
import importlib
import importlib.abc
import logging
import os
import re
import sys
import threading
from typing import Callable


def jax_cluster_types() -> list:
  """JAX's cluster environments (`ClusterEnv` subclasses), in the order
  `jax.distributed.initialize()` tries them."""
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  return list(clusters.ClusterEnv._cluster_types)  # pylint: disable=protected-access


_TENSORBOARDX_IMPORT = threading.Lock()


# What tensorboardX imports where it is installed and this package never uses: torch (its writer
# accepts torch tensors) and the clients of its own bucket writers, google.cloud.storage (gcsfs
# installs it) and boto3; `records.tensorboard` writes buckets through etils.epath instead.
TENSORBOARDX_UNUSED_IMPORTS = ('torch', 'google.cloud.storage', 'boto3')


class _RefusedInOneThread(importlib.abc.MetaPathFinder):
  """Refuses the import of `names` in the thread that made it; other threads import as usual."""

  def __init__(self, names: tuple[str, ...]):
    self._names, self._thread = names, threading.get_ident()

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    if fullname in self._names and threading.get_ident() == self._thread:
      raise ModuleNotFoundError(f'{fullname} is not imported here', name=fullname)
    return None


@contextlib.contextmanager
def imports_refused_in_this_thread(names: tuple[str, ...]):
  """Inside, importing one of `names` that is not loaded yet raises ModuleNotFoundError in this
  thread; other threads, and modules loaded already, are left alone."""
  finder = _RefusedInOneThread(names)
  sys.meta_path.insert(0, finder)
  try:
    yield
  finally:
    sys.meta_path.remove(finder)


def import_tensorboardx_without_unused_imports() -> None:
  """Imports tensorboardX without the imports of `TENSORBOARDX_UNUSED_IMPORTS` it makes where they
  are installed (those loaded already are left alone)."""
  with _TENSORBOARDX_IMPORT, imports_refused_in_this_thread(TENSORBOARDX_UNUSED_IMPORTS):
    importlib.import_module('tensorboardX')  # It expects ImportError from each.


def wait_for_unfinished_save_cleanup(manager) -> None:
  """Waits until an orbax `CheckpointManager` has removed the unfinished saves it found on opening,
  raising what that removal raised, so that an error ending the run right after (a damaged record,
  a mismatch) does not leave it to die with the interpreter, which prints a traceback under the
  one-line error (tests/test_workarounds.py::
  test_a_failed_cleanup_of_unfinished_saves_is_one_line)."""
  cleanup = getattr(manager, '_cleanup_tmp_directory_future', None)
  if cleanup is not None:
    cleanup.result()


def ignore_reads_finishing_after_a_failed_restore() -> None:
  """Silences tensorstore reads of a failed restore that finish after orbax closed its event loop,
  or whose own errors orbax never collects once the first one failed the restore.

  Each would otherwise print a traceback ('RuntimeError: Event loop is closed', or 'Exception
  ignored in: <coroutine ...>'), dozens per damaged checkpoint, although nothing is wrong beyond
  the warning already given. Installed once; other unraisable exceptions still reach the previous
  hook (tests/test_faults.py::test_each_damaged_checkpoint_file_restores_exactly_or_falls_back and
  tests/test_checkpointing.py::test_damaged_newest_checkpoint_falls_back_to_the_previous_one fail
  on an unraisable exception; tests/test_workarounds.py checks what still passes).
  """
  previous = sys.unraisablehook
  if getattr(previous, 'ignores_closed_event_loop', False):
    return

  def hook(unraisable):
    code = getattr(unraisable.object, 'cr_code', None)
    orbax_read = code is not None and 'orbax' in code.co_filename
    if not (orbax_read or isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      previous(unraisable)

  hook.ignores_closed_event_loop = True
  sys.unraisablehook = hook


def storage_traceback_filter(
    is_storage_error: Callable[[BaseException], bool]) -> Callable[[logging.LogRecord], bool]:
  """A `logging` filter: False for orbax's logs of an error `is_storage_error` accepts (a full
  disk) in its save threads and their asyncio tasks, with their tracebacks.

  The same exception reaches the caller, where the checkpoint's save or wait turns it into a
  one-line CheckpointError. Other errors of those threads, bugs included, are still logged
  (tests/test_faults.py::test_full_disk_in_orbax_save_threads_is_one_line_without_their_tracebacks,
  tests/test_workarounds.py).
  """
  orbax = f'{os.sep}orbax{os.sep}'

  def keep(record: logging.LogRecord) -> bool:
    if not (record.exc_info and (orbax in record.pathname or orbax in str(record.msg)
                                 or any(orbax in str(a) for a in record.args or ()))):
      return True
    return not is_storage_error(record.exc_info[1])
  return keep


def unknown_config_key(error: BaseException) -> tuple[str, str | None]:
  """(the unknown key, ml_collections' suggestion or None) from the error that ml_collections'
  `--config.x.y` parsing raised (tests/test_workarounds.py, tests/test_config.py::
  test_train_script_rejects_bad_config_in_one_line)."""
  text = str(error).replace('\\', '')
  key = re.search(r"'(\w+)'", text)
  suggestion = re.search(r'Did you mean "(\w+)"', text)
  return (key.group(1) if key else text), (suggestion.group(1) if suggestion else None)
