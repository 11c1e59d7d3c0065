"""A profiled window of steps: the trace files exist, and the run's results are those of a run
without a profile."""

import glob
import gzip
import json

import jax
import numpy as np
import pytest

from mlp_mnist import train
from mlp_mnist.records import run_files

from conftest import synthetic_dataset

STEPS_PER_EPOCH = 8  # 256 synthetic examples in batches of 32.


def _run(config, workdir):
  return train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:2],
                                  dataset=synthetic_dataset(), log=lambda _: None)


def test_a_profiled_window_writes_a_trace_and_changes_no_result(config, tmp_path):
  config.num_epochs = 2
  config.model.dropout_rate = 0.2
  config.checkpoint.every_epochs = 0
  plain = _run(config, tmp_path / 'plain')
  config.profile.epoch = 2
  config.profile.start_step = 3
  config.profile.num_steps = 3  # Steps 3-5 of 8: the epoch runs as calls of 3, 3 and 2 steps.
  profiled = _run(config, tmp_path / 'profiled')
  assert [run_files.without_timing(r) for r in profiled['history']] == [
      run_files.without_timing(r) for r in plain['history']]
  for a, b in zip(jax.tree.leaves(plain['state']), jax.tree.leaves(profiled['state'])):
    np.testing.assert_array_equal(a, b)

  (session,) = glob.glob(str(tmp_path / 'profiled' / 'profile' / 'plugins' / 'profile' / '*'))
  assert glob.glob(f'{session}/*.xplane.pb')  # TensorBoard's profile plugin reads these.
  with gzip.open(f'{session}/perfetto_trace.json.gz') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  steps = [e['args']['step_num'] for e in events if e.get('name') == 'train']
  assert steps == [str(STEPS_PER_EPOCH + 3)]  # One call, the window, marked by its first step.
  assert not (tmp_path / 'plain' / 'profile').exists()


def test_split_steps_cuts_at_the_window_and_makes_no_call_of_one_step():
  indices = np.arange(2 * 8 * 3).reshape(2, 8, 3)
  chunks = train.split_steps(indices, 4, cuts=(2, 6))
  assert [c.shape[1] for c in chunks] == [2, 2, 2, 2]
  np.testing.assert_array_equal(np.concatenate(chunks, axis=1), indices)
  assert [c.shape[1] for c in train.split_steps(indices, 4, cuts=(3, 6))] == [3, 3, 2]
  assert [c.shape[1] for c in train.split_steps(indices, None, cuts=(0, 8, 5))] == [5, 3]
  assert [c.shape[1] for c in train.split_steps(indices, 1)] == [2, 2, 2, 2]
  assert [c.shape[1] for c in train.split_steps(indices[:, :1], 4)] == [1]


@pytest.mark.parametrize('start,num,window', [
    (3, 3, (3, 6)), (3, 1, (3, 5)), (7, 5, (6, 8)), (1, 2, (0, 3)), (5, 2, (5, 8)), (0, 99, (0, 8))])
def test_the_window_takes_in_a_lone_step_beside_it(config, start, num, window):
  config.profile.epoch, config.profile.start_step, config.profile.num_steps = 1, start, num
  trace = train._trace_window(config, '/tmp/w', STEPS_PER_EPOCH, True)  # pylint: disable=protected-access
  assert (trace.start, trace.stop) == window
