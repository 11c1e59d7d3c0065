import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from mlp_mnist import config_checks

from conftest import REPO

DEFAULT = os.path.join(REPO, 'configs', 'default.py')


def _parse(*overrides):
  argv = ['prog', f'--config={DEFAULT}', *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_default_config_is_the_keras_recipe(config):
  config_checks.validate_config(config, num_devices=1)
  assert (config.batch_size, config.num_epochs, config.model.hidden_sizes) == (32, 5, (128,))
  assert config.model.activation == 'relu' and config.model.dropout_rate == 0
  opt = config.optimizer
  assert (opt.name, opt.learning_rate, opt.b1, opt.b2, opt.eps) == ('adam', 1e-3, 0.9, 0.999, 1e-7)
  assert opt.schedule == 'constant'


def test_overrides_apply():
  config = _parse('--config.optimizer.learning_rate=3e-4', "--config.model.hidden_sizes=(256,256)",
                  '--config.model.activation=gelu', '--config.seed=3')
  assert config.optimizer.learning_rate == 3e-4
  assert tuple(config.model.hidden_sizes) == (256, 256)
  assert config.model.activation == 'gelu' and config.seed == 3
  config_checks.validate_config(config, num_devices=4)


@pytest.mark.parametrize('key,value,message', [
    ('optimizer.learning_rate', -1.0, 'config.optimizer.learning_rate=-1.0 is invalid'),
    ('model.activation', 'swish2', "config.model.activation='swish2' is invalid"),
    ('optimizer.name', 'adagrad', "config.optimizer.name='adagrad' is invalid"),
    ('model.dropout_rate', 1.0, 'must be in [0, 1)'),
    ('model.dropout_rate', -0.1, 'must be in [0, 1)'),
    ('model.hidden_sizes', (128, 0), 'tuple of positive integers'),
    ('batch_size', 0, 'config.batch_size=0 is invalid'),
    ('optimizer.schedule', 'cosin', "config.optimizer.schedule='cosin' is invalid"),
])
def test_invalid_values_name_the_key(config, key, value, message):
  section, _, name = key.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.validate_config(config)
  assert message in str(e.value)


def test_batch_size_must_divide_over_devices(config):
  config.batch_size = 30
  config_checks.validate_config(config, num_devices=2)
  with pytest.raises(config_checks.ConfigError, match='not divisible by the 4 devices'):
    config_checks.validate_config(config, num_devices=4)


def test_weight_decay_needs_adamw(config):
  config.optimizer.weight_decay = 1e-4
  with pytest.raises(config_checks.ConfigError, match='adamw'):
    config_checks.validate_config(config)
  config.optimizer.name = 'adamw'
  config_checks.validate_config(config)


def test_unknown_and_missing_keys(config):
  config.unlock()
  config.extra = 1
  with pytest.raises(config_checks.ConfigError, match="unknown config key 'extra'"):
    config_checks.validate_config(config)
  del config['extra']
  del config.optimizer['eps']
  with pytest.raises(config_checks.ConfigError, match="missing 'optimizer.eps'"):
    config_checks.validate_config(config)


def _train_script(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'train.py'),
                         f'--config={DEFAULT}', *args], capture_output=True, text=True,
                        timeout=120, cwd=REPO)


@pytest.mark.parametrize('args,message', [
    (['--config.optimizer.learnin_rate=1'],
     "error: --config.optimizer.learnin_rate: unknown config key 'learnin_rate' (did you mean "
     "'learning_rate'?)"),
    (['--config.nope=1'], "error: --config.nope: unknown config key 'nope'"),
    (['--config.batch_size=3.5'], 'error: flag --config.batch_size=3.5'),
    (['--config.optimizer.learning_rate=-0.1'],
     'error: config.optimizer.learning_rate=-0.1 is invalid: it must be a positive number.'),
    (['--config.early_stopping.monitor=test_accuracy'],
     "error: config.early_stopping.monitor='test_accuracy' would choose on the test set"),
])
def test_train_script_rejects_bad_config_in_one_line(args, message, tmp_path):
  result = _train_script(*args, f'--workdir={tmp_path / "run"}')
  assert result.returncode == 2, result.stderr
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()
