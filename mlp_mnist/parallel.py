"""Data parallelism with `jax.pmap`: the one place that knows about devices and processes.

The train state and the datasets are replicated on every device (passed with `in_axes=None`, returned
with `out_axes=None`); only index arrays are split, one slice of every global batch per device. Steps
reduce over `AXIS` with `lax.psum`/`lax.pmean`. In a multi-process run (several hosts, after
`jax.distributed.initialize`) the axis spans every device of every process; each process feeds its
own devices' slices (`process_rows`) and the collectives cross hosts.
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
