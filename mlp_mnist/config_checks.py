"""Checks a config completely before any work starts: every key known, typed and in range.

A config selects one component of each registry by name (`config.model.name`, `config.loss.name`,
`config.optimizer.name`, `config.augment.name`); only the selected components' keys are required
(their defaults are filled in when absent), and keys of the others are ignored when comparing
runs, so registering a component or adding a key to one never changes what an existing run's
config means. `config.imports` (your modules or `.py` files) is imported first.
"""

import json
import math
from typing import Any, Callable

import ml_collections

from mlp_mnist import augmentations
from mlp_mnist import early_stopping
from mlp_mnist import errors
from mlp_mnist import hooks
from mlp_mnist import losses
from mlp_mnist import models
from mlp_mnist import optimizers
from mlp_mnist import registry
from mlp_mnist.data import validation


class ConfigError(errors.UserError, ValueError):
  """A config key is unknown, missing, of the wrong type or out of range."""


class ChoiceOnTestSetError(ConfigError):
  """The config would choose something (an epoch, weights, a checkpoint) on the test set."""


def _positive(v):
  return v > 0


def _non_negative(v):
  return v >= 0


PROGRESS_BAR_MODES = ('auto', 'on', 'off')
WANDB_MODES = ('online', 'offline')


def _strings(v):
  return all(isinstance(s, str) and s for s in v)


# Keys that change where data comes from or how a run reports, never its results: a run may be
# resumed with different values for them.
RESULT_NEUTRAL_KEYS = ('data.data_dir', 'data.local_dir', 'data.cache_dir', 'data.use_cache',
                       'data.download', 'checkpoint.every_epochs', 'checkpoint.keep',
                       'checkpoint.every_steps', 'checkpoint.every_minutes',
                       'logging.log_every_epochs', 'logging.progress_bar',
                       'logging.bar_updates_per_epoch', 'checkpoint.keep_best',
                       'profile.epoch', 'profile.start_step', 'profile.num_steps',
                       'tracking.wandb.enabled', 'tracking.wandb.project',
                       'tracking.wandb.entity', 'tracking.wandb.run_name', 'tracking.wandb.tags',
                       'tracking.wandb.mode', 'tracking.mlflow.enabled',
                       'tracking.mlflow.tracking_uri', 'tracking.mlflow.experiment',
                       'tracking.mlflow.run_name', 'tracking.mlflow.tags', 'imports')


def result_neutral_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """`RESULT_NEUTRAL_KEYS` for this run: not the logging cadence when early stopping or the best
  checkpoint choose among the logged epochs (another cadence would stop or choose elsewhere)."""
  if early_stopping.best_checkpoint_metric(config) is None:
    return RESULT_NEUTRAL_KEYS
  return tuple(k for k in RESULT_NEUTRAL_KEYS if k != 'logging.log_every_epochs')

# Keys added after runs were recorded, with the value (as JSON) that reproduces those runs: a saved
# config.json without them still loads, resumes and compares equal to today's defaults. (Early
# stopping's 'auto' is off for them: only runs with a validation split turn it on.)
LATER_KEYS = {
    'data.npz_path': '', 'data.validation_split': 0.0,
    'model.name': 'mlp', 'model.cnn.features': [16, 32], 'model.cnn.kernel_size': 3,
    'model.cnn.dense_width': 128, 'model.cnn.activation': 'relu',
    'checkpoint.keep_best': False, 'checkpoint.every_steps': 0, 'checkpoint.every_minutes': 0.0,
    'early_stopping.monitor': 'auto', 'early_stopping.mode': 'auto',
    'early_stopping.patience': 3, 'early_stopping.min_delta': 0.0,
    'early_stopping.restore_best_weights': False, 'hooks': [],
    'profile.epoch': 0, 'profile.start_step': 0, 'profile.num_steps': 20,
    'tracking.wandb.enabled': False, 'tracking.wandb.project': 'mlp_mnist',
    'tracking.wandb.entity': '', 'tracking.wandb.run_name': '', 'tracking.wandb.tags': [],
    'tracking.wandb.mode': 'online', 'tracking.mlflow.enabled': False,
    'tracking.mlflow.tracking_uri': '', 'tracking.mlflow.experiment': 'mlp_mnist',
    'tracking.mlflow.run_name': '', 'tracking.mlflow.tags': [],
    'imports': [], 'compute_dtype': 'float32', 'loss.name': 'cross_entropy', 'augment.name': 'none',
}

