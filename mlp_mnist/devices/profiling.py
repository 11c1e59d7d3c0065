"""A trace of a window of training steps with `jax.profiler`, for TensorBoard's profile plugin
(`<dir>/plugins/profile/<session>/*.xplane.pb`) and Perfetto (`perfetto_trace.json.gz`)."""

import contextlib
import dataclasses
from typing import Any, Iterator

import jax


@dataclasses.dataclass(frozen=True)
class TraceWindow:
  """Steps [start, stop) of one epoch, counted from 0 at the epoch's start, traced into
  `directory` when `record`; `first_step` is the epoch's first optimizer step (step markers)."""
  start: int
  stop: int
  directory: str
  record: bool = True
  first_step: int = 0

  @property
  def cuts(self) -> tuple[int, int]:
    """Where the epoch's calls must begin and end so the trace holds exactly the window."""
    return (self.start, self.stop)

  def begin(self, state: Any) -> None:
    if self.record:
      jax.block_until_ready(state)  # Earlier steps stay out of the trace.
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)

  def end(self, state: Any) -> None:
    if self.record:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()

  @contextlib.contextmanager
  def call(self, offset: int) -> Iterator[None]:
    """Marks a call starting `offset` steps into the epoch, as the profile plugin's steps."""
    with jax.profiler.StepTraceAnnotation('train', step_num=self.first_step + offset):
      yield
