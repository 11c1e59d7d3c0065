import numpy as np
import pytest

from mlp_mnist import parallel


@pytest.mark.parametrize('num_examples,batch,devices', [(10, 4, 2), (12, 4, 4), (7, 6, 3)])
def test_shard_batch_indices_covers_every_example_once(num_examples, batch, devices):
  order = np.random.default_rng(0).permutation(num_examples)
  shards = parallel.shard_batch_indices(order, batch, devices)
  steps = -(-num_examples // batch)
  assert shards.shape == (devices, steps, batch // devices)
  # Device d holds slice d of each global batch, in order.
  global_batches = shards.transpose(1, 0, 2).reshape(steps, batch)
  flat = global_batches.reshape(-1)
  np.testing.assert_array_equal(flat[:num_examples], order)
  assert (flat[num_examples:] == -1).all()


def test_shard_batch_indices_exact_layout():
  shards = parallel.shard_batch_indices(np.arange(5), 4, 2)
  np.testing.assert_array_equal(shards, [[[0, 1], [4, -1]], [[2, 3], [-1, -1]]])


def test_batch_must_divide_over_devices():
  with pytest.raises(ValueError, match='not divisible by the 3 devices'):
    parallel.shard_batch_indices(np.arange(8), 8, 3)


def test_eval_indices_pad_never_drop():
  shards = parallel.eval_batch_indices(10_000, 1000, 3)
  valid = shards[shards >= 0]
  assert sorted(valid.tolist()) == list(range(10_000))
  assert shards.shape[0] == 3 and shards.shape[2] == 334
