"""PNG figures of a run: learning curves, the confusion matrix, the most confident mistakes.

matplotlib is imported lazily and used through its object API (no pyplot, no display needed).
Where a script started `plot_worker`, every `save_*` draws in that process instead.
"""

import functools
import io
from typing import Any, Sequence

import numpy as np
from etils import epath

from mlp_mnist.records import plot_worker
from mlp_mnist.records import run_files


def import_in_background() -> None:
  """Imports matplotlib (a third of a second or more) on a thread, e.g. while an epoch trains;
  nothing where the plot worker draws the figures."""
  if not plot_worker.running():
    run_files.import_in_background(('matplotlib.figure', 'matplotlib.backends.backend_agg'))


def _drawn_in_worker(save):
  """`save` runs in the plot worker where one runs (`plot_worker`), else, or where it fails
  there, in this process."""
  @functools.wraps(save)
  def drawn(*args, **kwargs):
    done, result = plot_worker.draw(drawn, args, kwargs)
    return result if done else save(*args, **kwargs)
  return drawn


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


@_drawn_in_worker
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


@_drawn_in_worker
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


@_drawn_in_worker
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


@_drawn_in_worker
def save_mean_plot(key: str, lines: dict[str, list[tuple[Any, float, float, float]]], path: str,
                   ylabel: str, log_x: bool = False, categories: Sequence[str] | None = None,
                   title: str = '') -> str:
  """A metric's mean against one swept `key` with its interval shaded: a line per setting of the
  other keys (`lines`: label -> [(x, mean, low, high)]; NaN bounds draw no band there); with
  `categories`, x indexes them."""
  figure = _figure(figsize=(7, 4.5))
  axes = figure.subplots()
  for label, points in lines.items():
    x, mean, low, high = (np.asarray(v, dtype=np.float64) for v in zip(*sorted(points)))
    line, = axes.plot(x, mean, marker='o', label=label or None)
    axes.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    lone = np.isnan(low) | np.isnan(high)
    if lone.any() and not lone.all():  # Points without an interval (one replicate): hollow.
      axes.plot(x[lone], mean[lone], linestyle='none', marker='o', markerfacecolor='white',
                color=line.get_color())
  if log_x:
    axes.set_xscale('log')
  if categories is not None:
    axes.set_xticks(range(len(categories)), categories, rotation=30, ha='right')
  axes.set_xlabel(key)
  axes.set_ylabel(ylabel)
  axes.yaxis.set_major_formatter(lambda v, _: f'{v:.1%}')
  axes.grid(alpha=0.3)
  if any(lines) and len(lines) <= 16:
    axes.legend(fontsize='small')
  if title:
    axes.set_title(title, fontsize='medium')
  return _save(figure, path)


@_drawn_in_worker
def save_heatmap(row_key: str, column_key: str, row_labels: Sequence[str],
                 column_labels: Sequence[str], values: Sequence[Sequence[float]],
                 texts: Sequence[Sequence[str]], path: str, title: str = '') -> str:
  """A grid of `values` (NaN: no result, left blank) with each cell's text written in it."""
  values = np.asarray(values, dtype=np.float64)
  figure = _figure(figsize=(1.5 + 1.3 * len(column_labels), 1.2 + 0.8 * len(row_labels)))
  axes = figure.subplots()
  image = axes.imshow(np.ma.masked_invalid(values), cmap='viridis', aspect='auto')
  finite = values[np.isfinite(values)]
  middle = (finite.min() + finite.max()) / 2 if finite.size else 0
  for i, row in enumerate(texts):
    for j, text in enumerate(row):
      dark = np.isfinite(values[i, j]) and values[i, j] < middle
      axes.text(j, i, text or '-', ha='center', va='center', fontsize=8,
                color='white' if dark else 'black')
  axes.set_xticks(range(len(column_labels)), column_labels, rotation=30, ha='right')
  axes.set_yticks(range(len(row_labels)), row_labels)
  axes.set_xlabel(column_key)
  axes.set_ylabel(row_key)
  colorbar = figure.colorbar(image, ax=axes)
  colorbar.formatter = _percent_formatter()
  colorbar.update_ticks()
  if title:
    axes.set_title(title, fontsize='medium')
  return _save(figure, path)


def _percent_formatter():
  from matplotlib.ticker import FuncFormatter  # pylint: disable=g-import-not-at-top
  return FuncFormatter(lambda v, _: f'{v:.1%}')


