"""Predictions of a trained run for image files: the digit and the top-3 probabilities per file."""

from typing import Any, Sequence

import numpy as np

from mlp_mnist.tools import digit_images
from mlp_mnist.tools import evaluation

TOP_K = 3


def predict_files(workdir: str, paths: Sequence[str], step: int | str | None = None,
                  background: str = 'auto', devices=None) -> list[dict[str, Any]]:
  """One result per path, in order: {'path', 'digit', 'top': [(digit, probability)] * 3}, or
  {'path', 'error'} for a file that is not a readable image (the others are still predicted)."""
  config, state, _, _ = evaluation.load_run(workdir, step, devices)
  results, images = [], []
  for path in paths:
    try:
      images.append(digit_images.load_digit(path, background))
      results.append({'path': path})
    except digit_images.ImageError as e:
      results.append({'path': path, 'error': str(e)})
  if images:
    probabilities = iter(evaluation.predict_probabilities(config, state.params, np.stack(images)))
    for result in results:
      if 'error' not in result:
        p = next(probabilities)
        top = np.argsort(-p, kind='stable')[:TOP_K]
        result.update(digit=int(top[0]), top=[(int(d), float(p[d])) for d in top])
  return results


def format_result(result: dict[str, Any]) -> str:
  if 'error' in result:
    return f"error: {result['error']}"
  top = ', '.join(f'{d}: {p:.1%}' for d, p in result['top'])
  return f"{result['path']}: {result['digit']}  ({top})"