# config section -> the registry whose component `config.<section>.name` selects.
REGISTRIES: dict[str, registry.Registry] = {
    'model': models.MODELS, 'loss': losses.LOSSES, 'optimizer': optimizers.OPTIMIZERS,
    'augment': augmentations.AUGMENTATIONS,
}
COMPUTE_DTYPES = ('float32', 'bfloat16')

# dotted key -> (accepted types, check, what a valid value is)
SCHEMA: dict[str, tuple[tuple[type, ...], Callable[[Any], bool], str]] = {
    'seed': ((int,), lambda v: 0 <= v < 2**32, 'an integer in [0, 2**32) (JAX seeds are uint32)'),
    'batch_size': ((int,), _positive, 'a positive integer'),
    'num_epochs': ((int,), _positive, 'a positive integer'),
    'eval_batch_size': ((int,), _positive, 'a positive integer'),
    'model.name': ((str,), bool, 'a registered model'),
    'loss.name': ((str,), bool, 'a registered loss'),
    'augment.name': ((str,), bool, 'a registered augmentation'),
    'imports': ((tuple, list), lambda v: all(isinstance(s, str) and s for s in v),
                "a tuple of module names or .py file paths, e.g. \"('my_model.py',)\""),
    'compute_dtype': ((str,), lambda v: v in COMPUTE_DTYPES, f'one of {list(COMPUTE_DTYPES)}'),
    'model.dropout_rate': ((float, int), lambda v: 0 <= v < 1, 'in [0, 1)'),
    'optimizer.name': ((str,), bool, 'a registered optimizer'),
    'optimizer.learning_rate': ((float, int), _positive, 'a positive number'),
    'optimizer.b1': ((float, int), lambda v: 0 <= v < 1, 'in [0, 1)'),
    'optimizer.b2': ((float, int), lambda v: 0 <= v < 1, 'in [0, 1)'),
    'optimizer.eps': ((float, int), _non_negative, 'a non-negative number'),
    'optimizer.momentum': ((float, int), lambda v: 0 <= v < 1, 'in [0, 1)'),
    'optimizer.nesterov': ((bool,), lambda v: True, 'True or False'),
    'optimizer.keras_epsilon': ((bool,), lambda v: True, 'True or False'),
    'optimizer.weight_decay': ((float, int), _non_negative, 'a non-negative number'),
    'optimizer.grad_clip_norm': ((float, int), _non_negative, 'a non-negative number (0: off)'),
    'optimizer.schedule': ((str,), lambda v: v in optimizers.SCHEDULES,
                           f'one of {list(optimizers.SCHEDULES)}'),
    'optimizer.warmup_epochs': ((float, int), _non_negative, 'a non-negative number'),
    'optimizer.end_learning_rate_factor': ((float, int), _non_negative,
                                           'a non-negative number'),
    'data.name': ((str,), bool, 'a TFDS dataset name'),
    'data.version': ((str,), bool, "a TFDS version such as '3.0.1'"),
    'data.data_dir': ((str,), lambda v: True, "a directory, or '' for TFDS' default"),
    'data.local_dir': ((str,), lambda v: True, "a directory of IDX files, or ''"),
    'data.cache_dir': ((str,), lambda v: True, "a directory, or '' for ~/.cache/mlp_mnist"),
    'data.use_cache': ((bool,), lambda v: True, 'True or False'),
    'data.download': ((bool,), lambda v: True, 'True or False'),
    'data.npz_path': ((str,), lambda v: True, "a .npz file of your own arrays, or '' for TFDS"),
    'data.validation_split': ((float, int), validation.is_validation_split,
                              'a whole number of held-out training examples (0: none; 1, not 1.0, '
                              'for one) or a fraction in (0, 1)'),
    'checkpoint.every_epochs': ((int,), _non_negative, 'a non-negative integer (0: off)'),
    'checkpoint.keep': ((int,), _positive, 'a positive integer'),
    'checkpoint.every_steps': ((int,), _non_negative, 'a non-negative integer (0: off)'),
    'checkpoint.every_minutes': ((float, int), _non_negative,
                                 'a non-negative number of minutes (0: off)'),
    'checkpoint.keep_best': ((bool,), lambda v: True, 'True or False'),
    'early_stopping.monitor': ((str,), bool, f'a metric of the epoch records, or one of '
                               f'{list(early_stopping.MONITOR_MODES)}'),
    'early_stopping.mode': ((str,), lambda v: v in early_stopping.MODES,
                            f'one of {list(early_stopping.MODES)}'),
    'early_stopping.patience': ((int,), _non_negative, 'a non-negative integer'),
    'early_stopping.min_delta': ((float, int), _non_negative, 'a non-negative number'),
    'early_stopping.restore_best_weights': ((bool,), lambda v: True, 'True or False'),
    'hooks': ((tuple, list), lambda v: all(isinstance(h, str) for h in v),
              f"a tuple of hook names ({sorted(hooks.HOOKS)}) or 'module:function' paths"),
    'logging.log_every_epochs': ((int,), _positive, 'a positive integer'),
    'logging.progress_bar': ((str,), lambda v: v in PROGRESS_BAR_MODES,
                             f'one of {list(PROGRESS_BAR_MODES)}'),
    'logging.bar_updates_per_epoch': ((int,), _positive, 'a positive integer'),
    'profile.epoch': ((int,), _non_negative, 'a non-negative integer (0: no profile)'),
    'profile.start_step': ((int,), _non_negative,
                           'a non-negative integer (the first step, counted from 0 in the epoch)'),
    'profile.num_steps': ((int,), _positive, 'a positive integer'),
    'tracking.wandb.enabled': ((bool,), lambda v: True, 'True or False'),
    'tracking.wandb.project': ((str,), lambda v: True, 'a W&B project name'),
    'tracking.wandb.entity': ((str,), lambda v: True, "a W&B entity, or '' for the default"),
    'tracking.wandb.run_name': ((str,), lambda v: True, "a run name, or '' for the workdir's"),
    'tracking.wandb.tags': ((tuple, list), _strings, "a tuple of non-empty strings, e.g. '(\"a\",)'"),
    'tracking.wandb.mode': ((str,), lambda v: v in WANDB_MODES, f'one of {list(WANDB_MODES)}'),
    'tracking.mlflow.enabled': ((bool,), lambda v: True, 'True or False'),
    'tracking.mlflow.tracking_uri': ((str,), lambda v: True,
                                     "an MLflow tracking URI, or '' for MLflow's default"),
    'tracking.mlflow.experiment': ((str,), bool, 'an MLflow experiment name'),
    'tracking.mlflow.run_name': ((str,), lambda v: True, "a run name, or '' for the workdir's"),
    'tracking.mlflow.tags': ((tuple, list), _strings,
                             "a tuple of 'key=value' or 'key' strings"),
}


