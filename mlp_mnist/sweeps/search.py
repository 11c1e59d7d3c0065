"""Successive halving inside the vectorized program, declared in the sweep file:

    SUCCESSIVE_HALVING = {'rungs': (1, 2), 'reduction_factor': 3, 'metric': 'validation_accuracy'}

At each rung (an epoch), the settings of a program group (replicates averaged) are ranked by the
metric, a validation metric; all but the best `ceil(settings / reduction_factor**(k+1))` at the
k-th rung are pruned: their trials keep their records and get the status `pruned`, and the others
go on in a program compiled for them alone (`vectorized.train_trials` drops the pruned ones), so
pruned trials cost no more steps. How many settings each rung keeps depends only on the group's
number of settings, so a sweep resumed after a rung (its pruned trials are finished) cuts exactly
as the uninterrupted one does.
"""

import dataclasses
import json
import math
from typing import Any, Hashable, Sequence

import ml_collections
from etils import epath

from mlp_mnist import epochs
from mlp_mnist.records import run_files
from mlp_mnist.sweeps import aggregate
from mlp_mnist.sweeps import report
from mlp_mnist.sweeps import results
from mlp_mnist.sweeps import sweep_files

HALVING_ATTRIBUTE = 'SUCCESSIVE_HALVING'
HALVING_METRICS = {'validation_accuracy': 'max', 'validation_loss': 'min'}


@dataclasses.dataclass(frozen=True)
class Halving:
  """Rungs (epochs), the reduction factor and the validation metric ranking the settings."""
  rungs: tuple[int, ...]
  reduction_factor: float
  metric: str = 'validation_accuracy'

  def kept(self, num_settings: int, rung_index: int) -> int:
    """How many of a group's `num_settings` settings go on after the rung `rung_index`."""
    return max(1, math.ceil(num_settings / self.reduction_factor ** (rung_index + 1) - 1e-9))


def halving_plan(path: str, trials: Sequence[sweep_files.Trial]) -> Halving | None:
  """The sweep file's `SUCCESSIVE_HALVING`, checked against its trials; None when it has none."""
  declared = sweep_files.module_attribute(path, HALVING_ATTRIBUTE)
  if declared is None:
    return None
  where = f'sweep file {path}: {HALVING_ATTRIBUTE}'
  if not isinstance(declared, dict):
    raise sweep_files.SweepError(f"{where} must be a dict such as {{'rungs': (1, 2), "
                                 "'reduction_factor': 3, 'metric': 'validation_accuracy'}.")
  unknown = sorted(set(declared) - {'rungs', 'reduction_factor', 'metric'})
  if unknown:
    raise sweep_files.SweepError(f"{where} has unknown key {unknown[0]!r}; its keys are 'rungs', "
                                 "'reduction_factor' and 'metric'.")
  rungs = declared.get('rungs')
  if (not isinstance(rungs, (list, tuple)) or not rungs
      or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rungs)
      or list(rungs) != sorted(set(rungs))):
    raise sweep_files.SweepError(f"{where}['rungs'] must be increasing epochs (positive "
                                 f'integers), e.g. (1, 2); got {rungs!r}.')
  factor = declared.get('reduction_factor', 3)
  if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
    raise sweep_files.SweepError(f"{where}['reduction_factor'] must be a number above 1 (3 keeps "
                                 f'a third of the settings at each rung); got {factor!r}.')
  metric = declared.get('metric', 'validation_accuracy')
  if metric not in HALVING_METRICS:
    raise sweep_files.SweepError(
        f"{where}['metric'] is {metric!r}; it must be a validation metric "
        f'({" or ".join(HALVING_METRICS)}): pruning by test or training metrics would choose on '
        'the test set or reward overfitting.')
  for trial in trials:
    _check_trial(where, rungs, trial)
  return Halving(tuple(rungs), float(factor), metric)


def require_validation_split(where: str, trial: sweep_files.Trial) -> None:
  """Refuses a trial without a validation split where `where` chooses by a validation metric."""
  if not trial.config.data.validation_split:
    raise sweep_files.SweepError(
        f'{where} ranks by a validation metric, but trial {trial.name} holds out no validation '
        "split; add hyper.fixed('data.validation_split', 10_000) to the sweep or pass "
        '--config.data.validation_split=10000.')


def _check_trial(where: str, rungs: Sequence[int], trial: sweep_files.Trial) -> None:
  config = trial.config
  require_validation_split(where, trial)
  beyond = [r for r in rungs if r > config.num_epochs]
  if beyond:
    raise sweep_files.SweepError(
        f'{where} has rung {beyond[0]} beyond num_epochs={config.num_epochs} (trial '
        f'{trial.name}); put every rung at or before the last epoch.')
  unlogged = [r for r in rungs if not epochs.logs_epoch(config, r)]
  if unlogged:
    raise sweep_files.SweepError(
        f'{where} has rung {unlogged[0]}, an epoch that is not evaluated '
        f'(logging.log_every_epochs={config.logging.log_every_epochs}); put rungs on evaluated '
        'epochs.')


