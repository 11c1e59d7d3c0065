"""Search beyond grids: sampled trials from ranges, successive halving inside the vectorized
program, short trial names, and the report's budget and plots."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from mlp_mnist.sweeps import results
from mlp_mnist.sweeps import runner
from mlp_mnist.sweeps import sampling
from mlp_mnist.sweeps import search
from mlp_mnist.sweeps import sweep_files
from mlp_mnist.sweeps import vectorized

import default
from conftest import REPO, assert_png, synthetic_dataset

HYPER = sweep_files.HYPER
SAMPLED = '''
def get_sweep(hyper):
  return hyper.product([
      hyper.fixed('data.validation_split', 40),
      hyper.quasirandom([hyper.loguniform('optimizer.learning_rate', 1e-4, 1e-1),
                         hyper.uniform('optimizer.b1', 0.5, 0.99),
                         hyper.uniform('model.dropout_rate', 0.05, 0.5)], num_trials=6, seed=3),
      hyper.sweep('seed', [0, 1]),
  ])
'''
HALVING = "SUCCESSIVE_HALVING = {'rungs': (1, 2), 'reduction_factor': 3}\n"


def _config(num_epochs=3):
  config = default.get_config()
  config.num_epochs = num_epochs
  config.eval_batch_size = 20
  return config


def _write(tmp_path, text, name='sweep.py'):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


# Ranges and sampled trial sets.

def test_ranges_map_the_unit_interval():
  assert HYPER.uniform('a', 2, 4).value(0.5) == 3.0
  assert HYPER.loguniform('a', 1e-4, 1e-2).value(0.5) == pytest.approx(1e-3)
  assert [HYPER.integer('a', 1, 3).value(u) for u in (0.0, 0.34, 0.67, 0.999)] == [1, 2, 3, 3]
  assert [HYPER.choice('a', ['x', 'y']).value(u) for u in (0.0, 0.49, 0.5)] == ['x', 'x', 'y']


@pytest.mark.parametrize('make,kwargs', [('quasirandom', {}), ('quasirandom', {'method': 'sobol'}),
                                         ('random', {})])
def test_sampled_trials_stay_in_their_ranges_and_repeat(make, kwargs):
  ranges = [HYPER.loguniform('optimizer.learning_rate', 1e-4, 1e-1),
            HYPER.integer('model.num_layers', 1, 3),
            HYPER.choice('model.activation', ['relu', 'gelu'])]
  trials = getattr(HYPER, make)(ranges, num_trials=32, seed=1, **kwargs)
  assert trials == getattr(HYPER, make)(ranges, num_trials=32, seed=1, **kwargs)
  assert trials != getattr(HYPER, make)(ranges, num_trials=32, seed=2, **kwargs)
  rates = [t['optimizer.learning_rate'] for t in trials]
  assert all(1e-4 <= r <= 1e-1 and isinstance(r, float) for r in rates)
  assert {t['model.num_layers'] for t in trials} == {1, 2, 3}
  assert {t['model.activation'] for t in trials} == {'relu', 'gelu'}
  if make == 'quasirandom':  # Low discrepancy: every decade of the log range is visited.
    assert sorted({int(np.floor(np.log10(r))) for r in rates}) == [-4, -3, -2]


def test_the_same_file_gives_the_same_trials(tmp_path):
  path = _write(tmp_path, SAMPLED)
  first = sweep_files.sweep_trials(_config(), path)
  again = sweep_files.sweep_trials(_config(), path)
  assert [(t.name, t.overrides) for t in first] == [(t.name, t.overrides) for t in again]
  assert len(first) == 12 and len({t.name for t in first}) == 12
  assert set(sweep_files.sweep_ranges(path)) == {'optimizer.learning_rate', 'optimizer.b1',
                                                 'model.dropout_rate'}


def test_sampled_trials_group_into_one_program(tmp_path):
  trials = sweep_files.sweep_trials(_config(), _write(tmp_path, SAMPLED))
  assert vectorized.group_by_program([t.config for t in trials]) == [list(range(12))]


@pytest.mark.parametrize('text,message', [
    ("hyper.uniform('optimizer.b1', 0.9, 0.9)", 'is empty; give low < high'),
    ("hyper.uniform('optimizer.b1', 0.9, 0.5)", 'is inverted; give low < high'),
    ("hyper.loguniform('optimizer.learning_rate', 0, 1e-2)", 'includes zero or negative'),
    ("hyper.loguniform('optimizer.learning_rate', -1e-3, 1e-2)", 'includes zero or negative'),
    ("hyper.choice('model.activation', [])", 'has no values'),
    ("hyper.integer('model.num_layers', 1.5, 3)", 'takes integer bounds'),
])
def test_bad_ranges_are_one_line(tmp_path, text, message):
  path = _write(tmp_path, f'def get_sweep(hyper):\n  return hyper.quasirandom([{text}], 4)\n')
  with pytest.raises(sweep_files.SweepError, match=message) as error:
    sweep_files.sweep_trials(_config(), path)
  assert '\n' not in str(error.value) and str(error.value).startswith(f'sweep file {path}')


def test_bad_sample_counts_are_refused():
  ranges = [HYPER.uniform('optimizer.b1', 0.5, 0.9)]
  with pytest.raises(sampling.RangeError, match='num_trials must be a positive integer'):
    HYPER.quasirandom(ranges, 0)
  with pytest.raises(sampling.RangeError, match="'halton' or 'sobol'"):
    HYPER.quasirandom(ranges, 4, method='latin')
  with pytest.raises(sampling.RangeError, match='two ranges'):
    HYPER.random(ranges * 2, 4)


# Trial names.

def test_long_floats_get_short_unique_names_and_grids_keep_theirs():
  grid = [{'optimizer.learning_rate': 1e-4 * 1.06**i} for i in range(4)]
  assert sweep_files.trial_names(grid) == [
      'learning_rate=0.0001', 'learning_rate=0.000106', 'learning_rate=0.0001124',
      'learning_rate=0.0001191']
  assert sweep_files.trial_names([{'a': 0.3}, {'a': 0.1 + 0.2}]) == ['a=0.3',
                                                                     'a=0.30000000000000004']
  close = [{'a': 0.123456789}, {'a': 0.123456788}]
  assert sweep_files.trial_names(close) == ['a=0.123456789', 'a=0.123456788']
  short = [{'a': v, 'seed': s} for v in (1e-4, 2e-3, 0.5) for s in range(2)]
  assert sweep_files.trial_names(short) == sweep_files.trial_names(short, legacy=True)


def test_a_workdir_recorded_with_long_names_resumes_and_reports(tmp_path):
  """A sweep recorded by the rule before short names (folders named `str(value)`) is finished:
  the rerun trains nothing, and reports every trial under its recorded name."""
  path = _write(tmp_path, 'def get_sweep(hyper):\n  return hyper.sweep('
                "'optimizer.learning_rate', [1e-3 * 1.06**i for i in range(3)])\n")
  config, dataset = _config(num_epochs=1), synthetic_dataset(num_train=64, num_test=40)
  workdir = str(tmp_path / 'run')
  rows = runner.run_sweep(config, path, workdir, dataset=dataset, log=lambda line: None)
  rates = [1e-3 * 1.06**i for i in range(3)]
  assert [r['trial'] for r in rows] == ['learning_rate=0.001', 'learning_rate=0.00106',
                                        'learning_rate=0.001124']
  legacy = [f'learning_rate={rate}' for rate in rates]  # Today's rule: str(value).
  assert legacy[1:] == ['learning_rate=0.0010600000000000002',
                        'learning_rate=0.0011236000000000002']
  for row, name in zip(rows, legacy):
    if row['trial'] != name:
      os.rename(results.trial_dir(workdir, row['trial']), results.trial_dir(workdir, name))
  trained = []
  rows = runner.run_sweep(config, path, workdir, dataset=dataset, log=trained.append)
  assert [r['trial'] for r in rows] == legacy and {r['status'] for r in rows} == {'done'}
  assert '3 already finished, 0 to train' in trained[0]


# Successive halving.

def test_pruner_keeps_the_best_settings_with_replicates_averaged():
  halving = search.Halving(rungs=(1, 2), reduction_factor=2, metric='validation_accuracy')
  settings = ['a', 'a', 'b', 'b', 'c', 'c', 'd', 'd']
  pruner = search.Pruner(halving, settings, num_settings=4)
  # b's seeds average best (0.7), a (0.6) beats c and d despite d's single best seed.
  accuracy = [0.5, 0.7, 0.7, 0.7, 0.55, 0.55, 0.9, 0.1]
  records = {i: {'validation_accuracy': a} for i, a in enumerate(accuracy)}
  assert pruner(1, records) == [4, 5, 6, 7]
  assert 'the 2 best of 4 settings' in pruner.cuts[6]
  assert pruner(2, {i: records[i] for i in range(4)}) == [0, 1]
  loss = search.Pruner(search.Halving((1,), 2, 'validation_loss'), ['a', 'b'], 2)
  assert loss(1, {0: {'validation_loss': 0.3}, 1: {'validation_loss': 0.2}}) == [0]


def test_pruned_trials_stop_costing_steps(config):
  """Trials pruned after epoch 1 keep epoch 1's record and state; the others train on, and
  their results equal those of an unpruned run."""
  dataset = synthetic_dataset(num_train=64, num_test=40)
  config.num_epochs, config.data.validation_split, config.eval_batch_size = 3, 16, 8
  configs = [sweep_files.with_overrides(config, {'seed': s, 'optimizer.learning_rate': lr})
             for s, lr in [(0, 1e-3), (1, 1e-2), (2, 3e-3), (3, 1e-1)]]
  seen = []

  def prune_1_and_3(epoch, records, diverged, stopped):
    seen.append(sorted(records))
    return [1, 3] if epoch == 1 else []

  pruned = vectorized.train_trials(configs, dataset, jax.devices()[:2], on_epoch=prune_1_and_3)
  full = vectorized.train_trials(configs, dataset, jax.devices()[:2])
  steps_per_epoch = -(-48 // config.batch_size)
  assert seen == [[0, 1, 2, 3], [0, 2], [0, 2]]
  assert pruned['pruned_epoch'] == [None, 1, None, 1]
  assert np.asarray(pruned['state'].step).tolist() == [3 * steps_per_epoch, steps_per_epoch] * 2
  for i in range(4):
    want = full['history'][i][:1] if i in (1, 3) else full['history'][i]
    got = pruned['history'][i]
    assert [r['validation_accuracy'] for r in got] == [r['validation_accuracy'] for r in want]
    assert [r['train_loss'] for r in got] == [r['train_loss'] for r in want]


def _sweep(tmp_path, text, workdir, log=lambda line: None):
  return runner.run_sweep(_config(), _write(tmp_path, text), workdir, devices=jax.devices()[:2],
                          dataset=synthetic_dataset(num_train=120, num_test=40), log=log)


def test_successive_halving_sweep_prunes_keeps_records_and_reports(tmp_path):
  workdir = str(tmp_path / 'run')
  rows = _sweep(tmp_path, SAMPLED + HALVING, workdir)
  statuses = [r['status'] for r in rows]
  # 6 settings x 2 seeds: 2 settings go on after epoch 1, 1 after epoch 2.
  assert statuses.count('pruned') == 10 and statuses.count('done') == 2
  done = [r for r in rows if r['status'] == 'done']
  assert done[0]['optimizer.learning_rate'] == done[1]['optimizer.learning_rate']
  epochs = sorted(r['epoch'] for r in rows)
  assert epochs == [1] * 8 + [2] * 2 + [3] * 2
  for row in rows:
    directory = results.trial_dir(workdir, row['trial'])
    assert len(results.read_records(directory)) == row['epoch']
    if row['status'] == 'pruned':
      assert 'pruned after epoch' in results.read_status_detail(directory)
  report = open(os.path.join(workdir, 'report.md')).read()
  assert '## Successive halving' in report and '| trial-epochs | 18 | 36 | 50% |' in report
  for name in ('validation_accuracy_by_trial_vs_optimizer.learning_rate.png',
               'validation_accuracy_by_trial_vs_model.dropout_rate.png',
               'validation_accuracy_best_so_far.png'):
    assert_png(os.path.join(workdir, 'plots', name))
  info = json.load(open(os.path.join(workdir, 'sweep.json')))
  assert info['ranges']['optimizer.learning_rate'] == {'kind': 'log', 'low': 1e-4, 'high': 0.1}
  assert info['successive_halving']['rungs'] == [1, 2]


def test_resume_across_a_rung_equals_the_uninterrupted_sweep(tmp_path, monkeypatch):
  """Interrupted after the first rung: the pruned trials stay pruned, the others retrain from
  scratch, and every trial's records equal the uninterrupted sweep's, bit for bit."""
  text = SAMPLED + HALVING
  whole = str(tmp_path / 'whole')
  _sweep(tmp_path, text, whole)
  interrupted = str(tmp_path / 'interrupted')
  original = runner.Progress.epoch

  def interrupt_at_epoch_2(self, epoch, *args):
    original(self, epoch, *args)
    if epoch == 2:
      raise KeyboardInterrupt
  monkeypatch.setattr(runner.Progress, 'epoch', interrupt_at_epoch_2)
  with pytest.raises(KeyboardInterrupt):
    _sweep(tmp_path, text, interrupted)
  names = [t.name for t in sweep_files.sweep_trials(_config(), str(tmp_path / 'sweep.py'))]
  statuses = [results.read_status(results.trial_dir(interrupted, n)) for n in names]
  assert statuses.count('pruned') == 8 and statuses.count('running') == 4
  monkeypatch.setattr(runner.Progress, 'epoch', original)
  lines = []
  _sweep(tmp_path, text, interrupted, log=lines.append)
  assert '8 already finished, 4 to train' in lines[0]
  for name in names:
    got, want = (results.read_records(results.trial_dir(w, name)) for w in (interrupted, whole))
    drop = lambda records: [{k: v for k, v in r.items() if not k.endswith(('_sec', 'per_sec'))}
                            for r in records]
    assert drop(got) == drop(want), name
    assert (results.read_status(results.trial_dir(interrupted, name))
            == results.read_status(results.trial_dir(whole, name)))


@pytest.mark.parametrize('halving,message', [
    ("{'rungs': (1, 4)}", 'rung 4 beyond num_epochs=3'),
    ("{'rungs': (1,), 'metric': 'test_accuracy'}", 'must be a validation metric'),
    ("{'rungs': (2, 1)}", 'must be increasing epochs'),
    ("{'rungs': (1,), 'reduction_factor': 1}", 'must be a number above 1'),
    ("{'rungs': (1,), 'eta': 3}", "unknown key 'eta'"),
])
def test_bad_halving_is_one_line_before_training(tmp_path, halving, message):
  with pytest.raises(sweep_files.SweepError, match=message) as error:
    _sweep(tmp_path, SAMPLED + f'SUCCESSIVE_HALVING = {halving}\n', str(tmp_path / 'run'))
  assert '\n' not in str(error.value)
  assert not os.path.exists(tmp_path / 'run')


def test_halving_on_an_epoch_not_evaluated_is_refused(tmp_path):
  text = SAMPLED.replace("hyper.fixed('data.validation_split', 40),",
                         "hyper.fixed('data.validation_split', 40), "
                         "hyper.fixed('logging.log_every_epochs', 2),") + HALVING
  with pytest.raises(sweep_files.SweepError, match='rung 1, an epoch that is not evaluated'):
    _sweep(tmp_path, text, str(tmp_path / 'run'))


def test_halving_without_a_validation_split_is_refused(tmp_path):
  text = SAMPLED.replace("hyper.fixed('data.validation_split', 40),", '') + HALVING
  with pytest.raises(sweep_files.SweepError, match='holds out no validation split'):
    _sweep(tmp_path, text, str(tmp_path / 'run'))


def test_sweep_script_reports_a_bad_range_in_one_line(tmp_path):
  path = _write(tmp_path, "def get_sweep(hyper):\n  return hyper.random([hyper.loguniform("
                "'optimizer.learning_rate', 0.0, 1.0)], 4)\n")
  completed = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'), '--config',
       os.path.join(REPO, 'configs', 'default.py'), '--sweep', path,
       f'--workdir={tmp_path / "run"}', '--jax_cache_dir='],
      capture_output=True, text=True, timeout=300, check=False)
  assert completed.returncode == 2
  assert completed.stderr.strip().count('\n') == 0 and 'includes zero' in completed.stderr


# Batched Bayesian search (Optuna).

BAYESIAN = '''
BAYESIAN_SEARCH = {'generations': 2, 'trials_per_generation': 3, 'sampler': 'tpe', 'seed': 0}

def get_sweep(hyper):
  return hyper.product([
      hyper.fixed('data.validation_split', 40),
      hyper.optuna([hyper.loguniform('optimizer.learning_rate', 1e-4, 1e-1),
                    hyper.uniform('optimizer.b1', 0.5, 0.99)]),
      hyper.sweep('seed', [0, 1]),
  ])
'''


def _search(tmp_path, workdir, text=BAYESIAN, log=lambda line: None):
  from mlp_mnist.sweeps import bayesian  # pylint: disable=g-import-not-at-top
  return bayesian.run_search(_config(num_epochs=1), _write(tmp_path, text), workdir,
                             devices=jax.devices()[:2],
                             dataset=synthetic_dataset(num_train=120, num_test=40), log=log)


def test_bayesian_search_trains_generations_and_resumes_without_asking_twice(tmp_path,
                                                                            monkeypatch):
  """Killed during generation 2: the rerun trains the settings generation 2 had asked, asks
  nothing again, and tells Optuna every setting's mean over its seeds."""
  from mlp_mnist.sweeps import bayesian  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  original, calls = runner.train_group, []

  def killed_in_generation_2(*args, **kwargs):
    calls.append(len(args[1]))
    if len(calls) == 2:
      raise KeyboardInterrupt
    return original(*args, **kwargs)
  monkeypatch.setattr(runner, 'train_group', killed_in_generation_2)
  with pytest.raises(KeyboardInterrupt):
    _search(tmp_path, workdir)
  assert calls == [6, 6]
  plan = bayesian.search_plan(str(tmp_path / 'sweep.py'))
  study = bayesian.open_study(workdir, plan)
  asked_before = {t.number: t.params for t in study.get_trials()}
  states = [t.state.name for t in study.get_trials()]
  assert len(asked_before) == 6 and states.count('COMPLETE') == 3
  monkeypatch.setattr(runner, 'train_group', original)
  lines = []
  rows = _search(tmp_path, workdir, log=lines.append)
  assert 'generation 2/2: 3 setting(s) asked' in ''.join(lines)
  study = bayesian.open_study(workdir, plan)
  trials = study.get_trials()
  assert {t.number: t.params for t in trials} == asked_before  # Nothing asked twice.
  assert [t.state.name for t in trials] == ['COMPLETE'] * 6
  assert len({tuple(sorted(t.params.items())) for t in trials}) == 6
  assert len(rows) == 12 and {r['status'] for r in rows} == {'done'}
  by_name = {r['trial']: r for r in rows}
  for t in trials:
    seeds = [by_name[f'search={t.number:03d},seed={s}']['validation_accuracy'] for s in (0, 1)]
    assert t.value == pytest.approx(sum(seeds) / 2)
  assert os.path.exists(os.path.join(workdir, 'optuna_journal.log'))
  assert_png(os.path.join(workdir, 'plots', 'validation_accuracy_best_so_far.png'))
  again = []
  _search(tmp_path, workdir, log=again.append)  # Finished: nothing more is asked or trained.
  assert not any('generation' in line for line in again)
  assert len(bayesian.open_study(workdir, plan).get_trials()) == 6


