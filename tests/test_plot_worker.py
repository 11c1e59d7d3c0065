"""The plot worker (`records/plot_worker.py`): figures drawn in a process forked at a script's start
are the same files, and every fault of that process leaves the figure drawn here instead.

A worker starts only in a single-threaded process, so each test runs a fresh interpreter, as a
script does; this process (JAX's threads) must refuse to fork.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np

from mlp_mnist.records import plot_worker
from mlp_mnist.records import plots

from conftest import REPO, assert_png

HISTORY = [{'epoch': e, 'train_loss': 1.0 / e, 'train_accuracy': 0.8 + 0.02 * e,
            'test_loss': 1.2 / e, 'test_accuracy': 0.78 + 0.02 * e} for e in range(1, 4)]
MATRIX = np.arange(16).reshape(4, 4)

# The start of every script run below: the worker first, then what the scripts import.
_START = '''
import json, os, signal, sys, time
from mlp_mnist.records import plot_worker
started = plot_worker.start()
import numpy as np
from mlp_mnist.records import plots
worker_pid = plot_worker._worker.pid if started else None
'''


def _run(code: str, tmp_path, **replacements) -> dict:
  """Runs `_START` and `code` in a new interpreter in `tmp_path`; returns what it printed as JSON
  on its last line."""
  code = _START + textwrap.dedent(code)
  for key, value in replacements.items():
    code = code.replace(key, repr(value))
  result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240, env={**os.environ, 'PYTHONPATH': REPO})
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


def _ended(pid: int) -> bool:
  """Whether process `pid` has exited (a zombie no parent reaped counts)."""
  try:
    with open(f'/proc/{pid}/stat') as stat:
      return stat.read().rsplit(')', 1)[1].split()[0] in 'ZX'
  except FileNotFoundError:
    return True


def test_figures_drawn_by_the_worker_are_the_files_this_process_draws(tmp_path):
  found = _run('''
      names = {}
      names['curves'] = plots.save_curves(HISTORY, 'worker/curves.png', title='run')
      names['matrix'] = plots.save_confusion_matrix(np.asarray(MATRIX), 'worker/matrix.png')
      drawn_here = 'matplotlib' in sys.modules
      plots.save_curves.__wrapped__(HISTORY, 'here/curves.png', title='run')
      plots.save_confusion_matrix.__wrapped__(np.asarray(MATRIX), 'here/matrix.png')
      print(json.dumps({'started': started, 'drawn_here': drawn_here, 'names': names}))
      ''', tmp_path, HISTORY=HISTORY, MATRIX=MATRIX.tolist())
  assert found['started'] and not found['drawn_here']
  assert found['names'] == {'curves': 'worker/curves.png', 'matrix': 'worker/matrix.png'}
  for name in ('curves', 'matrix'):
    assert_png(tmp_path / 'worker' / f'{name}.png')
    assert ((tmp_path / 'worker' / f'{name}.png').read_bytes()
            == (tmp_path / 'here' / f'{name}.png').read_bytes())


def test_an_error_in_the_worker_is_raised_here_as_without_it_and_the_worker_serves_on(tmp_path):
  found = _run('''
      try:
        plots.save_curves([{'loss': 1.0}], 'bad.png')
        raised = None
      except KeyError as e:
        raised = str(e)
      serving = plot_worker.running() and not os.path.exists('bad.png')
      plots.save_curves(HISTORY, 'after.png')
      print(json.dumps({'raised': raised, 'serving': serving, 'running': plot_worker.running()}))
      ''', tmp_path, HISTORY=HISTORY)
  assert found == {'raised': "'epoch'", 'serving': True, 'running': True}
  assert_png(tmp_path / 'after.png')


def test_a_killed_worker_leaves_the_figure_drawn_here(tmp_path):
  found = _run('''
      os.kill(worker_pid, signal.SIGINT)  # Ctrl-C is the run's, not the worker's.
      time.sleep(0.5)
      plots.save_curves(HISTORY, 'first.png')
      after_interrupt = plot_worker.running() and 'matplotlib' not in sys.modules
      os.kill(worker_pid, signal.SIGKILL)
      time.sleep(0.5)
      plots.save_curves(HISTORY, 'second.png')
      print(json.dumps({'after_interrupt': after_interrupt, 'running': plot_worker.running(),
                        'drawn_here': 'matplotlib' in sys.modules}))
      ''', tmp_path, HISTORY=HISTORY)
  assert found == {'after_interrupt': True, 'running': False, 'drawn_here': True}
  assert_png(tmp_path / 'first.png')
  assert_png(tmp_path / 'second.png')


def test_a_worker_that_does_not_answer_is_ended_and_the_figure_drawn_here(tmp_path):
  found = _run('''
      plot_worker.REPLY_TIMEOUT_SEC = 2.0
      os.kill(worker_pid, signal.SIGSTOP)
      start = time.monotonic()
      plots.save_curves(HISTORY, 'stuck.png')
      print(json.dumps({'running': plot_worker.running(), 'waited': time.monotonic() - start,
                        'worker': worker_pid}))
      ''', tmp_path, HISTORY=HISTORY)
  assert not found['running'] and 2.0 <= found['waited'] < 30
  assert _ended(found['worker'])
  assert_png(tmp_path / 'stuck.png')


def test_the_worker_ends_with_the_process_that_started_it(tmp_path):
  found = _run('''
      print(json.dumps({'worker': worker_pid}), flush=True)
      os._exit(0)  # As a killed process: no exit handler runs.
      ''', tmp_path)
  deadline = time.monotonic() + 20
  while not _ended(found['worker']) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert _ended(found['worker'])


def test_a_process_with_threads_draws_its_figures_itself(tmp_path):
  # This process runs JAX's threads: forking it could deadlock the copy.
  assert len(os.listdir('/proc/self/task')) > 1
  assert not plot_worker.start() and not plot_worker.running()
  assert plots.save_curves(HISTORY, str(tmp_path / 'curves.png')) == str(tmp_path / 'curves.png')
  assert_png(tmp_path / 'curves.png')
