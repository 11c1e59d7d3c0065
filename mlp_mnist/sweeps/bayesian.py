"""Batched Bayesian search through Optuna's ask-and-tell interface (the optional extra
`mlp_mnist[optuna]`), declared in the sweep file:

    BAYESIAN_SEARCH = {'generations': 4, 'trials_per_generation': 8, 'sampler': 'tpe', 'seed': 0}

    def get_sweep(hyper):
      return hyper.product([
          hyper.fixed('data.validation_split', 10_000),
          hyper.optuna([hyper.loguniform('optimizer.learning_rate', 1e-4, 1e-1),
                        hyper.uniform('optimizer.b1', 0.8, 0.99)]),
          hyper.sweep('seed', range(2)),  # Replicates: Optuna is told their mean.
      ])

Each generation asks Optuna for `trials_per_generation` settings, trains them (times the
replicates) as one vectorized program group, and tells each setting's final validation metric.
The study lives in the workdir (`optuna_journal.log`, Optuna's JournalStorage on a file), so the
same command resumes it: settings asked but never told are trained first, none is asked twice.
A file without BAYESIAN_SEARCH runs as any sweep (`runner.run_sweep`).
"""

import dataclasses
import json
import os
import warnings
from typing import Any, Callable

import ml_collections
from etils import epath

from mlp_mnist import data
from mlp_mnist.devices import parallel
from mlp_mnist.records import run_files
from mlp_mnist.records import workdirs
from mlp_mnist.sweeps import runner
from mlp_mnist.sweeps import results
from mlp_mnist.sweeps import sampling
from mlp_mnist.sweeps import search
from mlp_mnist.sweeps import sweep_files

SEARCH_ATTRIBUTE = 'BAYESIAN_SEARCH'
JOURNAL_FILE = 'optuna_journal.log'
STUDY_NAME = 'mlp_mnist'
SAMPLERS = ('tpe', 'random', 'qmc')


@dataclasses.dataclass(frozen=True)
class BayesianSearch:
  """Generations of `trials_per_generation` settings asked from Optuna's `sampler`."""
  generations: int
  trials_per_generation: int
  sampler: str = 'tpe'
  seed: int = 0
  metric: str = 'validation_accuracy'


