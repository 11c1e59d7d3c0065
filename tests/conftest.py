"""Four simulated CPU devices for every test, set before JAX starts its backend."""

import os
import sys

import jax
import numpy as np
import pytest

jax.config.update('jax_num_cpu_devices', 4)
jax.config.update('jax_platforms', 'cpu')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The README's test command may name the IDX folder relative to where pytest starts; the processes
# tests start elsewhere (the notebook's kernel runs in notebooks/) must find the same folder.
if os.environ.get('MLP_MNIST_IDX_DIR'):
  os.environ['MLP_MNIST_IDX_DIR'] = os.path.abspath(os.environ['MLP_MNIST_IDX_DIR'])
sys.path.insert(0, os.path.join(REPO, 'configs'))

import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from fake_data import synthetic_dataset  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture
def config():
  """The default config, with data reading disabled (tests pass datasets in)."""
  return default.get_config()


@pytest.fixture
def dataset():
  return synthetic_dataset()


def write_dataset_cache(cache_dir, dataset, name: str = 'mnist', version: str = '3.0.1') -> None:
  """Writes `dataset` where `data.load_dataset` reads its decoded cache, so scripts run on it
  (`--config.data.cache_dir=cache_dir`, TFDS' default data_dir and no local_dir) without TFDS."""
  from mlp_mnist.data import cache  # pylint: disable=g-import-not-at-top
  data_config = default.get_config().data
  data_config.update(dict(name=name, version=version, cache_dir=str(cache_dir)))
  cache.write(cache.cache_path(data_config), dataset)


def draw_digit(digit: int, size: tuple[int, int] = (96, 96), font_size: int = 56,
               position: tuple[int, int] = (20, 4), ink=255, ground=0, stroke: int = 0,
               angle: float = 0.0, mode: str = 'L'):
  """A PIL image of `digit` typeset in Pillow's built-in FreeType font."""
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top
  image = Image.new(mode, size, ground)
  ImageDraw.Draw(image).text(position, str(digit), fill=ink, stroke_width=stroke, stroke_fill=ink,
                             font=ImageFont.load_default(size=font_size))
  return image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=ground)


def font_digit_dataset(per_class_train: int = 40, per_class_test: int = 10, seed: int = 0):
  """Typeset digits in varied sizes, weights, positions and slants, made MNIST-like by
  `digit_images.to_mnist`: a model trained on them reads digits drawn by a test."""
  from mlp_mnist.tools import digit_images  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)

  def split(per_class):
    labels = np.repeat(np.arange(10, dtype=np.int32), per_class)
    rng.shuffle(labels)
    images = np.stack([digit_images.to_mnist(np.asarray(draw_digit(
        int(d), font_size=int(rng.integers(40, 64)), stroke=int(rng.integers(0, 3)),
        position=(int(rng.integers(8, 30)), int(rng.integers(0, 12))),
        angle=float(rng.uniform(-12, 12)))), 'dark') for d in labels])
    return images, labels

  from mlp_mnist import data  # pylint: disable=g-import-not-at-top
  return data.Dataset(train=split(per_class_train), test=split(per_class_test), num_classes=10)


def assert_png(path, min_size=(200, 150), max_size=(4000, 4000), min_bytes=5_000):
  """`path` is a complete PNG file of a sensible size with some content."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    data = f.read()
  assert data.startswith(b'\x89PNG\r\n\x1a\n'), path
  assert len(data) >= min_bytes, (path, len(data))
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    width, height = image.size
    assert image.format == 'PNG'
    pixels = np.asarray(image.convert('L'))
  assert min_size[0] <= width <= max_size[0] and min_size[1] <= height <= max_size[1], image.size
  assert pixels.std() > 10, 'the image is almost uniform'


@pytest.fixture(scope='session')
def font_run(tmp_path_factory):
  """A run trained on `font_digit_dataset` with a checkpoint every epoch, its data in a cache that
  scripts read: {'workdir', 'dataset', 'result', 'devices'}."""
  from mlp_mnist import train  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('font_run')
  dataset = font_digit_dataset()
  write_dataset_cache(root / 'cache', dataset)
  config = default.get_config()
  config.num_epochs = 6
  config.checkpoint.keep = 6
  config.eval_batch_size = 64
  config.data.cache_dir = str(root / 'cache')
  devices = jax.devices()[:2]
  from mlp_mnist import data  # pylint: disable=g-import-not-at-top
  # The data the config names (read from the cache), as the scripts load it.
  result = train.train_and_evaluate(config, str(root / 'run'), devices=devices,
                                    dataset=data.load_dataset(config.data), log=lambda _: None)
  return {'workdir': str(root / 'run'), 'dataset': dataset, 'result': result, 'devices': devices}


@pytest.fixture(autouse=True)
def _registries_restored(monkeypatch):
  """Components a test registers (its own models, losses, ...) are gone after it."""
  from mlp_mnist import augmentations, losses, models, optimizers  # pylint: disable=g-import-not-at-top
  for registry in (models.MODELS, losses.LOSSES, optimizers.OPTIMIZERS,
                   augmentations.AUGMENTATIONS):
    monkeypatch.setattr(registry, '_components', dict(registry._components))  # pylint: disable=protected-access
