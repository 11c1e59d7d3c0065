"""The documented examples, run as documented: docs/extending.md's files of a researcher's own
(model, loss, augmentation, hook, config, sweep) through train, sweep, evaluate and predict, and
docs/library.md's Python."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, synthetic_dataset, write_dataset_cache


def _blocks(doc: str, language: str) -> list[str]:
  with open(os.path.join(REPO, 'docs', doc)) as f:
    return re.findall(rf'```{language}\n(.*?)```', f.read(), re.S)


def _files(doc: str) -> dict[str, str]:
  """The python blocks of `doc` that start with `# file: NAME`, by name."""
  return {m.group(1): block for block in _blocks(doc, 'python')
          for m in [re.match(r'# file: (\S+)\n', block)] if m}


def test_extending_examples_train_sweep_evaluate_and_predict(tmp_path):
  files = _files('extending.md')
  assert set(files) == {'resmlp.py', 'focal.py', 'noise.py', 'probes.py', 'my_config.py',
                        'gamma_seeds.py'}
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  dataset = synthetic_dataset(num_train=120, num_test=40)
  write_dataset_cache(tmp_path / 'cache', dataset)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(dataset['test'][0][0]).save(tmp_path / 'digit.png')
  commands = [line for block in _blocks('extending.md', 'bash') for line in block.splitlines()
              if 'my_config.py' in line or 'runs/resmlp ' in line or line.endswith('runs/resmlp')]
  assert [c.split()[1] for c in commands] == ['scripts/train.py', 'scripts/sweep.py',
                                              'scripts/evaluate.py', 'scripts/predict.py']
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  for command in commands:
    args = command.split()[1:]
    args[0] = os.path.join(REPO, args[0])
    if 'train.py' in args[0] or 'sweep.py' in args[0]:
      args += [f'--config.data.cache_dir={tmp_path / "cache"}', '--jax_cache_dir=',
               '--config.num_epochs=1', '--config.eval_batch_size=20']
    if 'sweep.py' in args[0]:
      args.append('--cpu_devices=1')
    result = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, (command, result.stderr[-3000:])
    if 'predict.py' in args[0]:
      assert 'digit.png' in result.stdout
  run = tmp_path / 'runs' / 'resmlp'
  with open(run / 'config.json') as f:
    config = json.load(f)
  assert (config['model']['name'], config['loss']['name'], config['augment']['name'],
          config['optimizer']['optax']['name']) == ('resmlp', 'focal', 'gaussian_noise', 'lion')
  assert config['model']['resmlp'] == {'width': 128, 'depth': 2}
  with open(run / 'metrics.jsonl') as f:
    assert 'probe/first_layer_abs' in json.loads(f.readline())
  with open(run / 'provenance.json') as f:
    imports = json.load(f)[0]['imports']
  assert [os.path.basename(r['path']) for r in imports] == ['resmlp.py', 'focal.py', 'noise.py']
  assert all((run / r['copy']).read_text() == files[os.path.basename(r['path'])]
             for r in imports)
  with open(tmp_path / 'runs' / 'gamma' / 'sweep.json') as f:
    sweep = json.load(f)
  assert len(sweep['trials']) == 6
  assert {t['program_group'] for t in sweep['trials']} == {0}  # One program.
  assert [os.path.basename(r['copy']) for r in sweep['imports']] == [
      '0-resmlp.py', '1-focal.py', '2-noise.py']


def test_library_examples_run(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  namespace = {}
  for block in _blocks('library.md', 'python'):
    exec(compile(block, 'docs/library.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['report']['test_accuracy'] == pytest.approx(
      namespace['result']['history'][-1]['test_accuracy'])
  assert namespace['probabilities'].shape == (5, 10)
  with open(tmp_path / 'runs' / 'in_memory' / 'dataset.json') as f:
    assert json.load(f)['source'] == 'memory'
