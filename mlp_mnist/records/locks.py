"""Exclusive locks on a workdir or a sweep's trial folder, so two processes never write one run.

The lock is a file, `LOCK_FILE`, created only if it does not exist: locally with
`O_CREAT | O_EXCL`, on object storage (`gs://`) as an object with a does-not-exist precondition
(gcsfs's `pipe_file(..., mode='create')`: `ifGenerationMatch=0`). It holds the holder's host, pid
and start time, and a heartbeat the holder refreshes every `HEARTBEAT_SEC`. A lock whose holder is
gone (same host and its pid is not alive; on another host, a heartbeat older than `STALE_SEC`) is
taken over with a warning.
"""

import contextlib
import datetime
import json
import os
import socket
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from etils import epath

from mlp_mnist.devices import parallel
from mlp_mnist.records import run_files

LOCK_FILE = '.lock.json'
HEARTBEAT_SEC = 30.0
STALE_SEC = 300.0  # Ten missed heartbeats: the holder is taken to be gone.


class LockedError(run_files.WorkdirError):
  """Another live process holds the lock; the message names it (host, pid, start time)."""


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def describe(holder: dict) -> str:
  """'host H, pid P, started T' for a lock's content."""
  return (f'host {holder.get("host", "?")}, pid {holder.get("pid", "?")}, '
          f'started {holder.get("start_time", "?")}')


def check_folder(workdir: str) -> None:
  """Refuses a `--workdir` that is a file, in one line."""
  path = epath.Path(workdir)
  if path.exists() and not path.is_dir():
    raise run_files.WorkdirError(f'{workdir} is a file, not a folder; give a folder as --workdir '
                                 '(a new one, or that of the run to resume).')


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, owned by another user.
    return True
  return True


def stale_reason(holder: dict, now: float | None = None) -> str | None:
  """Why the holder of a lock with content `holder` is gone, or None when it may be alive."""
  now = time.time() if now is None else now
  if holder.get('host') == socket.gethostname() and isinstance(holder.get('pid'), int):
    return None if _pid_alive(holder['pid']) else 'its process is no longer running'
  age = now - float(holder.get('heartbeat_unix', 0))
  if age > STALE_SEC:
    return f'its last heartbeat was {age:.0f}s ago'
  return None


def unheld_reason(directory: str) -> str | None:
  """Why no live process holds `directory`'s lock (there is none, or its holder is gone by
  `stale_reason`), or None while one may: a sweep's report tells a trial left `running` by a
  killed worker from one a live worker trains."""
  holder = _Storage(epath.Path(directory) / LOCK_FILE).read()
  if holder is None:
    return 'no process holds its lock'
  if not holder:  # Half-written: a process is creating it now.
    return None
  reason = stale_reason(holder)
  return f'the worker that held it ({describe(holder)}) is gone: {reason}' if reason else None


class _Storage:
  """Create-if-absent, read, overwrite and delete of one lock file, local or on object storage."""

  def __init__(self, path: epath.Path):
    self.path = path
    self.remote = run_files.is_remote(path)
    if self.remote:
      import fsspec  # pylint: disable=g-import-not-at-top
      self.fs, self.key = fsspec.core.url_to_fs(str(path))

  def create(self, text: str) -> bool:
    """Writes `text` only if there is no lock; returns whether it did."""
    if self.remote:
      try:
        self.fs.pipe_file(self.key, text.encode(), mode='create')
      except FileExistsError:
        return False
      return True
    self.path.parent.mkdir(parents=True, exist_ok=True)
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    return True

  def read(self) -> dict | None:
    """The lock's content; None when there is none; {} when it cannot be parsed (half-written)."""
    try:
      text = (self.fs.cat_file(self.key).decode() if self.remote else self.path.read_text())
    except FileNotFoundError:
      return None
    try:
      holder = json.loads(text)
    except ValueError:
      return {}
    return holder if isinstance(holder, dict) else {}

  def overwrite(self, text: str) -> None:
    if self.remote:
      self.fs.pipe_file(self.key, text.encode())
      return
    tmp = self.path.parent / f'{LOCK_FILE}.heartbeat-{os.getpid()}'
    tmp.write_text(text)
    os.replace(tmp, self.path)

  def take_over(self, stale: dict) -> None:
    """Removes the lock if it still holds `stale`. Locally the lock is first renamed aside, so of
    two processes taking over one stale lock, the second cannot delete the first one's new lock
    (it puts it back). On object storage it is deleted."""
    if self.remote:
      self.delete()
      return
    aside = self.path.parent / f'{LOCK_FILE}.stale-{socket.gethostname()}-{os.getpid()}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return
    try:
      content = json.loads(aside.read_text())
    except ValueError:
      content = {}
    if content != stale:  # Another taker's new lock: put it back unless a third took the place.
      try:
        os.link(aside, self.path)
      except FileExistsError:
        pass
    aside.unlink()

  def delete(self) -> None:
    try:
      if self.remote:
        self.fs.rm_file(self.key)
      else:
        self.path.unlink()
    except FileNotFoundError:
      pass


