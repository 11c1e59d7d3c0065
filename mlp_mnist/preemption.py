"""Preemption: SIGTERM (what TPU VM preemption and SLURM send before their grace period ends) and
SIGINT (Ctrl-C) ask training to stop at the end of its current chunk of steps, save a checkpoint
and exit with `EXIT_STATUS`; a second signal ends the process at once, as it would have.
"""

import contextlib
import signal
import threading
from typing import Iterator

from mlp_mnist import errors

# The exit status of a run or sweep that saved its progress and stopped on a signal: not 0 (it
# did not finish), not 2 (a user error); rerunning the same command resumes it.
EXIT_STATUS = 3
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(errors.UserError):
  """Training stopped on a signal after saving a checkpoint; the message says how to resume.

  A UserError so that library callers see one line; the scripts exit with `EXIT_STATUS`."""

  exit_status = EXIT_STATUS
  prefix = 'stopped'


class StopRequest:
  """Whether a stop was asked for, and by which signal (`name`)."""

  def __init__(self):
    self.name: str | None = None

  @property
  def requested(self) -> bool:
    return self.name is not None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
  """Within the block, SIGTERM and SIGINT set the yielded request instead of ending the process
  (a second one restores the previous handler and re-sends itself). Outside the main thread,
  where handlers cannot be installed, the request is never set."""
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request
    return
  previous = {s: signal.getsignal(s) for s in SIGNALS}

  def handle(signum, frame):
    del frame
    if request.requested:  # The second signal: give up waiting for the save.
      for s, handler in previous.items():
        signal.signal(s, handler)
      signal.raise_signal(signum)
      return
    request.name = signal.Signals(signum).name

  for s in SIGNALS:
    signal.signal(s, handle)
  try:
    yield request
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
