"""Running a sweep: trials grouped by program, each group trained at once, one folder per trial.

`run_sweep` expands the sweep file over the base config, takes this worker's share of the trials,
skips those already finished (status `done`, `diverged` or `stopped` by early stopping), trains
the others one program group after another, and rebuilds the sweep's tables, leaderboards, plots
and report from every trial folder.
"""

import contextlib
import json
import os
import time
import traceback
from typing import Any, Callable, Sequence

import ml_collections
from etils import epath

from mlp_mnist import config_checks
from mlp_mnist import data
from mlp_mnist import driver
from mlp_mnist import preemption
from mlp_mnist.devices import parallel
from mlp_mnist.records import locks
from mlp_mnist.records import provenance
from mlp_mnist.records import recorder as recorder_lib
from mlp_mnist.records import run_files
from mlp_mnist.records import tracking
from mlp_mnist.records import workdirs
from mlp_mnist.sweeps import aggregate
from mlp_mnist.sweeps import report
from mlp_mnist.sweeps import results
from mlp_mnist.sweeps import search
from mlp_mnist.sweeps import sweep_files
from mlp_mnist.sweeps import vectorized


def worker_share(groups: Sequence[Sequence[int]], num_workers: int,
                 worker_index: int) -> list[list[int]]:
  """This worker's trials, by group: the trials in group order cut into near-equal contiguous parts.

  Contiguous parts keep all but a few groups whole on one worker (one compilation each) while every
  worker gets the same number of trials, also when the whole sweep is one group.
  """
  if not 1 <= num_workers or not 0 <= worker_index < num_workers:
    raise sweep_files.SweepError(f'--worker_index={worker_index} must be in [0, --num_workers='
                                f'{num_workers}) and --num_workers at least 1.')
  ordered = [i for g in groups for i in g]
  start = len(ordered) * worker_index // num_workers
  mine = set(ordered[start:len(ordered) * (worker_index + 1) // num_workers])
  return [[i for i in g if i in mine] for g in groups if any(i in mine for i in g)]


def run_sweep(config: ml_collections.ConfigDict, sweep_path: str, workdir: str,
              num_workers: int = 1, worker_index: int = 0, max_group_size: int = 0,
              devices=None, dataset: data.Dataset | None = None,
              report_only: bool = False, log: Callable[[str], Any] = print,
              reference_config: ml_collections.ConfigDict | None = None,
              command: str = '') -> list[dict]:
  """Runs this worker's unfinished trials, then writes the results of the whole sweep.

  In a multi-process JAX run every process trains its share on its own devices, and process 0
  writes the results when all have finished. `reference_config` (the default config) and
  `command` (how the sweep was started) go into the report. Returns the results table (one row
  per trial of the sweep, in trial order, all workers' trials included).
  """
  locks.check_folder(workdir)
  trials = sweep_files.sweep_trials(config, sweep_path, recorded=report_only)
  # Folders named by the rule before sampled values got short names keep their names.
  trials = sweep_files.adopt_recorded_names(trials, recorded_trial_names(workdir))
  keys = sweep_files.swept_keys([t.overrides for t in trials])
  replicate_keys = sweep_files.replicate_keys(config, sweep_path)
  groups = vectorized.group_by_program([t.config for t in trials], max_group_size)
  halving = search.halving_plan(sweep_path, trials)
  if not report_only:
    share = worker_share(groups, num_workers, worker_index)
    _check_existing_trials(workdir, [trials[i] for g in share for i in g])
    _write_sweep_file(workdir, sweep_path, keys, replicate_keys, trials, groups, command, config,
                      search.sweep_description(sweep_path, halving))
    finished = {i for g in share for i in g
                if results.read_status(_dir(workdir, trials[i])) in results.FINISHED}
    # Per group: all its trials (successive halving counts its settings) and those to train.
    todo = [(g, [i for i in g if i not in finished]) for g in share]
    todo = [(g, left) for g, left in todo if left]
    devices = parallel.local_devices(devices)
    worker = f'worker {worker_index} of {num_workers}: ' if num_workers > 1 else ''
    log(f'{len(trials)} trials in {len(groups)} program group(s); {worker}{sum(map(len, share))} '
        f'of them here: {len(finished)} already finished, {sum(len(t) for _, t in todo)} to '
        'train on '
        f'{len(devices)} {devices[0].platform} device(s).')
    if todo:
      if dataset is None:
        dataset = data.load_dataset(config.data)
      for _, left in todo:  # Refused before any training: a group not even one trial of fits.
        first = trials[left[0]].config
        vectorized.trials_that_fit(first, vectorized.trial_state_bytes(
            first, 1, dataset.image_shape, dataset.num_classes), devices)
      progress = Progress(sum(map(len, share)), len(finished), len(todo), log)
      failures = tracking.Failures(log)  # One warning per tracker for the whole sweep.
      with preemption.stop_on_signals() as stop:
        for group, left in todo:
          with contextlib.ExitStack() as claims:  # Trials another worker trains (or has) are skipped.
            left = [i for i in left if locks.claim(_dir(workdir, trials[i]), claims, log)
                    and results.read_status(_dir(workdir, trials[i])) not in results.FINISHED]
            if not left:
              continue
            pruner = search.pruner_for_group(halving, [trials[i] for i in group],
                                             [trials[i] for i in left], replicate_keys)
            result = _run_group(workdir, [trials[i] for i in left], dataset, devices, progress,
                                failures, stop, pruner)
          if stop.requested:
            saved = result['status'].count(recorder_lib.INTERRUPTED) if result else 0
            under_way = ('training call' if config_checks.saves_inside_epochs(
                trials[left[0]].config) else 'epoch')
            raise preemption.Preempted(
                f'{stop.name} received: stopped after the {under_way} under way, with a '
                f'checkpoint of each of the {saved} unfinished trial(s) of the group in their '
                f'folders under {workdir}/trials; rerun the same command to resume.')
    # In a multi-process run, process 0 writes the table once every process's trials are done.
    parallel.sync('mlp_mnist sweep trained')
  if not workdirs.is_lead_process():
    return results.result_rows(workdir, trials, keys)
  return write_results(workdir, trials, keys, replicate_keys, log, sweep_path=sweep_path,
                       config=config, reference_config=reference_config)


def write_results(workdir: str, trials, keys: Sequence[str],
                  replicate_keys: Sequence[str] = sweep_files.DEFAULT_REPLICATE_KEYS,
                  log: Callable[[str], Any] = print, sweep_path: str | None = None,
                  config: ml_collections.ConfigDict | None = None,
                  reference_config: ml_collections.ConfigDict | None = None) -> list[dict]:
  """Rebuilds the tables (`results.*` per trial, `summary.*` per setting), the plots and the
  report from the trial folders; logs both leaderboards. Returns the rows, in trial order."""
  rows = results.result_rows(workdir, trials, keys)
  split = aggregate.ranking_split(rows)
  entries = aggregate.settings(rows, keys, replicate_keys)
  paths = results.write_tables(workdir, rows, keys)
  paths += results.write_summary_tables(workdir, entries, keys, replicate_keys, split)
  plot_paths = results.write_plots(workdir, rows, entries, keys, replicate_keys, split)
  plot_paths += search.write_search_plots(workdir, rows, keys, replicate_keys, split)
  blocks = report.build(workdir, sweep_path, config, reference_config, rows, entries, keys,
                        replicate_keys, split, plot_paths)
  blocks = search.with_report_blocks(blocks, search.report_blocks(
      workdir, rows, [t.config for t in trials]))
  paths += plot_paths + report.write_report(workdir, blocks)
  log(results.leaderboard(rows))
  log(results.settings_leaderboard(entries, split, replicate_keys, keys))
  log(f'Wrote {", ".join(p[len(str(workdir)):].lstrip("/") for p in paths)} in {workdir}.')
  return rows


def recorded_trial_names(workdir: str) -> set[str]:
  """The names of the trial folders in `workdir`."""
  trials_dir = epath.Path(workdir) / 'trials'
  return {p.name for p in trials_dir.iterdir() if p.is_dir()} if trials_dir.exists() else set()


def _dir(workdir: str, trial: sweep_files.Trial) -> str:
  return results.trial_dir(workdir, trial.name)


def train_group(workdir: str, trials: list[sweep_files.Trial], dataset, devices,
                log: Callable[[str], Any] = print) -> None:
  """Trains `trials` (of one program) as `run_sweep` trains a group, e.g. a generation of a
  Bayesian search (sweeps/bayesian.py), each claimed as `run_sweep` claims them (those a live
  process holds are skipped)."""
  with contextlib.ExitStack() as claims:
    trials = [t for t in trials if locks.claim(_dir(workdir, t), claims, log)]
    if trials:
      _run_group(workdir, trials, dataset, parallel.local_devices(devices),
                 Progress(len(trials), 0, 1, log))


class _TrialFolders:
  """A group's trial folders as `vectorized.TrialRecords`: each a run's (`recorder.Recorder`:
  config, metrics, TensorBoard, summary, status, the trackers its config enables; checkpoints,
  the latest and the best, as `config.checkpoint` asks), opened as the trial starts."""

  def __init__(self, workdir: str, trials: list[sweep_files.Trial], devices,
               failures: tracking.Failures, log: Callable[[str], Any]):
    self.workdir, self.trials, self.devices, self.failures, self.log = (
        workdir, trials, devices, failures, log)
    self.provenance = provenance.collect(devices, None)  # One for the group's trials.
    self.opened = []  # Recorders and checkpointers, to close if the group fails.

  def checkpointer(self, index: int):
    # Each process trains its own trials: it saves and restores them alone.
    self.opened.append(driver.open_checkpointer(_dir(self.workdir, self.trials[index]),
                                                self.trials[index].config, own_process=True))
    return self.opened[-1]

  def recorder(self, index: int, dataset_info: dict, history: list[dict],
               resumed_step: int | None):
    trial, sweep = self.trials[index], epath.Path(self.workdir).name
    self.opened.append(recorder_lib.Recorder(
        _dir(self.workdir, trial), trial.config, self.devices, history, resumed_step,
        dataset_info, log=self.log, provenance_record={**self.provenance,
                                                       'resumed_from_step': resumed_step},
        failures=self.failures, tracker_name=trial.name, tracker_group=sweep,
        tracker_tags={'sweep': sweep, 'trial': trial.name}, swept=trial.overrides,
        own_process=True))
    return self.opened[-1]

  def fail(self, detail: str) -> None:
    for trial in self.trials:
      results.write_status(_dir(self.workdir, trial), results.FAILED, detail)
    for opened in self.opened:
      if isinstance(opened, recorder_lib.Recorder):
        opened.finish(results.FAILED, detail=detail)
      else:
        opened.close()


def _run_group(workdir: str, trials: list[sweep_files.Trial], dataset, devices,
               progress: 'Progress', failures: tracking.Failures | None = None,
               stop: preemption.StopRequest | None = None,
               pruner: search.Pruner | None = None) -> dict | None:
  """Trains one program group in its trial folders (`_TrialFolders`), each trial resumed from
  its latest checkpoint; returns `vectorized.train_trials`' result (None: the group failed).
  With `pruner` (successive halving), the trials it cuts at a rung are marked `pruned` at once
  and leave the program."""
  folders = _TrialFolders(workdir, trials, devices,
                          failures or tracking.Failures(progress.log), progress.log)
  progress.start_group(trials)

  def on_epoch(epoch, records, diverged, stopped):
    progress.epoch(epoch, records, diverged, stopped)
    if pruner is None:
      return None
    prune = [i for i in pruner(epoch, records) if not diverged[i] and not stopped[i]]
    for i in prune:  # Marked at once: a sweep resumed after this rung does not train them again.
      results.write_status(_dir(workdir, trials[i]), results.PRUNED, pruner.cuts[i])
    return {i: pruner.cuts[i] for i in prune}

  try:
    result = vectorized.train_trials([t.config for t in trials], dataset, devices,
                                     on_epoch, records=folders, stop=stop,
                                     log=progress.log)
  except preemption.Preempted:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # One group's failure (out of memory, say) must not stop the others; a re-run retries it.
    folders.fail(traceback.format_exc())
    progress.end_group([results.FAILED] * len(trials), f'{type(e).__name__}: {e}')
    return None
  progress.end_group(result['status'], f'compiled in {result["timings"]["compile_sec"]:.1f}s, '
                     f'trained in {result["timings"]["train_sec"]:.1f}s')
  return result


def _check_existing_trials(workdir: str, trials: Sequence[sweep_files.Trial]) -> None:
  """Refuses to resume into trial folders that were run with a different config."""
  for trial in trials:
    try:
      saved = run_files.read_config(_dir(workdir, trial))
    except run_files.WorkdirError:
      continue  # Damaged: the trial is rerun, which rewrites it.
    differences = workdirs.config_differences(saved, trial.config) if saved else []
    if differences:
      raise sweep_files.SweepError(
          f'{_dir(workdir, trial)} was run with a different config ({differences[0]}'
          f'{"; ..." if len(differences) > 1 else ""}); use another --workdir, or delete that '
          'folder to rerun the trial.')


def _write_sweep_file(workdir: str, sweep_path: str, keys, replicate_keys, trials, groups,
                      command: str, config: ml_collections.ConfigDict,
                      search_description: dict | None = None) -> None:
  """`sweep.json`: the sweep file, the command, the swept and replicate keys and every trial with
  its program group, the files of `config.imports` (copied into the workdir, as
  `provenance.keep_imports` does for a run) and the search's plan (`search.sweep_description`)."""
  program = {i: g for g, group in enumerate(groups) for i in group}
  content = {'sweep_file': os.path.abspath(sweep_path), 'command': command,
             'swept_keys': list(keys), 'replicate_keys': list(replicate_keys),
             'trials': [{'name': t.name, 'overrides': t.overrides, 'program_group': program[i]}
                        for i, t in enumerate(trials)],
             'imports': provenance.keep_imports(workdir, config.imports),
             **(search_description or {})}
  run_files.write_text_atomic(epath.Path(workdir) / 'sweep.json',
                              json.dumps(content, indent=2) + '\n')


class Progress:
  """The progress display: this worker's trials done, running and left, one line per epoch."""

  def __init__(self, total: int, finished: int, num_groups: int, log: Callable[[str], Any]):
    self.counts = {'done': 0, 'diverged': 0, 'stopped': 0, 'failed': 0}
    self.total, self.previously, self.log = total, finished, log
    self.num_groups, self.group_index, self.start = num_groups, 0, time.time()
    self.running = []

  def start_group(self, trials: list[sweep_files.Trial]) -> None:
    self.group_index += 1
    self.running = trials
    self.log(f'group {self.group_index}/{self.num_groups}: {len(trials)} trial(s) of one program '
             f'({", ".join(t.name for t in trials[:3])}{", ..." if len(trials) > 3 else ""})')

  def epoch(self, epoch: int, records: dict[int, dict], diverged: list[bool],
            stopped: list[bool] = ()) -> None:
    best = ''
    if records:
      # Chosen by validation accuracy when the sweep holds a split out; test is only reported.
      split = aggregate.ranking_split([{**r, 'status': results.DONE} for r in records.values()])
      if split is None:
        best = f'; {aggregate.NOT_RANKED}'
      else:
        i, record = max(records.items(), key=lambda item: item[1][f'{split}_accuracy'])
        best = (f'; best {split} accuracy {record[f"{split}_accuracy"]:.2%} '
                f'(test {record["test_accuracy"]:.2%}, {self.running[i].name})')
    num_epochs = self.running[0].config.num_epochs
    self.log(f'{self._counts(len(self.running))} | group {self.group_index}/{self.num_groups} '
             f'epoch {epoch}/{num_epochs}, {sum(diverged)} diverged'
             f'{f", {sum(stopped)} stopped early" if any(stopped) else ""}{best}')

  def end_group(self, statuses: list[str], detail: str) -> None:
    for status in statuses:
      self.counts[status] = self.counts.get(status, 0) + 1
    self.running = []
    summary = ', '.join(f'{statuses.count(s)} {s}' for s in dict.fromkeys(statuses))
    self.log(f'{self._counts(0)} | group {self.group_index}/{self.num_groups} finished: '
             f'{summary} ({detail})')

  def _counts(self, running: int) -> str:
    finished = self.previously + sum(self.counts.values())
    left = self.total - finished - running
    return (f'[trials: {finished}/{self.total} finished ({self.counts["diverged"]} diverged, '
            f'{self._stopped(self.counts["stopped"])}{self._pruned()}{self.counts["failed"]} '
            'failed), '
            f'{running} running, {left} left, '
            f'{time.time() - self.start:.0f}s]')


  def _pruned(self) -> str:
    return f'{self.counts["pruned"]} pruned, ' if self.counts.get('pruned') else ''

  @staticmethod
  def _stopped(count: int) -> str:
    return f'{count} stopped early, ' if count else ''


def failed_trials(rows: Sequence[dict]) -> list[str]:
  return [r['trial'] for r in rows if r['status'] == results.FAILED]