@_drawn_in_worker
def save_mean_curves(curves: dict[str, dict[str, dict[str, np.ndarray]]], split: str, path: str,
                     title: str = '') -> str:
  """Per-epoch loss and accuracy of a few settings, each a mean with its interval shaded:
  `curves[label][f'{train or split}_{loss or accuracy}']` holds `epoch`, `mean`, `ci_low`,
  `ci_high`; `split` solid, training dashed."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  figure = _figure(figsize=(11, 4.2))
  loss_axes, accuracy_axes = figure.subplots(1, 2)
  colors = colormaps['tab10'].colors
  epochs = set()
  for (label, series), color in zip(curves.items(), colors):
    for axes, metric in ((loss_axes, 'loss'), (accuracy_axes, 'accuracy')):
      for part, style in ((split, '-'), ('train', '--')):
        stats = series[f'{part}_{metric}']
        if not len(stats['epoch']):
          continue
        epochs.update(stats['epoch'].tolist())
        axes.plot(stats['epoch'], stats['mean'], linestyle=style, marker='o', color=color,
                  label=label if part == split else None)
        axes.fill_between(stats['epoch'], stats['ci_low'], stats['ci_high'], color=color,
                          alpha=0.15, linewidth=0)
  for axes, metric in ((loss_axes, 'loss'), (accuracy_axes, 'accuracy')):
    axes.set_xlabel('epoch')
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    if len(epochs) <= 20:
      axes.set_xticks(sorted(epochs))
  accuracy_axes.yaxis.set_major_formatter(lambda v, _: f'{v:.1%}')
  accuracy_axes.legend(fontsize='x-small')
  figure.suptitle(f'best settings: {split} (solid) and training (dashed)'
                  + (f'; {title}' if title else ''), fontsize='medium')
  return _save(figure, path)


@_drawn_in_worker
def save_overlaid_curves(histories: dict[str, Sequence[dict]], split: str, path: str,
                         title: str = '') -> str:
  """Loss and accuracy per epoch of several runs in one picture: `split` solid, training dashed."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  figure = _figure(figsize=(11, 4.2))
  loss_axes, accuracy_axes = figure.subplots(1, 2)
  colors = colormaps['tab10'].colors
  for index, (label, history) in enumerate(histories.items()):
    color = colors[index % len(colors)]
    for axes, metric in ((loss_axes, 'loss'), (accuracy_axes, 'accuracy')):
      for part, style in ((split, '-'), ('train', '--')):
        points = [(r['epoch'], r[f'{part}_{metric}']) for r in history
                  if f'{part}_{metric}' in r]
        if points:
          axes.plot(*zip(*points), linestyle=style, marker='o', markersize=3, color=color,
                    label=f'{label} ({part})')
  for axes, metric in ((loss_axes, 'loss'), (accuracy_axes, 'accuracy')):
    axes.set_xlabel('epoch')
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
  accuracy_axes.yaxis.set_major_formatter(lambda v, _: f'{v:.1%}')
  accuracy_axes.legend(fontsize='x-small')
  figure.suptitle(title or f'{split} (solid) and training (dashed)', fontsize='medium')
  return _save(figure, path)


@_drawn_in_worker
def save_trial_scatter(key: str, groups: dict[str, tuple[Sequence[Any], Sequence[float]]],
                       path: str, ylabel: str, log_x: bool = False,
                       categories: Sequence[str] | None = None, title: str = '') -> str:
  """One point per trial: a metric against its value of `key` (`groups`: legend label -> (x, y),
  e.g. finished and pruned trials); with `categories`, x indexes them."""
  figure = _figure(figsize=(7, 4.5))
  axes = figure.subplots()
  for (label, (x, y)), marker in zip(groups.items(), 'oxsd^v'):
    axes.plot(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64),
              linestyle='none', marker=marker, alpha=0.7, label=label)
  if log_x:
    axes.set_xscale('log')
  if categories is not None:
    axes.set_xticks(range(len(categories)), categories, rotation=30, ha='right')
  return _save_labelled(figure, axes, key, ylabel, title, path)


def _save_labelled(figure, axes, xlabel: str, ylabel: str, title: str, path: str) -> str:
  """Labels, a percent y axis, grid and legend; saves the figure."""
  axes.set_xlabel(xlabel)
  axes.set_ylabel(ylabel)
  axes.yaxis.set_major_formatter(_percent_formatter())
  axes.grid(alpha=0.3)
  axes.legend(fontsize='small')
  if title:
    axes.set_title(title, fontsize='medium')
  return _save(figure, path)


@_drawn_in_worker
def save_best_so_far(values: Sequence[float], path: str, ylabel: str, title: str = '') -> str:
  """Each trial's metric (in the order the search ran them) and the best so far, as a step line."""
  figure = _figure(figsize=(7, 4.5))
  axes = figure.subplots()
  values = np.asarray(values, dtype=np.float64)
  trials = np.arange(1, len(values) + 1)
  axes.plot(trials, values, linestyle='none', marker='o', alpha=0.5, label='trial')
  axes.step(trials, np.fmax.accumulate(values), where='post', label='best so far')
  return _save_labelled(figure, axes, 'trial (in the order the search ran them)', ylabel, title,
                        path)
