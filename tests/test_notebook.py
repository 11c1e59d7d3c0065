"""notebooks/quickstart.ipynb runs top to bottom: on the real MNIST when MLP_MNIST_IDX_DIR is set,
on its synthetic stand-in otherwise."""

import os

import pytest

from conftest import REPO

NOTEBOOK = os.path.join(REPO, 'notebooks', 'quickstart.ipynb')


def _text(cell):
  return ''.join(o.get('text', '') for o in cell.outputs if o.output_type == 'stream')


def test_quickstart_notebook_runs_top_to_bottom(monkeypatch):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  pytest.importorskip('ipykernel')
  monkeypatch.setenv('PYTHONPATH', REPO)  # This checkout's package, in the kernel too.
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                                   resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}})
  client.execute()
  code = [c for c in notebook.cells if c.cell_type == 'code']
  assert all(o.output_type != 'error' for c in code for o in c.outputs)
  training = next(_text(c) for c in code if 'train_and_evaluate' in c.source)
  assert 'Parameters: 101,770' in training and 'epoch   5' in training
  accuracy = float(training.split('Final test accuracy: ')[1].split('%')[0]) / 100
  assert accuracy >= (0.97 if os.environ.get('MLP_MNIST_IDX_DIR') else 0.5)
  images = [o for c in code for o in c.outputs if 'image/png' in o.get('data', {})]
  assert len(images) == 4  # Curves, confusion matrix, sweep plot, the drawn digit.
  sweep = next(_text(c) for c in code if 'run_sweep' in c.source)
  assert '3 trials in 1 program group(s)' in sweep
  predicted = _text(code[-1])
  assert 'seven.png: ' in predicted
  if os.environ.get('MLP_MNIST_IDX_DIR'):
    assert 'seven.png: 7 ' in predicted