def setting_identity(overrides: dict[str, Any], replicate_keys: Sequence[str]) -> Hashable:
  """What trials of one setting share: their values of every key but the replicate keys."""
  return tuple(sorted((k, repr(v)) for k, v in overrides.items() if k not in replicate_keys))


class Pruner:
  """Decides, at each rung, which trials of a training group `vectorized.train_trials` prunes.

  `settings` holds each trial's setting identity (`setting_identity`); `num_settings` is the
  number of settings of the whole program group, finished trials' included.
  """

  def __init__(self, halving: Halving, settings: Sequence[Hashable], num_settings: int):
    self.halving, self.settings, self.num_settings = halving, list(settings), num_settings
    self.pruned: set[int] = set()
    self.cuts: dict[int, str] = {}  # Trial index -> why it was pruned.

  def __call__(self, epoch: int, records: dict[int, dict]) -> list[int]:
    """The trials to prune after `epoch` (none off the rungs), given this epoch's records."""
    if epoch not in self.halving.rungs:
      return []
    rung = self.halving.rungs.index(epoch)
    alive = list(dict.fromkeys(s for i, s in enumerate(self.settings) if i not in self.pruned))
    keep = self.halving.kept(self.num_settings, rung)
    if len(alive) <= keep:
      return []
    sign = 1.0 if HALVING_METRICS[self.halving.metric] == 'max' else -1.0
    scores = {}
    for setting in alive:
      values = [records[i][self.halving.metric] for i, s in enumerate(self.settings)
                if s == setting and i in records and math.isfinite(records[i][self.halving.metric])]
      scores[setting] = sign * sum(values) / len(values) if values else -math.inf
    # Ties keep the sweep file's order.
    ranked = sorted(alive, key=lambda s: -scores[s])
    cut = set(ranked[keep:])
    threshold = scores[ranked[keep - 1]] * sign
    prune = [i for i, s in enumerate(self.settings) if s in cut and i not in self.pruned]
    for i in prune:
      score = scores[self.settings[i]] * sign
      self.cuts[i] = (f'pruned after epoch {epoch} (rung {rung + 1} of '
                      f'{len(self.halving.rungs)}): mean {self.halving.metric} {score:.4g}, the '
                      f'{keep} best of {len(alive)} settings went on (cut at {threshold:.4g}).')
    self.pruned.update(prune)
    return prune


def pruner_for_group(halving: Halving | None, group: Sequence[sweep_files.Trial],
                     training: Sequence[sweep_files.Trial],
                     replicate_keys: Sequence[str]) -> Pruner | None:
  """The pruner of the trials `training` (this run's part of the program group `group`)."""
  if halving is None:
    return None
  num_settings = len({setting_identity(t.overrides, replicate_keys) for t in group})
  return Pruner(halving, [setting_identity(t.overrides, replicate_keys) for t in training],
                num_settings)


def sweep_description(path: str, halving: Halving | None) -> dict[str, Any]:
  """What sweep.json records of the search: the ranges sampled (kinds and bounds) and the
  successive halving plan."""
  description = {}
  ranges = sweep_files.sweep_ranges(path)
  if ranges:
    description['ranges'] = {k: r.describe() for k, r in ranges.items()}
  if halving is not None:
    description['successive_halving'] = dataclasses.asdict(halving)
  return description


def recorded_description(workdir: str) -> dict[str, Any]:
  """`sweep_description` as the workdir's sweep.json holds it ({} for grids or older sweeps)."""
  path = epath.Path(workdir) / 'sweep.json'
  try:
    info = json.loads(path.read_text()) if path.exists() else {}
  except json.JSONDecodeError:
    return {}
  return {k: info[k] for k in ('ranges', 'successive_halving') if k in info}


def budget(rows: Sequence[dict[str, Any]], configs: Sequence[ml_collections.ConfigDict],
           spent_sec: float | None) -> dict[str, Any]:
  """Trial-epochs trained against those of the full sweep (every trial to `num_epochs`), and the
  device seconds spent against the full sweep's, estimated at the measured seconds per
  trial-epoch."""
  spent = sum(int(r.get('epoch') or 0) for r in rows)
  full = sum(c.num_epochs for c in configs)
  estimate = spent_sec * full / spent if spent_sec and spent else None
  return {'trial_epochs': spent, 'full_trial_epochs': full, 'device_sec': spent_sec,
          'full_device_sec_estimate': estimate,
          'pruned': sum(r.get('status') == results.PRUNED for r in rows)}


