"""Models by name: `create_model(config.model)` builds the one `config.model.name` selects.

A model is a flax.linen module called as `model.apply({'params': p}, images, dropout_rate,
dropout_rngs)`: images uint8-scaled floats, the dropout rate a value (not a Python constant, so
vectorized sweeps over it share one program) and one dropout key per example (so results do not
depend on how a batch is split over devices). Adding one is a file here and a line in `MODELS`.
"""

from typing import Any, Callable

from mlp_mnist.models import mlp

# name -> function building the module from `config.model`.
MODELS: dict[str, Callable[[Any], Any]] = {
    'mlp': mlp.from_config,
}
ACTIVATIONS = mlp.ACTIVATIONS
MLP = mlp.MLP


def create_model(model_config, num_classes: int):
  """The model `model_config.name` names (default: 'mlp'), built from `model_config`, with
  `num_classes` outputs."""
  name = model_config.get('name', 'mlp')
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; choose one of {sorted(MODELS)}')
  return MODELS[name](model_config, num_classes)
