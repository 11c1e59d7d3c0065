"""Models by name: `create_model(config.model, num_classes)` builds the one `config.model.name`
selects.

A model is a flax.linen module called as `model.apply({'params': p}, images, dropout_rate,
dropout_rngs)`: images [batch, *input_shape] scaled to [0, 1], the dropout rate a value (not a
Python constant, so vectorized sweeps over it share one program) and one dropout key per example (so
results do not depend on how a batch is split over devices). Its input shape and class count come
from the data. Adding one is a file here (with `from_config(model_config, num_classes)` and the
`CONFIG_SCHEMA` of its keys under `config.model`) and a line in `MODELS`; docs/extending.md works
through the CNN.
"""

import types

from mlp_mnist.models import cnn
from mlp_mnist.models import mlp

# name -> the module defining it: `from_config(model_config, num_classes)` and `CONFIG_SCHEMA`.
MODELS: dict[str, types.ModuleType] = {
    'mlp': mlp,
    'cnn': cnn,
}
ACTIVATIONS = mlp.ACTIVATIONS
MLP = mlp.MLP
CNN = cnn.CNN


def create_model(model_config, num_classes: int):
  """The model `model_config.name` names (default: 'mlp'), built from `model_config`, with
  `num_classes` outputs."""
  name = model_config.get('name', 'mlp')
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r} (config.model.name); choose one of {sorted(MODELS)}.')
  return MODELS[name].from_config(model_config, num_classes)