def write_search_plots(workdir: str, rows: Sequence[dict[str, Any]], keys: Sequence[str],
                       replicate_keys: Sequence[str], split: str | None) -> list[str]:
  """For sampled sweeps, in `plots/`: per sampled key, `{split}_accuracy_by_trial_vs_{key}.png`
  (each trial's final metric against its value, log axis for log ranges; pruned trials at their
  last rung), and `{split}_accuracy_best_so_far.png` (against trials, in sweep order). Without a
  ranking split (None): the first on test accuracy (results only), no best so far."""
  ranges = recorded_description(workdir).get('ranges', {})
  if not ranges:
    return []
  from mlp_mnist.records import plots  # pylint: disable=g-import-not-at-top
  ranking, split = split, aggregate.shown_split(split)
  metric = f'{split}_accuracy'
  plots_dir = epath.Path(workdir) / run_files.PLOTS_DIR
  finished = [r for r in rows if aggregate.has_results(r, split)]
  pruned = [r for r in rows if r['status'] == results.PRUNED and aggregate.finite(r.get(metric))]
  paths = []
  for key in (k for k in keys if k in ranges and k not in replicate_keys):
    kind = ranges[key]['kind']
    categories = ([aggregate.display(v) for v in ranges[key]['choices']] if kind == 'choice'
                  else None)
    position = ((lambda v: categories.index(aggregate.display(v))) if categories
                else (lambda v: v))
    groups = {label: ([position(r[key]) for r in members], [r[metric] for r in members])
              for label, members in (('finished', finished), ('pruned (at its last rung)', pruned))
              if members}
    if groups:
      paths.append(plots.save_trial_scatter(
          key, groups, str(plots_dir / f'{split}_accuracy_by_trial_vs_{key}.png'),
          ylabel=f'final {split} accuracy', log_x=kind == 'log', categories=categories,
          title=f'one point per trial ({len(finished)} finished, {len(pruned)} pruned)'))
  values = [r[metric] if aggregate.has_results(r, split) else math.nan for r in rows]
  if finished and ranking:
    paths.append(plots.save_best_so_far(
        values, str(plots_dir / f'{split}_accuracy_best_so_far.png'),
        ylabel=f'final {split} accuracy', title='pruned and unfinished trials count as no result'))
  return paths


def report_blocks(workdir: str, rows: Sequence[dict[str, Any]],
                  configs: Sequence[ml_collections.ConfigDict]) -> list[report.Block]:
  """The report's section on successive halving: trials pruned, and the budget spent against
  the full sweep's; none when the sweep prunes nothing."""
  halving = recorded_description(workdir).get('successive_halving')
  pruned = [r for r in rows if r['status'] == results.PRUNED]
  if not halving and not pruned:
    return []
  spent_timings = report.timings(workdir, rows)
  spent_sec = (sum(spent_timings[k] for k in ('train_sec', 'validation_sec', 'eval_sec'))
               if spent_timings else None)
  spent = budget(rows, configs, spent_sec)
  blocks = [report.Block('h2', 'Successive halving')]
  if halving:
    blocks.append(report.Block('p', (
        f"Rungs after epochs {', '.join(map(str, halving['rungs']))}, reduction factor "
        f"{halving['reduction_factor']:g}, ranked by {halving['metric']} (replicates averaged); "
        f'{len(pruned)} of {len(rows)} trials pruned, their records kept.')))
  device = lambda sec: f'{sec:.1f}' if sec is not None else '-'
  share = lambda a, b: f'{a / b:.0%}' if a is not None and b else '-'
  blocks.append(report.Block(
      'table', header=['', 'spent', 'full sweep', 'share'],
      rows=[['trial-epochs', str(spent['trial_epochs']), str(spent['full_trial_epochs']),
             share(spent['trial_epochs'], spent['full_trial_epochs'])],
            ['device seconds (training, validation, test)', device(spent['device_sec']),
             device(spent['full_device_sec_estimate']) + ' (estimated)',
             share(spent['device_sec'], spent['full_device_sec_estimate'])]]))
  blocks.append(report.Block('p', (
      "The full sweep's device seconds are estimated at this sweep's seconds per trial-epoch; "
      'docs/benchmarks.md measures both on MNIST.')))
  return blocks


def with_report_blocks(blocks: list[report.Block], extra: Sequence[report.Block]) -> list:
  """`blocks` with `extra` placed before the report's per-trial table."""
  if not extra:
    return blocks
  at = next((i for i, b in enumerate(blocks) if b.kind == 'h2' and b.text == 'Trials'),
            len(blocks))
  return blocks[:at] + list(extra) + blocks[at:]