def search_plan(path: str) -> BayesianSearch | None:
  """The sweep file's BAYESIAN_SEARCH, checked (Optuna installed); None when it has none."""
  declared = sweep_files.module_attribute(path, SEARCH_ATTRIBUTE)
  if declared is None:
    return None
  where = f'sweep file {path}: {SEARCH_ATTRIBUTE}'
  fields = [f.name for f in dataclasses.fields(BayesianSearch)]
  if not isinstance(declared, dict) or set(declared) - set(fields):
    raise sweep_files.SweepError(
        f"{where} must be a dict of {', '.join(fields)}, e.g. {{'generations': 4, "
        "'trials_per_generation': 8}.")
  plan = BayesianSearch(**declared)
  for name in ('generations', 'trials_per_generation'):
    value = getattr(plan, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise sweep_files.SweepError(f"{where}['{name}'] must be a positive integer; got {value!r}.")
  if plan.sampler not in SAMPLERS:
    raise sweep_files.SweepError(f"{where}['sampler'] is {plan.sampler!r}; use one of "
                                 f"{', '.join(SAMPLERS)}.")
  if plan.metric not in search.HALVING_METRICS:
    raise sweep_files.SweepError(f"{where}['metric'] is {plan.metric!r}; it must be a validation "
                                 f'metric ({" or ".join(search.HALVING_METRICS)}).')
  try:
    import optuna  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise sweep_files.SweepError(
        f"{where} needs Optuna, which is not installed; pip install 'mlp_mnist[optuna]' (or "
        'optuna).') from None
  return plan


def _templates(base_config: ml_collections.ConfigDict, path: str, recorded: bool = False):
  """The sweep file's trials with hyper.optuna's ranges left in, and those ranges by key."""
  templates = sweep_files.load_sweep(path)
  ranges = {k: v for t in templates for k, v in t.items() if isinstance(v, sampling.Range)}
  if not ranges or any(set(ranges) - set(t) for t in templates):
    raise sweep_files.SweepError(
        f'sweep file {path}: {SEARCH_ATTRIBUTE} searches the ranges of one hyper.optuna([...]) '
        'in every trial (combine it with replicates through hyper.product).')
  # Checks every key and value before any training: the middle of each range stands in.
  trials_for(base_config, path, templates, [{k: r.value(0.5) for k, r in ranges.items()}], [0],
             recorded)
  return templates, ranges


def trials_for(base_config, path: str, templates, settings: list[dict[str, Any]],
               numbers: list[int], recorded: bool = False) -> list[sweep_files.Trial]:
  """The trials of `settings` (values of the ranged keys; Optuna's trial `numbers`): each
  setting in every template. Names start with the Optuna trial's number: `search=007,seed=1`."""
  overrides = [{k: setting.get(k, v) for k, v in t.items()} for setting in settings
               for t in templates]
  trials = sweep_files.expand(base_config, overrides, source=f'sweep file {path}',
                              recorded=recorded)
  replicate_names = sweep_files.trial_names(
      [{k: v for k, v in t.items() if not isinstance(v, sampling.Range)} for t in templates])
  names = [f'search={n:03d}' + (f',{r}' if len(templates) > 1 else '')
           for n in numbers for r in replicate_names]
  return [dataclasses.replace(t, name=name) for t, name in zip(trials, names)]


def _distribution(r: sampling.Range):
  from optuna import distributions  # pylint: disable=g-import-not-at-top
  if r.kind == 'choice':
    return distributions.CategoricalDistribution(r.choices)
  if r.kind == 'int':
    return distributions.IntDistribution(r.low, r.high)
  return distributions.FloatDistribution(r.low, r.high, log=r.kind == 'log')


def _sampler(plan: BayesianSearch, num_trials: int):
  """The plan's sampler, seeded by its seed and the trials so far, so that a resumed study does
  not replay its first samples (and an uninterrupted one samples the same)."""
  import optuna  # pylint: disable=g-import-not-at-top
  seed = plan.seed * 1_000_003 + num_trials
  if plan.sampler == 'tpe':  # The constant liar keeps a generation's asks apart.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
  if plan.sampler == 'random':
    return optuna.samplers.RandomSampler(seed=seed)
  with warnings.catch_warnings():  # QMCSampler is marked experimental since Optuna 3.0.
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    return optuna.samplers.QMCSampler(seed=plan.seed, scramble=True)


def open_study(workdir: str, plan: BayesianSearch):
  """The study stored in the workdir's `optuna_journal.log` (created on first use)."""
  import optuna  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  storage = optuna.storages.JournalStorage(
      optuna.storages.journal.JournalFileBackend(os.path.join(workdir, JOURNAL_FILE)))
  direction = 'maximize' if search.HALVING_METRICS[plan.metric] == 'max' else 'minimize'
  study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction,
                              load_if_exists=True, sampler=optuna.samplers.RandomSampler())
  study.sampler = _sampler(plan, len(study.get_trials(deepcopy=False)))
  return study


