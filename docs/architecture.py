"""Draws docs/architecture.png: the data flow of a run and the package's layers.

    python docs/architecture.py        # rewrites docs/architecture.png
"""

import os

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

FLOW = (
    ('config', 'configs/*.py\n--config.x.y=v\nconfig_checks'),
    ('arrays on devices', 'data.load_dataset\n(Dataset: shape, classes)\nparallel.replicate'),
    ('pure steps', 'steps.train_epoch\n(lax.scan of one step)\nunder pmap / vmap'),
    ('metrics', 'epochs.EpochLog\nthe epoch record'),
    ('writers', 'records/: metrics.jsonl,\nTensorBoard, W&B, MLflow,\ncheckpoints, plots'),
)
LAYERS = (  # Top to bottom, as drawn.
    ('8  tools, cli', 'tools/ (evaluate, predict, compare), cli.py (what scripts/ share)'),
    ('7  run, sweeps', 'train.py (one run), sweeps/ (trials at once, search, results, report)'),
    ('6  epoch driver', 'driver.py (one epoch body for a run and a sweep group)'),
    ('5  steps, records', 'steps.py (pure), records/ (workdir, recorder, locks, checkpoints)'),
    ('4  config schema', 'config_checks.py (the selected components\' keys)'),
    ('3  building blocks', 'models/, losses.py, optimizers.py, augmentations.py, data/, devices/,\n'
     '   epochs.py, early_stopping.py, hooks.py, preemption.py'),
    ('2  registries', 'config_files.py, registry.py (components, config.imports)'),
    ('1  foundation', 'errors.py (UserError), configs/ (the shipped recipes), workarounds.py'),
)


def draw(path: str) -> None:
  figure = Figure(figsize=(12, 7.2))
  axes = figure.add_axes((0, 0, 1, 1))
  axes.set_xlim(0, 12)
  axes.set_ylim(0, 7.2)
  axes.axis('off')
  axes.text(0.3, 6.9, 'A run: data flows one way', fontsize=14, weight='bold', va='top')
  width, gap, top = 2.0, 0.35, 6.3
  for i, (title, detail) in enumerate(FLOW):
    x = 0.3 + i * (width + gap)
    axes.add_patch(FancyBboxPatch((x, top - 1.5), width, 1.5, boxstyle='round,pad=0.05',
                                  facecolor='#dbe9f6', edgecolor='#2b5d8c'))
    axes.text(x + width / 2, top - 0.25, title, ha='center', va='top', fontsize=11,
              weight='bold')
    axes.text(x + width / 2, top - 0.65, detail, ha='center', va='top', fontsize=8.5,
              family='monospace')
    if i:
      axes.add_patch(FancyArrowPatch((x - gap, top - 0.75), (x, top - 0.75),
                                     arrowstyle='-|>', mutation_scale=18, color='#2b5d8c'))
  axes.text(0.3, 4.3, 'The package mlp_mnist/: layers (a module imports only its own unit and '
            'lower layers; tests/test_layout.py checks it)', fontsize=12, weight='bold', va='top')
  row, y = 0.42, 3.85
  for i, (title, detail) in enumerate(LAYERS):
    shade = 0.95 - 0.05 * i
    axes.add_patch(FancyBboxPatch((0.3, y - i * (row + 0.05) - row), 11.4, row,
                                  boxstyle='round,pad=0.02', facecolor=(shade, shade, 0.88),
                                  edgecolor='#777777'))
    axes.text(0.5, y - i * (row + 0.05) - row / 2, title, va='center', fontsize=10,
              weight='bold')
    axes.text(3.0, y - i * (row + 0.05) - row / 2, detail, va='center', fontsize=10,
              family='monospace')
  figure.savefig(path, dpi=90)


if __name__ == '__main__':
  draw(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'architecture.png'))