def _component_schemas() -> dict[str, dict[str, tuple]]:
  """Dotted key -> {component name: its spec}, for every registered component's keys."""
  found = {}
  for section, components in REGISTRIES.items():
    for component in components.components():
      for key, spec in component.schema.items():
        found.setdefault(f'{section}.{key}', {})[component.name] = spec
  return found


def _lookup(config, dotted: str, missing=None):
  for part in dotted.split('.'):
    if not isinstance(config, (ml_collections.ConfigDict, dict)) or part not in config:
      return missing
    config = config[part]
  return config


def _selected(config, section: str) -> registry.Component | None:
  name = _lookup(config, f'{section}.name', LATER_KEYS.get(f'{section}.name'))
  return REGISTRIES[section][name] if name in REGISTRIES[section] else None


def fill_defaults(config: ml_collections.ConfigDict) -> None:
  """Adds the selected components' keys that `config` lacks, with their defaults (in place)."""
  for section in REGISTRIES:
    component = _selected(config, section)
    if component is None or section not in config:
      continue
    with config.unlocked():
      for key, value in component.defaults.items():
        *parents, leaf = key.split('.')
        parent = config[section]
        for part in parents:
          if part not in parent:
            parent[part] = ml_collections.ConfigDict()
          parent = parent[part]
        if leaf not in parent:
          parent[leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` after importing its `imports` and filling in its selected components' defaults: what
  a config file returns so that `--config.<section>.<name>.<key>=...` overrides find the keys."""
  registry.import_user_code(config.get('imports', ()))
  fill_defaults(config)
  return config


def per_trial_keys(config: ml_collections.ConfigDict) -> set[str]:
  """The dotted keys whose values reach the steps as arrays in the train state, for `config`'s
  selected components: trials that differ only in them share one compiled program."""
  keys = {'seed', 'model.dropout_rate'}
  keys |= {f'optimizer.{k}' for k in optimizers.hyperparam_keys(config.optimizer).values()}
  for section in ('model', 'loss', 'augment'):
    component = _selected(config, section)
    keys |= {f'{section}.{k}' for k in (component.per_trial if component else ())}
  return keys


def per_trial_values(config: ml_collections.ConfigDict, section: str) -> dict[str, float]:
  """The selected component of `section`'s per-trial values, by key relative to the section."""
  component = REGISTRIES[section][config[section].name]
  return {k: float(_lookup(config[section], k)) for k in component.per_trial}


def comparable_config(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """A config (or its saved JSON) as dotted keys, as runs are compared: keys added since it was
  saved at their defaults (`LATER_KEYS`, the selected components' defaults) and keys of the
  components it does not select left out."""
  if isinstance(config, ml_collections.ConfigDict):
    config = json.loads(config.to_json_best_effort())  # As saved: tuples become lists.
  flat = {**LATER_KEYS, **flatten_config(config)}
  schemas = _component_schemas()
  for section in REGISTRIES:
    component = _selected(config, section)
    if component is None:
      continue
    defaults = json.loads(json.dumps({k: v for k, v in component.defaults.items()
                                      if not isinstance(v, dict)}))
    flat.update({f'{section}.{k}': v for k, v in defaults.items()
                 if f'{section}.{k}' not in flat})
    for key, owners in schemas.items():
      if key.startswith(f'{section}.') and component.name not in owners:
        flat = {k: v for k, v in flat.items() if k != key and not k.startswith(key + '.')}
  return flat


def flatten_config(config: ml_collections.ConfigDict | dict,
                   prefix: str = '') -> dict[str, Any]:
  """The values of a config (or of its saved JSON, nested dicts) by dotted key
  (`optimizer.learning_rate`)."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(flatten_config(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def differing_keys(*flat_configs: dict[str, Any]) -> list[str]:
  """The sorted dotted keys whose values are not all equal in `flat_configs` (flattened configs;
  a key some lack differs)."""
  missing = object()
  first, *others = flat_configs
  return [key for key in sorted(set().union(*flat_configs))
          if any(c.get(key, missing) != first.get(key, missing) for c in others)]


def has_valid_type(key: str, value: Any, spec: tuple | None = None) -> bool:
  """Whether `value` is of a type `SCHEMA` (or `spec`) accepts for `key` (booleans are not
  numbers)."""
  types = (spec or SCHEMA[key])[0]
  if dict in types:
    types = types + (ml_collections.ConfigDict,)
  return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _check_value(key: str, value: Any, spec: tuple) -> None:
  _, check, requirement = spec
  if isinstance(value, float) and not math.isfinite(value):
    raise ConfigError(f'config.{key}={value!r} is not a finite number: it must be '
                      f'{requirement}.')
  if not has_valid_type(key, value, spec) or not check(value):
    raise ConfigError(f'config.{key}={value!r} is invalid: it must be {requirement}.')


def _check_components(config: ml_collections.ConfigDict, flat: dict[str, Any]) -> None:
  """The selected components exist; every registered component's keys present are valid."""
  for section, components in REGISTRIES.items():
    name = config[section].name
    if name not in components:
      raise ConfigError(f'config.{section}.name={name!r} is invalid: it must be one of '
                        f'{sorted(components)} (or a {components.kind} registered by a file '
                        'named in config.imports).')
  schemas = _component_schemas()
  nested = [k for k, owners in schemas.items()
            if any(dict in spec[0] for spec in owners.values())]
  for key in flat:
    if key not in SCHEMA and key not in schemas and not any(
        key.startswith(k + '.') for k in nested):
      section = key.split('.')[0]
      hint = (f' (the keys of {section} {config[section].name!r} are '
              f'{sorted(REGISTRIES[section][config[section].name].schema)})'
              if section in REGISTRIES else '')
      raise ConfigError(f'unknown config key {key!r}{hint}; the keys are those of '
                        'configs/default.py and of the registered components.')
  for key, owners in schemas.items():
    value = _lookup(config, key, missing=registry)
    if value is registry:
      continue
    section = key.split('.')[0]
    selected = config[section].name
    _check_value(key, value, owners.get(selected, next(iter(owners.values()))))
  for section in REGISTRIES:
    component = REGISTRIES[section][config[section].name]
    problem = component.check(config[section]) if component.check else None
    if problem:
      raise ConfigError(problem)


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None,
                    recorded: bool = False) -> None:
  """Imports `config.imports`, fills in the selected components' missing keys with their defaults
  (`fill_defaults`), then raises ConfigError, naming the key and what it must be, for the first
  problem found.

  `recorded`: the config of a run or sweep already trained, read to evaluate or report it; a
  choice on the test set that earlier versions allowed (`ChoiceOnTestSetError`) is then let be.
  """
  registry.import_user_code(config.get('imports', ()))
  for section in REGISTRIES:
    if section not in config or 'name' not in config[section]:
      raise ConfigError(f'config is missing {section + ".name"!r}; start from configs/default.py.')
  fill_defaults(config)
  flat = flatten_config(config)
  for key, spec in SCHEMA.items():
    if key not in flat:
      raise ConfigError(f'config is missing {key!r}; start from configs/default.py.')
    _check_value(key, flat[key], spec)
  _check_components(config, flat)
  if config.optimizer.name != 'adamw' and config.optimizer.weight_decay:
    raise ConfigError(f'config.optimizer.weight_decay={config.optimizer.weight_decay} only '
                      "applies to optimizer.name='adamw'; set it to 0, switch optimizer, or use "
                      "optimizer.name='optax' with an optax optimizer that takes weight_decay "
                      '(optimizer.optax.kwargs).')
  if not recorded:
    check_no_choice_on_the_test_set(config)
  _check_early_stopping(config)
  for name in config.hooks:
    try:
      hooks.resolve(name)
    except hooks.HookError as e:
      raise ConfigError(f'config.hooks: {e}') from None
  if config.profile.epoch > config.num_epochs:
    raise ConfigError(f'config.profile.epoch={config.profile.epoch} is past the last epoch '
                      f'({config.num_epochs}); choose an epoch in [1, {config.num_epochs}] or 0.')
  if num_devices is not None and config.batch_size % num_devices:
    raise ConfigError(f'config.batch_size={config.batch_size} is not divisible by the '
                      f'{num_devices} devices; use a multiple of {num_devices}.')


def check_no_choice_on_the_test_set(config: ml_collections.ConfigDict) -> None:
  """Refuses a config that would choose on the test set: early stopping's monitor, which also
  chooses the best weights and the best checkpoint, must not be a test metric."""
  monitor = config.early_stopping.monitor
  if isinstance(monitor, str) and monitor.startswith('test_'):
    split = ('' if config.data.get('validation_split', 0) else
             ' and hold out a validation split (--config.data.validation_split=0.1)')
    raise ChoiceOnTestSetError(
        f'config.early_stopping.monitor={monitor!r} would choose on the test set (when to stop, '
        f'the best weights, the best checkpoint); monitor {"validation_" + monitor[5:]!r}{split}. '
        'A workdir trained with it takes the new config with --restart.')


def saves_inside_epochs(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` asks for checkpoints inside epochs (`checkpoint.every_steps` or
  `every_minutes`)."""
  return bool(config.checkpoint.every_steps or config.checkpoint.every_minutes)


def _check_early_stopping(config: ml_collections.ConfigDict) -> None:
  """The monitored metric exists in this run; the best weights can survive a resume."""
  es = config.early_stopping
  if es.monitor not in early_stopping.MONITOR_MODES:
    available = early_stopping.record_metrics(config)
    if es.monitor not in available:
      without_split = (' (validation metrics need a validation split: set '
                       'data.validation_split)' if es.monitor.startswith('validation_') else '')
      raise ConfigError(f'config.early_stopping.monitor={es.monitor!r} is not a metric of this '
                        f'run{without_split}; choose one of {list(available)}, '
                        f'or one of {list(early_stopping.MONITOR_MODES)}.')
  every, log_every = config.checkpoint.every_epochs, config.logging.log_every_epochs
  if es.restore_best_weights and every and not config.checkpoint.keep_best:
    raise ConfigError('config.early_stopping.restore_best_weights needs checkpoint.keep_best=True '
                      '(a resumed run restores the best weights from the best checkpoint).')
  if es.restore_best_weights and saves_inside_epochs(config) and not every:
    raise ConfigError('config.early_stopping.restore_best_weights with checkpoints inside epochs '
                      '(checkpoint.every_steps, every_minutes) needs checkpoint.every_epochs=1 '
                      '(a resumed run restores the best weights from the best epoch\'s '
                      'checkpoint).')
  if es.restore_best_weights and every and log_every % every:
    raise ConfigError(f'config.early_stopping.restore_best_weights needs a checkpoint at every '
                      f'evaluated epoch (a resumed run restores the best weights from it): '
                      f'make logging.log_every_epochs={log_every} a multiple of '
                      f'checkpoint.every_epochs={every}.')
