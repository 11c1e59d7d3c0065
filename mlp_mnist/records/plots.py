"""PNG figures of a run: learning curves, the confusion matrix, the most confident mistakes.

matplotlib is imported lazily and used through its object API (no pyplot, no display needed).
"""

import importlib
import io
import threading
from typing import Any, Sequence

import numpy as np
from etils import epath


def import_in_background() -> None:
  """Imports matplotlib (a third of a second or more) on a thread, e.g. while an epoch trains."""

  def load():
    for module in ('matplotlib.figure', 'matplotlib.backends.backend_agg'):
      importlib.import_module(module)

  threading.Thread(target=load, name='import-matplotlib', daemon=True).start()


def _save(figure, path: str) -> str:
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())
  return str(path)


def _figure(**kwargs):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(layout='constrained', **kwargs)


def save_curves(history: Sequence[dict], path: str, title: str = '') -> str:
  """Loss and accuracy per epoch, train and test, from `metrics.jsonl` records."""
  figure = _figure(figsize=(10, 4))
  loss_axes, accuracy_axes = figure.subplots(1, 2)
  epochs = [r['epoch'] for r in history]
  for axes, metric, label in ((loss_axes, 'loss', 'loss'), (accuracy_axes, 'accuracy', 'accuracy')):
    for split, marker in (('train', 'o'), ('test', 's')):
      axes.plot(epochs, [r[f'{split}_{metric}'] for r in history], marker=marker, label=split)
    axes.set_xlabel('epoch')
    axes.set_ylabel(label)
    axes.grid(alpha=0.3)
    axes.legend()
  accuracy_axes.yaxis.set_major_formatter(lambda v, _: f'{v:.1%}')
  if len(epochs) <= 20:
    for axes in (loss_axes, accuracy_axes):
      axes.set_xticks(epochs)
  if title:
    figure.suptitle(title)
  return _save(figure, path)


def save_confusion_matrix(matrix: np.ndarray, path: str, title: str = '') -> str:
  """Counts of (true label, predicted label), each class's accuracy beside its row."""
  num_classes = len(matrix)
  figure = _figure(figsize=(7.5, 6.5))
  axes = figure.subplots()
  image = axes.imshow(np.log1p(matrix), cmap='Blues')
  threshold = np.log1p(matrix).max() / 2
  for true in range(num_classes):
    for predicted in range(num_classes):
      count = int(matrix[true, predicted])
      axes.text(predicted, true, str(count), ha='center', va='center', fontsize=8,
                color='white' if np.log1p(count) > threshold else 'black')
  per_class = np.diag(matrix) / np.maximum(matrix.sum(1), 1)
  axes.set_xticks(range(num_classes))
  axes.set_yticks(range(num_classes),
                  [f'{c}  ({a:.1%})' for c, a in zip(range(num_classes), per_class)])
  axes.set_xlabel('predicted label')
  axes.set_ylabel('true label  (per-class accuracy)')
  figure.colorbar(image, ax=axes, label='log(1 + count)')
  axes.set_title(title or 'confusion matrix')
  return _save(figure, path)


def save_misclassified(images: np.ndarray, labels: Sequence[int], predictions: Sequence[int],
                       confidences: Sequence[float], path: str, title: str = '') -> str:
  """A grid of 28x28 images, each captioned with its true and predicted label."""
  count = len(images)
  columns = min(max(count, 1), 6)
  rows = max(1, -(-count // columns))
  figure = _figure(figsize=(1.6 * columns, 1.8 * rows + 0.4))
  grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
  for i, axes in enumerate(grid):
    axes.set_axis_off()
    if i < count:
      axes.imshow(images[i], cmap='gray', vmin=0, vmax=255)
      axes.set_title(f'true {labels[i]}, pred {predictions[i]}\n{confidences[i]:.1%}', fontsize=8)
  figure.suptitle(title or 'most confident mistakes')
  return _save(figure, path)


def save_sweep_plot(key: str, lines: dict[str, list[tuple[Any, float]]], path: str,
                    log_x: bool = False, categories: Sequence[str] | None = None) -> str:
  """Final test accuracy of a sweep's trials against one swept `key`: a line per setting of the
  others (`lines`: label -> [(x, accuracy)]); with `categories`, x indexes them."""
  figure = _figure(figsize=(7, 4.5))
  axes = figure.subplots()
  for label, points in lines.items():
    points = sorted(points)
    axes.plot([x for x, _ in points], [y for _, y in points], marker='o', label=label or None)
  if log_x:
    axes.set_xscale('log')
  if categories is not None:
    axes.set_xticks(range(len(categories)), categories, rotation=30, ha='right')
  axes.set_xlabel(key)
  axes.set_ylabel('final test accuracy')
  axes.yaxis.set_major_formatter(lambda v, _: f'{v:.1%}')
  axes.grid(alpha=0.3)
  if any(lines) and len(lines) <= 16:
    axes.legend(fontsize='small')
  return _save(figure, path)
