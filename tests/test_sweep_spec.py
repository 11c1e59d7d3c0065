import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from benchmarks import sweep_speed
from mlp_mnist.sweeps import sweep_files

import default
from conftest import REPO

SWEEPS = os.path.join(REPO, 'configs', 'sweeps')


def test_product_zip_chain_fixed_expand_exactly():
  hyper = sweep_files.HYPER
  assert hyper.product([hyper.sweep('a', [1, 2]), hyper.sweep('b', 'xy')]) == [
      {'a': 1, 'b': 'x'}, {'a': 1, 'b': 'y'}, {'a': 2, 'b': 'x'}, {'a': 2, 'b': 'y'}]
  assert hyper.zip([hyper.sweep('a', [1, 2]), hyper.sweep('b', [3, 4])]) == [
      {'a': 1, 'b': 3}, {'a': 2, 'b': 4}]
  assert hyper.chain([hyper.fixed('a', 1), hyper.sweep('b', [5, 6])]) == [
      {'a': 1}, {'b': 5}, {'b': 6}]
  nested = hyper.product([hyper.fixed('c', 0),
                          hyper.zip([hyper.sweep('a', [1, 2]), hyper.sweep('b', [3, 4])])])
  assert nested == [{'c': 0, 'a': 1, 'b': 3}, {'c': 0, 'a': 2, 'b': 4}]


@pytest.mark.parametrize('build,message', [
    (lambda h: h.sweep('seed', []), "hyper.sweep('seed', ...) has no values"),
    (lambda h: h.zip([h.sweep('a', [1, 2]), h.sweep('b', [1])]), 'equal lengths, got lengths [2, 1]'),
    (lambda h: h.product([h.sweep('a', [1]), h.sweep('a', [2])]), "both set 'a'"),
    (lambda h: h.product(h.sweep('a', [1])), 'takes a list of sweeps'),
    (lambda h: h.chain([[1, 2]]), 'takes sweeps made by hyper.sweep'),
    (lambda h: h.product([]), 'hyper.product([]) has no sweeps: an empty sweep is an error'),
    (lambda h: h.zip([]), 'hyper.zip([]) has no sweeps'),
    (lambda h: h.chain(()), 'hyper.chain([]) has no sweeps'),
])
def test_combinators_reject_mistakes(build, message):
  with pytest.raises(sweep_files.SweepError) as e:
    build(sweep_files.HYPER)
  assert message in str(e.value)


@pytest.mark.parametrize('name,num_trials', [('lr_seed', 32), ('width_depth', 12),
                                              ('activation_dropout', 16), ('optimizers', 12),
                                              ('seeds', 3), ('quasirandom_adam', 128),
                                              ('quasirandom_adam_halving', 128)])
def test_shipped_sweeps_expand_and_validate(config, name, num_trials):
  path = os.path.join(SWEEPS, f'{name}.py')
  trials = sweep_files.sweep_trials(config, path)
  assert len(trials) == num_trials
  assert len({t.name for t in trials}) == num_trials
  with open(path) as f:
    assert f'--sweep configs/sweeps/{name}.py' in f.read()  # The command is in the docstring.
  for trial in trials:
    for key, value in trial.overrides.items():
      section, _, leaf = key.rpartition('.')
      assert (trial.config[section] if section else trial.config)[leaf] == value
  assert config.optimizer.learning_rate == 1e-3 and config.seed == 0  # The base is untouched.


def test_every_shipped_sweep_is_tested():
  shipped = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(SWEEPS, '*.py'))}
  assert shipped == {'lr_seed', 'width_depth', 'activation_dropout', 'optimizers', 'seeds',
                     'quasirandom_adam', 'quasirandom_adam_halving'}


def test_trial_names_and_resolved_values(config):
  trials = sweep_files.expand(config, [
      {'optimizer.learning_rate': 1e-4, 'seed': np.int64(2), 'model.hidden_sizes': [64, 32]},
      {'optimizer.learning_rate': np.float32(0.5), 'seed': 3, 'model.hidden_sizes': ()},
  ])
  assert [t.name for t in trials] == ['learning_rate=0.0001,seed=2,hidden_sizes=64x32',
                                      'learning_rate=0.5,seed=3,hidden_sizes=none']
  first, second = (t.config for t in trials)
  assert first.seed == 2 and type(first.seed) is int
  assert first.model.hidden_sizes == (64, 32) and second.model.hidden_sizes == ()
  assert second.optimizer.learning_rate == 0.5


def test_names_stay_unique_when_values_read_the_same(config):
  trials = sweep_files.expand(config, [{'model.activation': 'relu'}, {'model.activation': 'gelu'}])
  assert [t.name for t in trials] == ['activation=relu', 'activation=gelu']
  assert sweep_files.trial_names([{'a': 'x y'}, {'a': 'x_y'}]) == ['a=x_y-1', 'a=x_y-2']
  long = sweep_files.trial_names([{'a': 'v' * 300}, {'a': 'w' * 300}])
  assert all(len(n) <= 120 for n in long) and len(set(long)) == 2


def _write_sweep(tmp_path, body):
  path = tmp_path / 'sweep.py'
  path.write_text(textwrap.dedent(body))
  return str(path)


