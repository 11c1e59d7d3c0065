"""Python files that describe runs, loaded by path: config files (`configs/*.py`) and sweep files.

A config file anywhere (outside the checkout, with the package installed) builds on a shipped
config by name, or on another file beside it:

    from mlp_mnist import config_files

    def get_config():
      config = config_files.shipped_config('default')  # or config_files.load_config(__file__, 'mine')
      config.batch_size = 128
      return config
"""

import importlib
import importlib.util
import os
import types


def load_module(path: str, name: str | None = None) -> types.ModuleType:
  """Runs the Python file at `path` as a fresh module (not added to `sys.modules`)."""
  name = name or '_mlp_mnist_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise ImportError(f'{path} is not a Python file')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(beside: str, name: str, *args):
  """`get_config(*args)` of the config file `name`.py in the folder of the file `beside`."""
  path = os.path.join(os.path.dirname(os.path.abspath(beside)), f'{name}.py')
  return load_module(path).get_config(*args)


def shipped_config(name: str, *args):
  """`get_config(*args)` of the config `name` shipped with the package (`mlp_mnist/configs/`:
  'default', 'fast', 'cnn')."""
  return importlib.import_module(f'mlp_mnist.configs.{name}').get_config(*args)
