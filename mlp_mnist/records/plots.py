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
  """Loss and accuracy per epoch, train, validation (when recorded) and test, from
  `metrics.jsonl` records."""
  figure = _figure(figsize=(10, 4))
  loss_axes, accuracy_axes = figure.subplots(1, 2)
  epochs = [r['epoch'] for r in history]
  for axes, metric, label in ((loss_axes, 'loss', 'loss'), (accuracy_axes, 'accuracy', 'accuracy')):
    for split, marker in (('train', 'o'), ('validation', '^'), ('test', 's')):
      if not all(f'{split}_{metric}' in r for r in history):
        continue
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


def class_label(index: int, class_names: Sequence[str] = ()) -> str:
  """A class as shown in figures: its name when the dataset has names other than its index."""
  name = class_names[index] if index < len(class_names) else ''
  return name if name and name != str(index) else str(index)


def save_confusion_matrix(matrix: np.ndarray, path: str, title: str = '',
                          class_names: Sequence[str] = ()) -> str:
  """Counts of (true label, predicted label), each class's accuracy beside its row; the figure
  grows with the class count, and counts are written in the cells up to 30 classes."""
  num_classes = len(matrix)
  side = min(max(6.5, 0.45 * num_classes + 2.5), 30)
  figure = _figure(figsize=(side + 1, side))
  axes = figure.subplots()
  image = axes.imshow(np.log1p(matrix), cmap='Blues')
  threshold = np.log1p(matrix).max() / 2
  if num_classes <= 30:
    for true in range(num_classes):
      for predicted in range(num_classes):
        count = int(matrix[true, predicted])
        axes.text(predicted, true, str(count), ha='center', va='center', fontsize=8,
                  color='white' if np.log1p(count) > threshold else 'black')
  per_class = np.diag(matrix) / np.maximum(matrix.sum(1), 1)
  names = [class_label(c, class_names) for c in range(num_classes)]
  axes.set_xticks(range(num_classes), names, rotation=90 if max(map(len, names)) > 2 else 0)
  axes.set_yticks(range(num_classes),
                  [f'{n}  ({a:.1%})' for n, a in zip(names, per_class)])
  axes.set_xlabel('predicted label')
  axes.set_ylabel('true label  (per-class accuracy)')
  figure.colorbar(image, ax=axes, label='log(1 + count)')
  axes.set_title(title or 'confusion matrix')
  return _save(figure, path)


def save_misclassified(images: np.ndarray, labels: Sequence[int], predictions: Sequence[int],
                       confidences: Sequence[float], path: str, title: str = '',
                       class_names: Sequence[str] = ()) -> str:
  """A grid of images ([N, H, W] grayscale, [N, H, W, 3] in colour), each captioned with its
  true and predicted label."""
  count = len(images)
  columns = min(max(count, 1), 6)
  rows = max(1, -(-count // columns))
  figure = _figure(figsize=(1.6 * columns, 1.8 * rows + 0.4))
  grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
  for i, axes in enumerate(grid):
    axes.set_axis_off()
    if i < count:
      axes.imshow(_displayable(images[i]), cmap='gray', vmin=0, vmax=255)
      axes.set_title(f'true {class_label(labels[i], class_names)}, pred '
                     f'{class_label(predictions[i], class_names)}\n{confidences[i]:.1%}',
                     fontsize=8)
  figure.suptitle(title or 'most confident mistakes')
  return _save(figure, path)


def _displayable(image: np.ndarray) -> np.ndarray:
  """[H, W] or [H, W, 3] as they are; one channel of [H, W, 1]; the first three of more."""
  if image.ndim == 3:
    image = image[..., 0] if image.shape[-1] < 3 else image[..., :3]
  return np.asarray(image, np.uint8)


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