class Lock:
  """An exclusive lock on `directory`, held until `release` (or the end of a `with` block)."""

  def __init__(self, directory: str, what: str = 'run'):
    self.directory = str(directory)
    self.path = epath.Path(directory) / LOCK_FILE
    self._storage = _Storage(self.path)
    self._what = what
    self._content: dict[str, Any] | None = None
    self._held = False
    self._mutex = threading.Lock()  # A heartbeat never rewrites a lock being released.
    self._created_directory = False

  def try_acquire(self, warn: Callable[[str], Any] = print) -> dict | None:
    """Takes the lock (taking over a stale one, with a warning); returns None when taken, else the
    live holder's content."""
    check_folder(self.directory)
    self._created_directory = not self._storage.remote and not epath.Path(self.directory).exists()
    start = time.time()
    self._content = {'host': socket.gethostname(), 'pid': os.getpid(), 'start_time': _now(),
                     'heartbeat_unix': start}
    for _ in range(3):  # A holder that releases, or a taker that races us, makes us look again.
      try:
        created = self._storage.create(json.dumps(self._content))
      except OSError as e:  # Not a FileExistsError: an unwritable workdir, a full disk.
        raise run_files.write_error(self.path, e) from e
      if created:
        self._held = True
        _HEARTBEATS.add(self)
        return None
      holder = self._storage.read()
      if holder is None:
        continue
      if not holder:  # Being written by a process that just created it.
        time.sleep(0.2)
        holder = self._storage.read()
        if holder is None:
          continue
      reason = stale_reason(holder) if holder else 'it is unreadable'
      if reason is None:
        return holder
      warn(f'warning: taking over the lock on {self.directory} left by {describe(holder)}: '
           f'{reason}.')
      self._storage.take_over(holder)
    holder = self._storage.read()
    return holder or {}

  def acquire(self, warn: Callable[[str], Any] = print) -> 'Lock':
    """Takes the lock or raises LockedError naming the holder."""
    holder = self.try_acquire(warn)
    if holder is not None:
      raise LockedError(
          f'{self.directory} is in use by another {self._what} ({describe(holder)}); wait for it '
          f'to finish or stop it, or choose another --workdir. A lock left by a process that is '
          f'gone is taken over (on another host after {STALE_SEC:.0f}s without its heartbeat); '
          f'to force it, delete {self.path}.')
    return self

  def beat(self) -> None:
    """Refreshes the heartbeat in the lock (the process-wide heartbeat thread calls it)."""
    with self._mutex:
      if not self._held:
        return
      self._content['heartbeat_unix'] = time.time()
      try:
        self._storage.overwrite(json.dumps(self._content))
      except OSError:
        pass  # A missed beat; the next one retries. Only STALE_SEC of misses lose the lock.

  def release(self) -> None:
    """Removes the lock if this process still holds it."""
    _HEARTBEATS.remove(self)
    with self._mutex:
      if not self._held:
        return
      self._held = False
      holder = self._storage.read()
      if holder and holder.get('pid') == os.getpid() and holder.get(
          'host') == socket.gethostname():
        self._storage.delete()
    if self._created_directory:  # A run that stopped before writing anything leaves no folder.
      with contextlib.suppress(OSError):  # Not empty: the run's records stay.
        os.rmdir(self.directory)

  def __enter__(self) -> 'Lock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


class _Heartbeats:
  """One thread that refreshes every lock this process holds, every `HEARTBEAT_SEC` (a sweep
  group may claim thousands of trials: one thread, not one per lock)."""

  def __init__(self):
    self._locks: set[Lock] = set()
    self._guard = threading.Lock()
    self._wake = threading.Event()
    self._thread: threading.Thread | None = None

  def add(self, lock: Lock) -> None:
    with self._guard:
      self._locks.add(lock)
      if self._thread is None or not self._thread.is_alive():
        self._thread = threading.Thread(target=self._run, daemon=True, name='lock heartbeats')
        self._thread.start()
      else:
        self._wake.set()  # Restart its wait, with the current HEARTBEAT_SEC.

  def remove(self, lock: Lock) -> None:
    with self._guard:
      self._locks.discard(lock)

  def _run(self) -> None:
    while True:
      woken = self._wake.wait(HEARTBEAT_SEC)
      self._wake.clear()
      if woken:
        continue
      with self._guard:
        held = list(self._locks)
      for lock in held:
        lock.beat()


_HEARTBEATS = _Heartbeats()


def claim(directory: str, claims: contextlib.ExitStack, log: Callable[[str], Any] = print) -> bool:
  """Takes the lock on a sweep trial's folder until `claims` closes; False (logged) when a live
  process holds it, so two workers never train one trial."""
  lock = Lock(directory, 'sweep worker')
  holder = lock.try_acquire(log)
  if holder is not None:
    log(f'{directory} is being trained by another worker ({describe(holder)}); skipped here.')
    return False
  claims.callback(lock.release)
  return True


@contextlib.contextmanager
def held(directory: str | None, what: str = 'run',
         warn: Callable[[str], Any] = print) -> Iterator[None]:
  """Holds the lock on `directory` (nothing without one) for the block, released also on errors.

  In a multi-process run JAX process 0 takes it for all, and every process learns the outcome, so
  all refuse together.
  """
  if not directory:
    yield
    return
  lock = Lock(directory, what)
  lead = jax.process_index() == 0
  error = None
  if lead:
    try:
      lock.acquire(warn)
    except run_files.WorkdirError as e:  # Also a file as --workdir, an unwritable workdir.
      error = e
  if parallel.is_multiprocess():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if int(multihost_utils.broadcast_one_to_all(np.int32(error is not None))) and not lead:
      error = LockedError(f'{directory} is in use by another {what} (see process 0\'s message).')
  if error:
    raise error
  try:
    yield
  finally:
    lock.release()
