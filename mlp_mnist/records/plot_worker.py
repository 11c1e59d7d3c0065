"""A process that imports matplotlib while the script imports JAX, then draws the script's figures.

Importing matplotlib takes about half a second of a warm `scripts/train.py` run
(docs/benchmarks.md): here it runs on another core while the run starts, in a process forked
before anything else is imported, and `plots.save_*` send it their calls (`draw`).

Only a single-threaded process may fork (a forked copy of JAX's, TensorFlow's or OpenBLAS's threads
can deadlock), so a script starts the worker first; only on Linux, where `/proc` tells how many
threads there are. Wherever the worker is not running, cannot take a figure's arguments, dies or
does not answer, the figure is drawn in this process as without it: a figure is never lost. The
worker ignores Ctrl-C (meant for the run, which then exits) and ends when this process does.
"""

import importlib
import os
import pickle
import signal
import threading
from typing import Any, Callable

# What the worker imports as it starts: the figures' library and what writes them.
PRELOAD = ('matplotlib.figure', 'matplotlib.backends.backend_agg', 'etils.epath')
# The longest a figure may take in the worker (its import included) before it is drawn here.
REPLY_TIMEOUT_SEC = 120.0

_worker = None  # The running `_Worker`, if `start` started one.


def start() -> bool:
  """Starts the worker where this process is single-threaded on Linux; returns whether one runs."""
  global _worker
  if _worker is None and _single_threaded():
    _worker = _Worker()
  return _worker is not None


def running() -> bool:
  return _worker is not None


def stop() -> None:
  """Ends the worker; figures are drawn in this process from then on."""
  global _worker
  worker, _worker = _worker, None
  if worker is not None:
    worker.close()


def draw(save: Callable, args: tuple, kwargs: dict) -> tuple[bool, Any]:
  """(True, what `save(*args, **kwargs)` returned in the worker), or (False, None) where it was
  not drawn there (no worker, arguments it cannot take, an error in it).

  `save` is sent by name (a module's function: pickle's reference); in the worker, which runs no
  worker of its own, it draws there.
  """
  worker = _worker
  if worker is None:
    return False, None
  drawn, result = worker.call(save, args, kwargs)
  if drawn is None:  # The worker is gone or stuck.
    stop()
  return bool(drawn), result


def _single_threaded() -> bool:
  try:
    return len(os.listdir('/proc/self/task')) == 1
  except OSError:  # No /proc (not Linux): never fork.
    return False


class _Worker:
  """The child process and the pipe to it."""

  def __init__(self):
    import multiprocessing  # pylint: disable=g-import-not-at-top
    context = multiprocessing.get_context('fork')
    self._connection, child_end = context.Pipe()
    self._process = context.Process(target=_serve, args=(child_end, self._connection),
                                    name='mlp_mnist plots', daemon=True)
    self._process.start()
    child_end.close()
    self._lock = threading.Lock()

  @property
  def pid(self) -> int:
    return self._process.pid

  def call(self, function: Callable, args: tuple, kwargs: dict) -> tuple[bool | None, Any]:
    """(True, result); (False, None): not drawn there, the worker serves on; (None, None): the
    worker is gone or did not answer in time."""
    with self._lock:
      try:
        self._connection.send((function, args, kwargs))  # Pickled whole before a byte is sent.
      except (OSError, ValueError):
        return None, None
      except Exception:  # pylint: disable=broad-except
        return False, None  # Arguments that do not pickle.
      try:
        if not self._connection.poll(REPLY_TIMEOUT_SEC):
          return None, None
        return self._connection.recv()
      except (OSError, EOFError):
        return None, None

  def close(self) -> None:
    self._connection.close()
    self._process.join(timeout=1.0)
    if self._process.is_alive():
      self._process.kill()
      self._process.join()


def _serve(connection, parent_end) -> None:
  """The worker: imports `PRELOAD`, then runs the calls it is sent until the pipe closes. A call
  that raises answers (False, None): the process that sent it draws it again and raises as it
  would have."""
  parent_end.close()
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    os.nice(19)  # Never ahead of the run's own work; a run waiting for a figure leaves it a core.
  except OSError:
    pass
  for module in PRELOAD:
    try:
      importlib.import_module(module)
    except ImportError:
      pass  # The call that needs it fails, and is drawn by its sender.
  while True:
    try:
      message = connection.recv_bytes()
    except (EOFError, OSError):
      return
    try:
      function, args, kwargs = pickle.loads(message)
      reply = pickle.dumps((True, function(*args, **kwargs)))
    except Exception:  # pylint: disable=broad-except
      reply = pickle.dumps((False, None))
    try:
      connection.send_bytes(reply)
    except OSError:  # The process it draws for ended.
      return
