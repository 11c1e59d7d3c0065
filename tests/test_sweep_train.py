import functools

import jax
import numpy as np
import pytest

from mlp_mnist import config_checks
from mlp_mnist import steps
from mlp_mnist import train
from mlp_mnist.records import run_files
from mlp_mnist.sweeps import sweep_files
from mlp_mnist.sweeps import vectorized

from conftest import synthetic_dataset

COMPARED = ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'grad_norm', 'param_norm',
            'learning_rate')


def _variant(config, **overrides):
  return sweep_files.with_overrides(config, {k.replace('__', '.'): v for k, v in overrides.items()})


@pytest.mark.parametrize('name,expected', [
    ('adam', {'learning_rate', 'b1', 'b2', 'eps'}),
    ('adamw', {'learning_rate', 'b1', 'b2', 'eps', 'weight_decay'}),
    ('sgd', {'learning_rate', 'momentum'}),
    ('rmsprop', {'learning_rate', 'b2', 'eps', 'momentum'}),
])
def test_per_trial_optimizer_keys(config, name, expected):
  config.optimizer.name = name
  assert {k.partition('.')[2] for k in config_checks.per_trial_keys(config)
          if k.startswith('optimizer.')} == expected


@pytest.mark.parametrize('overrides', [
    {'seed': 3}, {'optimizer__learning_rate': 0.1}, {'optimizer__b1': 0.5},
    {'optimizer__eps': 1e-3}, {'model__dropout_rate': 0.0},
])
def test_value_only_changes_share_a_program(config, overrides):
  assert vectorized.program_key(_variant(config, **overrides)) == vectorized.program_key(config)


@pytest.mark.parametrize('overrides', [
    {'model__hidden_sizes': (64,)}, {'model__activation': 'gelu'}, {'batch_size': 64},
    {'num_epochs': 2}, {'eval_batch_size': 500}, {'model__dropout_rate': 0.1},
    {'optimizer__name': 'adamw'}, {'optimizer__schedule': 'cosine'},
    {'optimizer__grad_clip_norm': 1.0}, {'logging__log_every_epochs': 2},
])
def test_shape_or_structure_changes_separate_programs(config, overrides):
  assert vectorized.program_key(_variant(config, **overrides)) != vectorized.program_key(config)


def test_program_key_follows_the_optimizer(config):
  sgd = _variant(config, optimizer__name='sgd')
  assert vectorized.program_key(_variant(sgd, optimizer__momentum=0.0)) == (
      vectorized.program_key(sgd))
  assert vectorized.program_key(_variant(sgd, optimizer__nesterov=True)) != (
      vectorized.program_key(sgd))
  dropout = _variant(config, model__dropout_rate=0.1)
  assert vectorized.program_key(_variant(config, model__dropout_rate=0.5)) == (
      vectorized.program_key(dropout))


def test_group_by_program_keeps_order_and_caps_sizes(config):
  configs = [_variant(config, seed=s, model__hidden_sizes=(w,)) for w in (8, 16) for s in range(3)]
  configs.append(_variant(config, seed=7, model__hidden_sizes=(8,)))
  assert vectorized.group_by_program(configs) == [[0, 1, 2, 6], [3, 4, 5]]
  assert vectorized.group_by_program(configs, max_group_size=3) == [[0, 1, 2], [6], [3, 4, 5]]


def _alone(config, dataset):
  return train.train_and_evaluate(config, None, devices=jax.devices()[:1], dataset=dataset,
                                  log=lambda line: None)


def _assert_same_history(got, want):
  assert [(r['epoch'], r['step']) for r in got] == [(r['epoch'], r['step']) for r in want]
  for g, w in zip(got, want):
    for key in COMPARED:
      np.testing.assert_allclose(g[key], w[key], rtol=2e-5, atol=1e-6, err_msg=key)


