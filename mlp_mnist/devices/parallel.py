"""Data parallelism with `jax.pmap`: the one place that knows about devices and processes.

The train state and the datasets are replicated on every device (passed with `in_axes=None`, returned
with `out_axes=None`); only index arrays are split, one slice of every global batch per device. Steps
sum over `AXIS` with `lax.psum` (then normalize by the global example count). In a multi-process
run (several hosts, after `jax.distributed.initialize`) the axis spans every device of every
process; each process feeds its own devices' slices (`process_rows`) and the collectives cross
hosts.

Sweeps spread trials instead (`pmap_trials`): each device trains its share of the trials, vectorized,
on its replica of the datasets; each process runs its own trials on its own devices.
"""

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = 'devices'


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def local_devices(devices: Sequence[jax.Device] | None = None) -> list[jax.Device]:
  """The devices this process runs on: the given ones, else all of its local devices.

  A multi-process run always uses every local device of every process.
  """
  if devices is None or is_multiprocess():
    return jax.local_devices()
  return list(devices)


def axis_size(devices: Sequence[jax.Device]) -> int:
  """How many devices share each global batch: all devices of all processes."""
  return jax.device_count() if is_multiprocess() else len(devices)


def process_rows(devices: Sequence[jax.Device]) -> np.ndarray:
  """Positions along the device axis of the devices this process feeds, in their order."""
  if not is_multiprocess():
    return np.arange(len(devices))
  everywhere = jax.devices()
  return np.asarray([everywhere.index(d) for d in jax.local_devices()])


def sync(name: str) -> None:
  """Waits until every process gets here (a no-op in a single process)."""
  if is_multiprocess():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def process_zero_decides(flags: tuple[bool, ...]) -> tuple[bool, ...]:
  """Process 0's `flags` on every process (decisions that processes must take together but see
  apart, such as a timer or a signal); `flags` themselves in a single process."""
  if not is_multiprocess():
    return flags
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return tuple(bool(f) for f in multihost_utils.broadcast_one_to_all(np.asarray(flags, np.int32)))


def replicate(tree: Any, devices: Sequence[jax.Device]) -> Any:
  """Places a copy of every leaf on each device, once, so pmapped calls move no data."""
  sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), PartitionSpec())
  return jax.device_put(tree, sharding)


def pmap(fn: Callable, devices: Sequence[jax.Device], in_axes, out_axes=None,
         donate_argnums: tuple[int, ...] = ()) -> Callable:
  """`jax.pmap` of `fn` over `devices` (every process's, when several) with collectives on `AXIS`."""
  return jax.pmap(fn, axis_name=AXIS, devices=None if is_multiprocess() else devices,
                  in_axes=in_axes, out_axes=out_axes, donate_argnums=donate_argnums)


def shard_batch_indices(indices: np.ndarray, global_batch: int, num_devices: int) -> np.ndarray:
  """Splits example indices into global batches and each batch over the devices.

  Returns int32 `[num_devices, num_batches, global_batch // num_devices]`. The last batch is padded
  with -1 (masked out by the steps), so every example is used exactly once and none is dropped.
  """
  if global_batch % num_devices:
    raise ValueError(f'batch size {global_batch} is not divisible by the {num_devices} devices; '
                     f'use a multiple of {num_devices}.')
  num_batches = -(-len(indices) // global_batch)
  padded = np.full(num_batches * global_batch, -1, np.int32)
  padded[:len(indices)] = indices
  per_device = global_batch // num_devices
  return padded.reshape(num_batches, num_devices, per_device).transpose(1, 0, 2)


def eval_batch_indices(num_examples: int, eval_batch_size: int, num_devices: int) -> np.ndarray:
  """Every evaluation example exactly once, padded (never dropped) to a whole number of batches."""
  per_device = -(-eval_batch_size // num_devices)
  return shard_batch_indices(np.arange(num_examples), per_device * num_devices, num_devices)


def pmap_trials(fn: Callable, devices: Sequence[jax.Device], in_axes: tuple,
                trials_per_chunk: int = 0, donate_argnums: tuple[int, ...] = ()) -> Callable:
  """Runs `fn` over the trials on every device at once, each device's trials chunk by chunk.

  `fn` takes a chunk of trials: a leading trial axis on the arguments whose `in_axes` entry is 0,
  none on those with None (shared by every trial: `replicate` them once); its outputs have the
  trial axis. Trial arguments and outputs are laid out `[num_devices, trials_per_device, ...]`
  (`split_trials`); `trials_per_chunk` (0: all) divides trials_per_device. Trials never
  communicate.
  """

  def per_device(*args):
    trial_args = [a if axis == 0 else None for a, axis in zip(args, in_axes)]
    num_trials = jax.tree.leaves(trial_args)[0].shape[0]
    chunk = trials_per_chunk or num_trials
    if chunk == num_trials:
      return fn(*args)

    def run_chunk(chunk_args):
      return fn(*(c if axis == 0 else a for a, c, axis in zip(args, chunk_args, in_axes)))

    chunks = jax.tree.map(lambda x: x.reshape((num_trials // chunk, chunk) + x.shape[1:]),
                          trial_args)
    outputs = jax.lax.map(run_chunk, chunks)
    return jax.tree.map(lambda x: x.reshape((num_trials,) + x.shape[2:]), outputs)

  return jax.pmap(per_device, axis_name=AXIS, devices=devices, in_axes=in_axes,
                  donate_argnums=donate_argnums)


def split_trials(tree: Any, num_devices: int, trials_per_chunk: int = 1) -> Any:
  """`[trials, ...]` -> `[num_devices, trials_per_device, ...]`, padded with copies of trial 0 to
  whole chunks of `trials_per_chunk` on every device."""

  def split(x):
    x = np.asarray(x)
    padding = -len(x) % (num_devices * trials_per_chunk)
    x = np.concatenate([x, np.repeat(x[:1], padding, axis=0)]) if padding else x
    return x.reshape((num_devices, -1) + x.shape[1:])

  return jax.tree.map(split, tree)


def merge_trials(tree: Any, num_trials: int) -> Any:
  """The inverse of `split_trials`: `[num_devices, trials_per_device, ...]` -> `[trials, ...]`."""
  # A resumed 2-process sweep once hung with both processes in this reshape of the pmapped train
  # states on their devices (not reproduced since, cause unknown); each process's own trials merge
  # on its host, which cannot wait on another process.
  if is_multiprocess():
    tree = jax.device_get(tree)
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:num_trials], tree)