def run_search(config: ml_collections.ConfigDict, sweep_path: str, workdir: str,
               devices=None, dataset: data.Dataset | None = None, report_only: bool = False,
               log: Callable[[str], Any] = print, **sweep_kwargs) -> list[dict]:
  """Runs the sweep file's Bayesian search (or, without BAYESIAN_SEARCH, `runner.run_sweep` with
  the same arguments); writes the results of every trial so far. Returns the results table."""
  plan = search_plan(sweep_path)
  if plan is None:
    return runner.run_sweep(config, sweep_path, workdir, devices=devices, dataset=dataset,
                            report_only=report_only, log=log, **sweep_kwargs)
  if sweep_kwargs.get('num_workers', 1) > 1:
    raise sweep_files.SweepError(
        f'sweep file {sweep_path}: {SEARCH_ATTRIBUTE} runs on one worker (each generation is one '
        'program that waits for the last one\'s results); drop --num_workers.')
  templates, ranges = _templates(config, sweep_path, recorded=report_only)
  middle = {k: r.value(0.5) for k, r in ranges.items()}
  for trial in trials_for(config, sweep_path, templates, [middle], [0], report_only):
    search.require_validation_split(f'sweep file {sweep_path}: {SEARCH_ATTRIBUTE}', trial)
  import optuna  # pylint: disable=g-import-not-at-top
  space = {k: _distribution(r) for k, r in ranges.items()}
  total = plan.generations * plan.trials_per_generation
  replicate_keys = sweep_files.replicate_keys(config, sweep_path)
  command = sweep_kwargs.get('command', '')
  while not report_only:
    study = open_study(workdir, plan)
    told = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    if len(told) >= total:
      break
    # Asked but never told (a generation cut short): trained first, never asked again.
    asked = [(t.number, t.params) for t in study.get_trials(deepcopy=False)
             if t.state == optuna.trial.TrialState.RUNNING][:plan.trials_per_generation]
    for _ in range(min(plan.trials_per_generation, total - len(told)) - len(asked)):
      trial = study.ask(space)
      asked.append((trial.number, trial.params))
    trials = trials_for(config, sweep_path, templates, [p for _, p in asked],
                        [n for n, _ in asked])
    log(f'generation {len(told) // plan.trials_per_generation + 1}/{plan.generations}: '
        f'{len(asked)} setting(s) asked from Optuna ({plan.sampler}), {len(trials)} trial(s) in '
        'one program.')
    _write_search_file(workdir, sweep_path, plan, ranges, replicate_keys, command,
                       _study_trials(study, config, sweep_path, templates))
    if dataset is None:
      dataset = data.load_dataset(config.data)
    runner.train_group(workdir, trials, dataset, devices, log)
    for number, _ in asked:
      prefix = f'search={number:03d}'
      values = [_final_metric(workdir, t, plan.metric) for t in trials
                if t.name == prefix or t.name.startswith(prefix + ',')]
      values = [v for v in values if v is not None]
      if values:
        study.tell(number, sum(values) / len(values))
      else:  # Every replicate diverged or failed.
        study.tell(number, state=optuna.trial.TrialState.FAIL)
  parallel.sync('mlp_mnist bayesian search trained')
  all_trials = _study_trials(open_study(workdir, plan), config, sweep_path, templates,
                             recorded=report_only)
  keys = sweep_files.swept_keys([t.overrides for t in all_trials])
  if not workdirs.is_lead_process():
    return results.result_rows(workdir, all_trials, keys)
  if not report_only:
    _write_search_file(workdir, sweep_path, plan, ranges, replicate_keys, command, all_trials)
  return runner.write_results(workdir, all_trials, keys, replicate_keys, log,
                              sweep_path=sweep_path, config=config,
                              reference_config=sweep_kwargs.get('reference_config'))


def _study_trials(study, config, sweep_path, templates,
                  recorded: bool = False) -> list[sweep_files.Trial]:
  """Every setting the study has asked for, in every template, in the order it asked them."""
  asked = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
  if not asked:
    return []
  return trials_for(config, sweep_path, templates, [t.params for t in asked],
                    [t.number for t in asked], recorded)


def _final_metric(workdir: str, trial: sweep_files.Trial, metric: str) -> float | None:
  directory = results.trial_dir(workdir, trial.name)
  if results.read_status(directory) not in (results.DONE, results.STOPPED):
    return None
  records = results.read_records(directory)
  return results.final_record(trial.config, records).get(metric) if records else None


def _write_search_file(workdir, sweep_path, plan, ranges, replicate_keys, command,
                       trials) -> None:
  """`sweep.json` as `runner.run_sweep` writes it, with the search's plan and ranges."""
  content = {'sweep_file': os.path.abspath(sweep_path), 'command': command,
             'swept_keys': sweep_files.swept_keys([t.overrides for t in trials]),
             'replicate_keys': list(replicate_keys),
             'trials': [{'name': t.name, 'overrides': t.overrides, 'program_group': 0}
                        for t in trials],
             'ranges': {k: r.describe() for k, r in ranges.items()},
             'bayesian_search': dataclasses.asdict(plan)}
  run_files.write_text_atomic(epath.Path(workdir) / 'sweep.json',
                              json.dumps(content, indent=2) + '\n')