def test_vectorized_trials_equal_single_runs(config):
  """Trials of one group (seeds, learning rates; dropout rates) give what they give alone.

  Two devices, chunks of two trials: both groups leave padding slots (copies, dropped).
  """
  dataset = synthetic_dataset(num_train=200, num_test=60)
  config.num_epochs = 2
  config.eval_batch_size = 25
  plain = [_variant(config, seed=0), _variant(config, seed=1),
           _variant(config, seed=0, optimizer__learning_rate=0.03)]
  dropout = [_variant(config, seed=2, model__dropout_rate=0.2),
             _variant(config, seed=3, model__dropout_rate=0.5, optimizer__b1=0.8)]
  for group in (plain, dropout):
    result = vectorized.train_trials(group, dataset, jax.devices()[:2], chunk_size=2)
    assert result['diverged'] == [False] * len(group)
    for i, trial_config in enumerate(group):
      alone = _alone(trial_config, dataset)
      _assert_same_history(result['history'][i], alone['history'])
      jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=2e-5),
                   jax.tree.map(lambda x, i=i: x[i], result['state'].params),
                   alone['state'].params)
  # Different seeds and learning rates really are different trials.
  assert result['history'][0][-1]['train_loss'] != result['history'][1][-1]['train_loss']


def test_divergence_is_isolated(config):
  """A trial whose loss or weights blow up stops, keeping finite weights; the others go on."""
  dataset = synthetic_dataset(num_train=64, num_test=40)
  config.num_epochs = 3
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.0
  config.model.dropout_rate = 0.1  # The epoch rerun step by step keys dropout as train_epoch does.
  healthy = _variant(config, optimizer__learning_rate=0.05)
  exploding = _variant(config, optimizer__learning_rate=1e7)  # Finite for 2 steps (1 epoch).
  epochs = []
  result = vectorized.train_trials([healthy, exploding, healthy], dataset, jax.devices()[:2],
                                    on_epoch=lambda *args: epochs.append(args))
  assert result['diverged'] == [False, True, False]
  assert result['diverged_step'] == [None, 3, None]
  assert [sorted(records) for _, records, *_ in epochs] == [[0, 1, 2], [0, 2], [0, 2]]
  assert [diverged for _, _, diverged, _ in epochs][1] == [False, True, False]
  assert [r['epoch'] for r in result['history'][1]] == [1]  # The epoch before it diverged.
  assert int(result['state'].step[1]) == 2
  assert all(np.isfinite(np.asarray(x[1])).all() for x in jax.tree.leaves(result['state']))
  alone = _alone(healthy, dataset)
  for i in (0, 2):
    _assert_same_history(result['history'][i], alone['history'])


def test_divergence_inside_an_epoch_split_for_checkpoints_is_as_in_one_call(config):
  """every_steps=3 splits each 8-step epoch into calls of 3, 3, 2 steps: the trial that diverges
  in the first call stops at the same step, and every trial ends as with one call per epoch."""
  dataset = synthetic_dataset(num_train=256, num_test=40)
  config.num_epochs = 2
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.0
  config.model.dropout_rate = 0.1
  trials = [_variant(config, optimizer__learning_rate=0.05),
            _variant(config, optimizer__learning_rate=1e7), _variant(config, seed=3)]
  whole = vectorized.train_trials(trials, dataset, jax.devices()[:2], log=lambda _: None)
  split = vectorized.train_trials([_variant(c, checkpoint__every_steps=3) for c in trials],
                                  dataset, jax.devices()[:2], log=lambda _: None)
  assert split['diverged'] == whole['diverged'] == [False, True, False]
  assert split['diverged_step'] == whole['diverged_step'] == [None, 3, None]
  untimed = lambda histories: [[run_files.without_timing(r) for r in h] for h in histories]
  assert untimed(split['history']) == untimed(whole['history'])
  for a, b in zip(jax.tree.leaves(split['state']), jax.tree.leaves(whole['state'])):
    np.testing.assert_array_equal(a, b)


def test_all_diverged_stops_early(config):
  dataset = synthetic_dataset(num_train=64, num_test=40)
  config.num_epochs = 4
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 1e20
  epochs = []
  result = vectorized.train_trials([config], dataset, jax.devices()[:1],
                                    on_epoch=lambda *args: epochs.append(args))
  assert result['diverged'] == [True] and result['diverged_step'] == [1]
  assert len(epochs) == 1 and result['history'] == [[]]


