"""Predictions of a trained run for image files: the class and the top-3 probabilities per file.

Each file is converted to the run's input shape (its `dataset.json`): for a run on one-channel
28x28 images (MNIST, Fashion-MNIST, KMNIST...) the way MNIST digits were made
(`digit_images.load_digit`: light on dark, 20x20 box, centred by mass); for any other shape a plain
resize to H x W, in grayscale for one channel or RGB for three.
"""

from typing import Any, Sequence

import numpy as np

from mlp_mnist.tools import digit_images
from mlp_mnist.tools import evaluation

TOP_K = 3


def load_input(path: str, image_shape: Sequence[int], background: str = 'auto') -> np.ndarray:
  """The image file at `path` as one uint8 example of `image_shape`; ImageError if it cannot be."""
  image_shape = tuple(image_shape)
  if image_shape == digit_images.MNIST_FRAME:
    return digit_images.load_digit(path, background)
  channels = image_shape[2] if len(image_shape) == 3 else 1
  if channels not in (1, 3):
    raise digit_images.ImageError(f'{path}: the run takes {channels}-channel images, which image '
                                  'files cannot give; predict on its arrays instead.')
  from PIL import Image, ImageOps, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image).convert('L' if channels == 1 else 'RGB')
      height, width = image_shape[:2]
      resized = image.resize((width, height), Image.Resampling.LANCZOS)
      return np.asarray(resized, np.uint8).reshape(image_shape)
  except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
    raise digit_images.ImageError(
        f'{path}: not a readable image ({type(e).__name__}: {e})') from None


def predict_files(workdir: str, paths: Sequence[str], step: int | str | None = None,
                  background: str = 'auto', devices=None) -> list[dict[str, Any]]:
  """One result per path, in order: {'path', 'label', 'class_name', 'top': [(label, probability)]
  * 3}, or {'path', 'error'} for a file that is not a readable image (the others are still
  predicted). `background` applies to the MNIST-like conversion only."""
  config, state, _, run = evaluation.load_run(workdir, step, devices)
  info = run['dataset']
  names = info['class_names']
  results, images = [], []
  for path in paths:
    try:
      images.append(load_input(path, info['image_shape'], background))
      results.append({'path': path})
    except digit_images.ImageError as e:
      results.append({'path': path, 'error': str(e)})
  if images:
    probabilities = iter(evaluation.predict_probabilities(config, state.params, np.stack(images),
                                                          info['num_classes']))
    for result in results:
      if 'error' not in result:
        p = next(probabilities)
        top = np.argsort(-p, kind='stable')[:TOP_K]
        label = int(top[0])
        result.update(label=label, class_name=names[label] if label < len(names) else str(label),
                      top=[(int(c), float(p[c])) for c in top])
  return results


def format_result(result: dict[str, Any]) -> str:
  if 'error' in result:
    return f"error: {result['error']}"
  top = ', '.join(f'{c}: {p:.1%}' for c, p in result['top'])
  name = f" ({result['class_name']})" if result['class_name'] != str(result['label']) else ''
  return f"{result['path']}: {result['label']}{name}  ({top})"