@pytest.mark.parametrize('body,message', [
    ("def get_sweep(hyper):\n  return hyper.sweep('optimizer.learnin_rate', [1e-3])\n",
     "unknown config key 'optimizer.learnin_rate' (did you mean 'optimizer.learning_rate'?)"),
    ("def get_sweep(hyper):\n  return hyper.sweep('optimizer.learning_rate', ['1e-3'])\n",
     "optimizer.learning_rate='1e-3' has type str; it must be a positive number"),
    ("def get_sweep(hyper):\n  return hyper.sweep('seed', [0, 1.5])\n",
     'seed=1.5 has type float; it must be an integer in [0, 2**32)'),
    ("def get_sweep(hyper):\n  return hyper.sweep('optimizer.nesterov', [0, 1])\n",
     'optimizer.nesterov=0 has type int; it must be True or False'),
    ("def get_sweep(hyper):\n  return []\n", 'get_sweep returned no trials'),
    ("def get_sweep(hyper):\n  return hyper.sweep('seed', [])\n", "hyper.sweep('seed', ...) has no values"),
    ("def get_sweep(hyper):\n  return hyper.sweep('optimizer.learning_rate', [1e-3, -1.0])\n",
     'trial 1 (learning_rate=-1.0): config.optimizer.learning_rate=-1.0 is invalid: it must be a '
     'positive number.'),
    ("def get_sweep(hyper):\n  return hyper.sweep('optimizer.weight_decay', [0.0, 1e-4])\n",
     "only applies to optimizer.name='adamw'"),
    ("def get_sweep(hyper):\n  return hyper.sweep('data.name', ['mnist'])\n",
     "'data.name' cannot be swept"),
    ("def get_sweep(hyper):\n  return hyper.sweep('seed', [1, 2, 1])\n",
     'trials 0 and 2 are identical (seed=1)'),
    # 1 and 1.0 set the same config: one setting, not two replicates.
    ("def get_sweep(hyper):\n  return hyper.sweep('optimizer.learning_rate', [1, 0.5, 1.0])\n",
     'trials 0 and 2 are identical (optimizer.learning_rate=1.0)'),
    ("def get_sweep(hyper):\n  return hyper.product([])\n", 'an empty sweep is an error'),
    ("import sys\nsys.exit(3)\n", 'it called sys.exit(3)'),
    ("import sys\ndef get_sweep(hyper):\n  sys.exit(3)\n", 'it called sys.exit(3)'),
    ("def get_sweep(hyper):\n  return {'seed': 1}\n", 'must return a list of trials'),
    ('def sweep(hyper):\n  return []\n', 'defines no get_sweep(hyper) function'),
    ('def get_sweep(hyper):\n  return hyper.sweep(\n', 'line 2'),
    ("def get_sweep(hyper):\n  return hyper.sweep('seed', range(4)) + undefined\n",
     "get_sweep failed with NameError: name 'undefined' is not defined"),
])
def test_bad_sweep_files_fail_before_training_in_one_line(config, tmp_path, body, message):
  path = _write_sweep(tmp_path, body)
  with pytest.raises(sweep_files.SweepError) as e:
    sweep_files.sweep_trials(config, path)
  assert message in str(e.value)
  assert str(e.value).startswith(f'sweep file {path}')
  assert '\n' not in str(e.value)


def test_missing_sweep_file(config, tmp_path):
  with pytest.raises(sweep_files.SweepError, match='does not exist'):
    sweep_files.sweep_trials(config, str(tmp_path / 'nope.py'))


def test_sweep_script_reports_a_bad_sweep_file_in_one_line(tmp_path):
  path = _write_sweep(tmp_path, "def get_sweep(hyper):\n  return hyper.sweep('seeed', [1])\n")
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'),
       f'--config={os.path.join(REPO, "configs", "default.py")}', f'--sweep={path}',
       f'--workdir={tmp_path / "run"}', '--jax_cache_dir='],
      capture_output=True, text=True, timeout=120, cwd=REPO)
  assert result.returncode == 2, result.stderr
  assert f"error: sweep file {path}: unknown config key 'seeed' (did you mean 'seed'?)" in (
      result.stderr)
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()


def test_benchmark_commands_reproduce_the_trials(tmp_path):
  trials = sweep_files.sweep_trials(default.get_config(), os.path.join(SWEEPS, 'optimizers.py'))
  sweep_path = tmp_path / 'trials.py'
  sweep_path.write_text(sweep_speed.sweep_file_text(trials))
  assert [t.overrides for t in sweep_files.sweep_trials(default.get_config(), str(sweep_path))] == [
      t.overrides for t in trials]
  overrides = {'model.hidden_sizes': (64, 32), 'model.activation': 'tanh', 'seed': 3,
               'optimizer.learning_rate': 1e-05, 'optimizer.nesterov': True}
  # The flags as scripts/train.py parses them: absl's global flags, in a fresh process.
  program = textwrap.dedent("""
      import sys
      from absl import flags
      from ml_collections import config_flags
      config_flags.DEFINE_config_file('config')
      flags.FLAGS(sys.argv)
      print(flags.FLAGS.config.to_json())
  """)
  parsed = subprocess.run(
      [sys.executable, '-c', program, f'--config={REPO}/configs/default.py',
       *sweep_speed.override_flags(overrides)],
      capture_output=True, text=True, timeout=60, check=True)
  expected = sweep_files.with_overrides(default.get_config(), overrides)
  assert json.loads(parsed.stdout) == json.loads(expected.to_json())