@pytest.mark.parametrize('platform,expected', [('cpu', 2), ('gpu', 16), ('tpu', 16)])
def test_chunks_fit_the_cpu_cache_and_fill_accelerators(config, platform, expected):
  state = steps.create_train_state(config, jax.random.PRNGKey(0), 10, (28, 28), 10)
  state_bytes = vectorized.tree_bytes(state)
  assert vectorized.default_chunk_size(16, state_bytes, platform) == expected
  assert vectorized.default_chunk_size(1, state_bytes, platform) == 1
  assert vectorized.default_chunk_size(16, 100 * state_bytes, 'cpu') == 1


def test_trials_of_different_programs_are_refused(config, dataset):
  with pytest.raises(ValueError, match='one program'):
    vectorized.train_trials([config, _variant(config, model__hidden_sizes=(8,))], dataset)


def test_trials_ended_by_the_callback_leave_the_recompiled_program(config, monkeypatch):
  """`on_epoch` ends two of three trials after epoch 1: they keep their epoch-1 weights, and the
  program is rebuilt for the third, which trains on as it would have with them."""
  dataset = synthetic_dataset(num_train=64, num_test=40)
  config.num_epochs = 3
  group = [_variant(config, seed=s) for s in (0, 1, 2)]
  built = []
  program = vectorized.GroupProgram

  def counting(configs, *args, **kwargs):
    built.append(len(configs))
    return program(configs, *args, **kwargs)

  monkeypatch.setattr(vectorized, 'GroupProgram', counting)
  ended = vectorized.train_trials(group, dataset, jax.devices()[:2],
                                  on_epoch=lambda epoch, *_: [0, 1] if epoch == 1 else None)
  assert built == [3, 1]
  assert ended['status'] == ['pruned', 'pruned', 'done']
  assert [len(h) for h in ended['history']] == [1, 1, 3]
  whole = vectorized.train_trials(group, dataset, jax.devices()[:2])
  _assert_same_history(ended['history'][2], whole['history'][2])
  for i in (0, 1):
    _assert_same_history(ended['history'][i], whole['history'][i][:1])
    assert int(ended['state'].step[i]) == ended['history'][i][0]['step']
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
               jax.tree.map(lambda x: x[2], ended['state'].params),
               jax.tree.map(lambda x: x[2], whole['state'].params))


