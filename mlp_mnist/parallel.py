"""Data parallelism over the local devices with `jax.pmap`: the one place that knows about devices.

The train state and the datasets are replicated on every device (passed with `in_axes=None`, returned
with `out_axes=None`); only index arrays are split, one slice of every global batch per device. Steps
reduce over `AXIS` with `lax.psum`/`lax.pmean`.
"""

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = 'devices'


def local_devices(devices: Sequence[jax.Device] | None = None) -> list[jax.Device]:
  """The devices to run on: the given ones, else all local devices of this process."""
  return list(devices) if devices is not None else jax.local_devices()


def replicate(tree: Any, devices: Sequence[jax.Device]) -> Any:
  """Places a copy of every leaf on each device, once, so pmapped calls move no data."""
  sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), PartitionSpec())
  return jax.device_put(tree, sharding)


def pmap(fn: Callable, devices: Sequence[jax.Device], in_axes, out_axes=None,
         donate_argnums: tuple[int, ...] = ()) -> Callable:
  """`jax.pmap` of `fn` over `devices` with collectives on `AXIS`."""
  return jax.pmap(fn, axis_name=AXIS, devices=devices, in_axes=in_axes, out_axes=out_axes,
                  donate_argnums=donate_argnums)


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
