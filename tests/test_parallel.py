import numpy as np
import pytest

from mlp_mnist.devices import parallel


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


@pytest.mark.parametrize('num_trials,devices', [(5, 2), (4, 4), (3, 4), (1, 1)])
def test_split_trials_pads_with_trial_zero_and_merge_inverts(num_trials, devices):
  tree = {'a': np.arange(num_trials * 3).reshape(num_trials, 3), 'b': np.arange(num_trials) + 10}
  split = parallel.split_trials(tree, devices)
  per_device = -(-num_trials // devices)
  assert split['a'].shape == (devices, per_device, 3) and split['b'].shape == (devices, per_device)
  flat = split['b'].reshape(-1)
  np.testing.assert_array_equal(flat[:num_trials], tree['b'])
  assert (flat[num_trials:] == tree['b'][0]).all()
  merged = parallel.merge_trials(split, num_trials)
  for key in tree:
    np.testing.assert_array_equal(merged[key], tree[key])


@pytest.mark.parametrize('num_devices,chunk', [(1, 0), (2, 2), (2, 1), (4, 3)])
def test_pmap_trials_runs_every_trial_once_chunk_by_chunk(num_devices, chunk):
  import jax  # pylint: disable=g-import-not-at-top
  trials = np.arange(10, dtype=np.float32)
  devices = jax.devices()[:num_devices]
  split = parallel.split_trials(trials, num_devices, max(chunk, 1))
  fn = parallel.pmap_trials(lambda x, shared: x * 2 + shared, devices, (0, None), chunk)
  out = fn(split, *parallel.replicate((np.float32(1),), devices))
  np.testing.assert_array_equal(parallel.merge_trials(np.asarray(out), 10), trials * 2 + 1)