@pytest.mark.parametrize('base,swept', [
    ({}, {'seed': [0, 7, 123456], 'optimizer.learning_rate': [1e-3, 0.05, 0.3],
          'optimizer.b1': [0.9, 0.5, 0.99], 'optimizer.eps': [1e-7, 1e-3, 0.1]}),
    ({'optimizer.name': 'sgd', 'model.dropout_rate': 0.1, 'loss.name': 'label_smoothing',
      'augment.name': 'random_flip'},
     {'seed': [3, 4, 5], 'optimizer.momentum': [0.0, 0.9, 0.5],
      'model.dropout_rate': [0.1, 0.2, 0.3],
      'loss.label_smoothing.smoothing': [0.1, 0.2, 0.05],
      'augment.random_flip.probability': [0.5, 0.1, 0.9]}),
])
def test_group_init_equals_each_trials_own_state_bit_for_bit(config, base, swept):
  config = sweep_files.with_overrides(config, base)
  config_checks.fill_defaults(config)  # The selected loss's and augmentation's keys.
  configs = [sweep_files.with_overrides(config, {k: v[i] for k, v in swept.items()})
             for i in range(3)]
  assert len({vectorized.program_key(c) for c in configs}) == 1
  for batch in (2, 256):  # In parts, and at once.
    stacked = vectorized.init_trial_states(configs, 7, (28, 28), 10, batch=batch)
    for i, c in enumerate(configs):
      want = steps.create_train_state(c, jax.random.PRNGKey(c.seed), 7, (28, 28), 10)
      got = jax.tree.map(lambda x, i=i: x[i], stacked)
      paths = lambda tree: [p for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
      assert paths(got) == paths(want)
      for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        w = np.asarray(jax.numpy.asarray(w))  # The step is a Python 0.
        assert g.dtype == w.dtype and np.array_equal(g, w)


def _device_memory(monkeypatch, device, limit, in_use=0):
  """`device.memory_stats()` says `limit` bytes, `in_use` of them taken (CPUs say nothing)."""
  monkeypatch.setattr(type(device), 'memory_stats',
                      lambda self: {'bytes_limit': limit, 'bytes_in_use': in_use})


def test_trials_that_fit_the_devices_memory(config, monkeypatch):
  devices = jax.devices()[:2]
  assert vectorized.trials_that_fit(config, 1000, devices) is None  # CPUs do not say.
  # 40% of the free memory for train states: 3 of 1000 bytes each per device.
  _device_memory(monkeypatch, devices[0], limit=10_000, in_use=2_000)
  assert vectorized.trials_that_fit(config, 1000, devices) == 6
  config.early_stopping.monitor = 'validation_loss'
  config.early_stopping.restore_best_weights = True  # A second copy: the best weights.
  assert vectorized.trials_that_fit(config, 1000, devices) == 2
  with pytest.raises(vectorized.TrialsDoNotFit, match=r"^one trial's train state takes 0\.0 MiB, "
                     r'more than 40% of the 0 MiB free on cpu; make the model smaller'):
    vectorized.trials_that_fit(config, 2000, devices)


def test_a_group_larger_than_the_memory_trains_in_parts_as_it_trains_whole(config, monkeypatch):
  """Trials that fit the memory two at a time train in parts and give what the whole group gives."""
  config.num_epochs = 2
  config.model.hidden_sizes = (16,)
  config.eval_batch_size = 20
  dataset = synthetic_dataset(num_train=64, num_test=20)
  configs = [_variant(config, seed=s) for s in range(5)]
  device = jax.devices()[:1]
  # One trial side by side (chunk 1) in both: the same vmapped training, so equal bit for bit.
  whole = vectorized.train_trials(configs, dataset, device, chunk_size=1, log=lambda _: None)
  state_bytes = vectorized.trial_state_bytes(config, 2, (28, 28), 10)
  _device_memory(monkeypatch, device[0], limit=int(2.5 * state_bytes / 0.4))
  sizes = []
  real = vectorized._train_group  # pylint: disable=protected-access

  def train_group(trials, *args, **kwargs):
    sizes.append(len(trials))
    return real(trials, *args, **kwargs)
  monkeypatch.setattr(vectorized, '_train_group', train_group)
  parts = vectorized.train_trials(configs, dataset, device, chunk_size=1, log=lambda _: None)
  assert sizes == [2, 2, 1]
  untimed = lambda histories: [[run_files.without_timing(r) for r in h] for h in histories]
  # The evaluation program of the one-trial part sums the test loss in another order: one ulp
  # apart in one epoch on a 2-core AMD EPYC (equal on a Xeon).
  without_test_loss = lambda record: {k: v for k, v in record.items() if k != 'test_loss'}
  assert [len(h) for h in parts['history']] == [len(h) for h in whole['history']] == [2] * 5
  for got, want in zip(sum(untimed(parts['history']), []), sum(untimed(whole['history']), [])):
    assert without_test_loss(got) == without_test_loss(want)
    np.testing.assert_allclose(got['test_loss'], want['test_loss'], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(parts['state']), jax.tree.leaves(whole['state'])):
    assert np.array_equal(a, b)


def test_a_sweep_whose_trial_does_not_fit_is_refused_before_training(config, tmp_path, monkeypatch):
  from mlp_mnist.sweeps import runner  # pylint: disable=g-import-not-at-top
  sweep_path = tmp_path / 'sweep.py'
  sweep_path.write_text("def get_sweep(hyper):\n  return hyper.sweep('seed', [0, 1])\n")
  device = jax.devices()[:1]
  _device_memory(monkeypatch, device[0], limit=1000)
  with pytest.raises(vectorized.TrialsDoNotFit, match=r"^one trial's train state takes .* MiB, "
                     r'more than 40% of the 0 MiB free on cpu; make the model smaller or use a '
                     r'device with more memory\.$'):
    runner.run_sweep(config, str(sweep_path), str(tmp_path / 'run'), devices=device,
                     dataset=synthetic_dataset(num_train=64, num_test=20), log=lambda _: None)
  assert not (tmp_path / 'run' / 'trials').exists()  # Nothing trained, no trial folder.