def test_bayesian_search_without_optuna_is_one_line(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'optuna', None)
  with pytest.raises(sweep_files.SweepError,
                     match=r"needs Optuna.*pip install 'mlp_mnist\[optuna\]'"):
    _search(tmp_path, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_optuna_ranges_without_a_search_are_refused(tmp_path):
  text = BAYESIAN.replace('BAYESIAN_SEARCH', 'NOT_A_SEARCH')
  with pytest.raises(sweep_files.SweepError, match='needs BAYESIAN_SEARCH'):
    _search(tmp_path, str(tmp_path / 'run'), text=text)


@pytest.mark.parametrize('sampler,expected', [('tpe', 'TPESampler'), ('random', 'RandomSampler'),
                                              ('qmc', 'QMCSampler')])
def test_bayesian_samplers(tmp_path, sampler, expected):
  from mlp_mnist.sweeps import bayesian  # pylint: disable=g-import-not-at-top
  plan = bayesian.search_plan(_write(tmp_path, BAYESIAN.replace("'tpe'", repr(sampler))))
  assert type(bayesian.open_study(str(tmp_path / 'run'), plan).sampler).__name__ == expected


@pytest.mark.parametrize('change,message', [
    (("'tpe'", "'cmaes'"), "use one of tpe, random, qmc"),
    (("'generations': 2", "'generations': 0"), "'generations'] must be a positive integer"),
    (("'seed': 0}", "'seed': 0, 'metric': 'test_accuracy'}"), 'must be a validation metric'),
    (("hyper.fixed('data.validation_split', 40),", ''), 'holds out no validation split'),
])
def test_bad_bayesian_searches_are_one_line(tmp_path, change, message):
  with pytest.raises(sweep_files.SweepError, match=message) as error:
    _search(tmp_path, str(tmp_path / 'run'), text=BAYESIAN.replace(*change))
  assert '\n' not in str(error.value)


def test_bayesian_search_refuses_several_workers(tmp_path):
  from mlp_mnist.sweeps import bayesian  # pylint: disable=g-import-not-at-top
  with pytest.raises(sweep_files.SweepError, match='runs on one worker'):
    bayesian.run_search(_config(), _write(tmp_path, BAYESIAN), str(tmp_path / 'run'),
                        num_workers=2, worker_index=0)


def test_tables_show_short_values_and_bands_stay_within_the_metric():
  from mlp_mnist.sweeps import aggregate  # pylint: disable=g-import-not-at-top
  assert aggregate.display(1e-4 * 1.06**3) == '0.0001191' and aggregate.display(0.001) == '0.001'
  assert aggregate.setting_label({'optimizer.learning_rate': 1e-4 * 1.06**3, 'seed': 2}) == (
      'learning_rate=0.0001191,seed=2')
  histories = [[{'epoch': 1, 'validation_accuracy': a, 'validation_loss': l}]
               for a, l in [(1.0, 0.001), (0.9, 0.5), (1.0, 0.002)]]
  accuracy = aggregate.epoch_curves(histories, 'validation_accuracy')
  loss = aggregate.epoch_curves(histories, 'validation_loss')
  unclipped = aggregate.describe([1.0, 0.9, 1.0])
  assert unclipped['ci_high'] > 1 and unclipped['ci_low'] < 0.9
  assert accuracy['ci_high'][0] == 1.0 and accuracy['ci_low'][0] == unclipped['ci_low']
  assert loss['ci_low'][0] == 0.0 and loss['ci_high'][0] > 0.5


def test_pruning_keeps_restored_best_weights_of_the_survivors(config):
  dataset = synthetic_dataset(num_train=64, num_test=40)
  config.num_epochs, config.data.validation_split, config.eval_batch_size = 3, 16, 8
  config.early_stopping.restore_best_weights = True
  configs = [sweep_files.with_overrides(config, {'seed': s, 'optimizer.learning_rate': lr})
             for s, lr in [(0, 3e-1), (1, 1e-2), (2, 1.0)]]
  # One trial per chunk in both runs: the same program width, so the same floats.
  pruned = vectorized.train_trials(configs, dataset, jax.devices()[:2], chunk_size=1,
                                   on_epoch=lambda epoch, *_: [1] if epoch == 1 else [])
  full = vectorized.train_trials(configs, dataset, jax.devices()[:2], chunk_size=1)
  assert pruned['pruned_epoch'] == [None, 1, None]
  for i in (0, 2):
    assert pruned['early_stopping'][i] == full['early_stopping'][i]
    jax.tree.map(np.testing.assert_array_equal,
                 jax.tree.map(lambda x, i=i: np.asarray(x)[i], pruned['state'].params),
                 jax.tree.map(lambda x, i=i: np.asarray(x)[i], full['state'].params))


@pytest.mark.parametrize('split', ['validation', None])
def test_search_plots_draw_a_best_so_far_only_by_validation(tmp_path, split):
  workdir = str(tmp_path)
  ranges = {'optimizer.learning_rate': {'kind': 'log', 'low': 1e-4, 'high': 0.1}}
  with open(os.path.join(workdir, 'sweep.json'), 'w') as f:
    json.dump({'ranges': ranges}, f)
  rows = [{'trial': str(i), 'status': 'done', 'optimizer.learning_rate': 10.0**-(i + 1),
           'test_accuracy': 0.9 + i / 100, 'test_loss': 0.3,
           **({'validation_accuracy': 0.8 + i / 100, 'validation_loss': 0.4} if split else {})}
          for i in range(3)]
  paths = search.write_search_plots(workdir, rows, ['optimizer.learning_rate'], ('seed',), split)
  names = [os.path.basename(p) for p in paths]
  if split:
    assert names == ['validation_accuracy_by_trial_vs_optimizer.learning_rate.png',
                     'validation_accuracy_best_so_far.png']
  else:  # Each trial's test accuracy is shown as a result; nothing is the best so far.
    assert names == ['test_accuracy_by_trial_vs_optimizer.learning_rate.png']
  for path in paths:
    assert_png(path)
