import io

import jax
import numpy as np
import pytest

from mlp_mnist import train
from mlp_mnist.records import console

from conftest import synthetic_dataset


class Terminal(io.StringIO):

  def isatty(self):
    return True


def test_bar_only_on_a_terminal_unless_asked():
  assert console.shows_bar('auto', Terminal())
  assert not console.shows_bar('auto', io.StringIO())
  assert console.shows_bar('on', io.StringIO())
  assert not console.shows_bar('off', Terminal())


@pytest.mark.parametrize('steps,updates,expected', [
    (1875, 20, 75),  # A divisor near 94: every call has one shape.
    (8, 3, 2),
    (8, 100, 1),
    (1873, 20, 94),  # Prime: calls of 94 steps and a shorter last one.
    (5, 1, 5),
])
def test_steps_per_call(steps, updates, expected):
  assert console.steps_per_call(steps, updates) == expected


def test_epoch_bar_draws_steps_loss_speed_and_time_left_in_place():
  stream = Terminal()
  bar = console.EpochBar(stream, epoch=2, num_epochs=5, num_steps=4)
  bar.update({'loss_sum': np.array([8.0, 4.0]), 'count': np.array([4.0, 4.0])})
  bar.update({'loss_sum': np.array([2.0, 2.0]), 'count': np.array([4.0, 4.0])})
  bar.close()
  frames = stream.getvalue().split('\r')
  assert frames[1].startswith('epoch 2/5:   0%') and ' 0/4 [00:00<?' in frames[1]
  assert frames[2].startswith('epoch 2/5:  50%') and ' 2/4 [' in frames[2]
  assert 'loss 1.5000, ' in frames[2] and 'ex/s' in frames[2]
  elapsed, left = frames[2].split(' 2/4 [')[1].split(',')[0].split('<')  # tqdm's mm:ss<mm:ss.
  assert elapsed.startswith('00:') and left.startswith('00:')
  assert frames[3].startswith('epoch 2/5: 100%') and ' 4/4 [' in frames[3]
  assert 'loss 1.0000, ' in frames[3]
  assert frames[-2].strip() == '' and frames[-1] == ''  # The line is cleared at the end.


def test_a_notebook_gets_tqdms_notebook_bar(monkeypatch):
  pytest.importorskip('ipywidgets')
  from tqdm import notebook  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(console, 'in_notebook', lambda: True)
  assert console.shows_bar('auto', io.StringIO())  # A kernel's stdout is not a terminal.
  shown = []
  monkeypatch.setattr(notebook, 'display', lambda *args, **kwargs: shown.append(args))
  bar = console.EpochBar(io.StringIO(), epoch=1, num_epochs=1, num_steps=4)
  assert isinstance(bar._bar, notebook.tqdm_notebook)  # pylint: disable=protected-access
  bar.update({'loss_sum': np.array([8.0, 4.0]), 'count': np.array([4.0, 4.0])})
  assert bar._bar.container.children[1].value == 2 and len(shown) == 1  # pylint: disable=protected-access
  text = bar._bar.container.children[2].value.replace('\u2007', ' ')  # pylint: disable=protected-access
  assert 'loss 1.5000' in text and '&lt;' in text  # With the time left.
  bar.close()


def _run(config, stream):
  return train.train_and_evaluate(config, None, devices=jax.devices()[:2],
                                  dataset=synthetic_dataset(num_train=330), log=lambda _: None,
                                  stream=stream)


def test_epoch_split_for_the_bar_changes_nothing(config):
  config.num_epochs = 2
  config.model.dropout_rate = 0.2
  config.logging.bar_updates_per_epoch = 3  # 11 steps, the last partial: calls of 4, 4, 3.
  plain_stream, terminal = io.StringIO(), Terminal()
  plain = _run(config, plain_stream)
  with_bar = _run(config, terminal)
  assert plain_stream.getvalue() == ''
  assert 'epoch 2/2: ' in terminal.getvalue() and ' 11/11 [' in terminal.getvalue()
  for a, b in zip(plain['history'], with_bar['history']):
    assert {k: v for k, v in a.items() if 'sec' not in k} == {
        k: v for k, v in b.items() if 'sec' not in k}
  for a, b in zip(jax.tree.leaves(plain['state']), jax.tree.leaves(with_bar['state'])):
    np.testing.assert_array_equal(a, b)


def test_split_steps_covers_every_step_in_order():
  indices = np.arange(2 * 8 * 3).reshape(2, 8, 3)
  chunks = train.split_steps(indices, 3)
  assert [c.shape[1] for c in chunks] == [3, 3, 2]
  np.testing.assert_array_equal(np.concatenate(chunks, axis=1), indices)
  assert len(train.split_steps(indices, None)) == 1
