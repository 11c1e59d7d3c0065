"""Sweep analysis: replicate statistics against numpy, the leaderboards, the report, and compare."""

import csv
import json
import math
import os
import re

import numpy as np
import pytest

from mlp_mnist.records import locks
from mlp_mnist.records import run_files
from mlp_mnist.sweeps import aggregate
from mlp_mnist.sweeps import results
from mlp_mnist.sweeps import runner
from mlp_mnist.sweeps import sweep_files

import default
from conftest import assert_png

# Student t 0.975 quantiles (published tables, e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2).
T_975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 5: 2.570581836,
         9: 2.262157163, 10: 2.228138852, 29: 2.045229642, 30: 2.042272456, 100: 1.983971519}


@pytest.mark.parametrize('df', sorted(T_975))
def test_t_quantile_matches_tables(df):
  assert aggregate.t_quantile(0.975, df) == pytest.approx(T_975[df], rel=1e-8)
  assert aggregate.t_quantile(0.025, df) == pytest.approx(-T_975[df], rel=1e-8)


def test_t_quantile_matches_scipy_where_installed():
  stats = pytest.importorskip('scipy.stats')
  for df in (1, 2, 3, 6.5, 17, 250, 5000):
    for p in (0.55, 0.8, 0.95, 0.975, 0.995, 0.9999):
      assert aggregate.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_describe_one_value_has_no_interval():
  one = aggregate.describe([0.97])
  assert one['n'] == 1 and one['mean'] == 0.97
  assert math.isnan(one['std']) and math.isnan(one['ci_low']) and math.isnan(one['ci_high'])
  none = aggregate.describe([])
  assert none['n'] == 0 and math.isnan(none['mean'])


# learning rate -> per seed: (status, validation accuracy, test accuracy); None: no metrics.
# Ranked by validation: 0.01 > 0.003 (overlapping) > 0.001 (apart) > 0.1 (one replicate). By test,
# 0.003 would win: the tables must not choose by it.
TRIALS = {
    0.01: [('done', 0.970, 0.960), ('done', 0.972, 0.961), ('done', 0.974, 0.962)],
    0.003: [('done', 0.966, 0.980), ('done', 0.969, 0.981), ('done', 0.966, 0.982)],
    0.001: [('done', 0.950, 0.950), ('done', 0.952, 0.951), ('stopped', 0.951, 0.952)],
    0.1: [('done', 0.900, 0.900), ('failed', None, None), ('diverged', 0.5, 0.5)],
}
SWEEP = '''
def get_sweep(hyper):
  return hyper.product([
      hyper.sweep('optimizer.learning_rate', [0.01, 0.003, 0.001, 0.1]),
      hyper.sweep('seed', [0, 1, 2]),
  ])
'''


def _loss(accuracy):
  return round(1 - accuracy, 6)


def _records(validation, test, num_epochs=2):
  records = []
  for epoch in range(1, num_epochs + 1):
    late = epoch / num_epochs
    record = {'epoch': epoch, 'step': 10 * epoch, 'train_loss': 0.5 / epoch,
              'train_accuracy': 0.9 + 0.01 * epoch, 'test_loss': _loss(test * late),
              'test_accuracy': test * late, 'examples_per_sec': 1000.0, 'elapsed_sec': 1.0 * epoch,
              'grad_norm': 1.0, 'param_norm': 10.0, 'learning_rate': 0.01}
    if validation is not None:
      record.update(validation_loss=_loss(validation * late), validation_accuracy=validation * late)
    records.append(record)
  return records


def write_sweep_folders(root, with_validation=True, num_epochs=2):
  """The trial folders a sweep of TRIALS leaves behind, written by hand."""
  sweep_path = os.path.join(root, 'lr.py')
  with open(sweep_path, 'w') as f:
    f.write(SWEEP)
  config = default.get_config()
  config.num_epochs = num_epochs
  workdir = os.path.join(root, 'run')
  trials = sweep_files.sweep_trials(config, sweep_path)
  for trial in trials:
    # As if each learning rate had been its own program: its trials share their timings.
    k = list(TRIALS).index(trial.config.optimizer.learning_rate)
    timings = {'compile_sec': 1.0 + k, 'train_sec': 6.0, 'eval_sec': 1.0, 'total_sec': 10.0}
    status, validation, test = TRIALS[trial.config.optimizer.learning_rate][trial.config.seed]
    directory = results.trial_dir(workdir, trial.name)
    run_files.write_config(directory, trial.config)
    if validation is not None:
      records = _records(validation if with_validation else None, test, num_epochs)
      if status == 'diverged':
        records = records[:1]
      run_files.write_metrics(directory, records)
      if status != 'diverged':
        run_files.write_summary(directory, {**records[-1], 'timings': timings})
    results.write_status(directory, status, 'RuntimeError: simulated' if status == 'failed' else '')
  return config, sweep_path, workdir, trials


def _t_interval(values):
  values = np.asarray(values)
  half = T_975[len(values) - 1] * values.std(ddof=1) / np.sqrt(len(values))
  return values.mean() - half, values.mean() + half


def test_settings_match_numpy_and_skip_diverged_and_failed(tmp_path):
  _, _, workdir, trials = write_sweep_folders(str(tmp_path))
  keys = ['optimizer.learning_rate', 'seed']
  rows = results.result_rows(workdir, trials, keys)
  assert aggregate.ranking_split(rows) == 'validation'
  entries = aggregate.settings(rows, keys, ('seed',))
  assert [e['optimizer.learning_rate'] for e in entries] == [0.01, 0.003, 0.001, 0.1]
  assert [e['rank'] for e in entries] == [1, 2, 3, 4]
  for entry in entries:
    valid = [t for t in TRIALS[entry['optimizer.learning_rate']] if t[0] in ('done', 'stopped')]
    for column, split in ((1, 'validation'), (2, 'test')):
      values = np.array([t[column] for t in valid])
      assert entry['n'] == len(values)
      assert entry[f'{split}_accuracy_mean'] == pytest.approx(values.mean(), abs=1e-12)
      assert entry[f'{split}_loss_mean'] == pytest.approx(np.mean(1 - values), abs=1e-6)
      if len(values) > 1:
        low, high = _t_interval(values)
        assert entry[f'{split}_accuracy_std'] == pytest.approx(values.std(ddof=1), rel=1e-9)
        assert entry[f'{split}_accuracy_ci_low'] == pytest.approx(low, rel=1e-9)
        assert entry[f'{split}_accuracy_ci_high'] == pytest.approx(high, rel=1e-9)
  lone = entries[3]
  assert lone['n'] == 1 and lone['statuses'] == {'done': 1, 'failed': 1, 'diverged': 1}
  # One replicate: no interval (not a zero-width one), and no overlap verdict.
  assert math.isnan(lone['validation_accuracy_std'])
  assert math.isnan(lone['validation_accuracy_ci_low'])
  assert [aggregate.overlap_mark(e) for e in entries] == ['best', '*', '', '?']
  assert entries[1]['delta_vs_best'] == pytest.approx(0.967 - 0.972)
  assert entries[2]['statuses'] == {'done': 2, 'stopped': 1}
  assert entries[2]['replicates'] == [(0,), (1,), (2,)]


def test_without_validation_split_nothing_ranks(tmp_path):
  _, _, workdir, trials = write_sweep_folders(str(tmp_path), with_validation=False)
  keys = ['optimizer.learning_rate', 'seed']
  rows = results.result_rows(workdir, trials, keys)
  assert aggregate.ranking_split(rows) is None  # Never 'test': nothing chooses on the test set.
  assert aggregate.ranked_rows(rows) == rows  # Sweep order (by test, 0.003 would come first).
  entries = aggregate.settings(rows, keys)
  assert [e['optimizer.learning_rate'] for e in entries] == [0.01, 0.003, 0.001, 0.1]
  assert [(e['rank'], e['overlaps_best']) for e in entries] == [(None, None)] * 4
  assert all(math.isnan(e['delta_vs_best']) for e in entries)
  assert 'validation_accuracy_mean' not in entries[0]
  assert entries[1]['test_accuracy_mean'] == pytest.approx(0.981)  # Shown, as a result only.


@pytest.fixture(scope='module')
def unranked(tmp_path_factory):
  """write_results over hand-made folders whose trials hold out no validation split."""
  root = str(tmp_path_factory.mktemp('sweep_order'))
  config, sweep_path, workdir, trials = write_sweep_folders(root, with_validation=False)
  lines = []
  rows = runner.write_results(workdir, trials, ['optimizer.learning_rate', 'seed'], ('seed',),
                              lines.append, sweep_path=sweep_path, config=config,
                              reference_config=default.get_config())
  return {'workdir': workdir, 'rows': rows, 'log': '\n'.join(lines), 'trials': trials}


def _without_not_ranked(text):
  return text.replace(aggregate.NOT_RANKED, '')


def test_without_validation_split_tables_keep_sweep_order_and_name_no_best(unranked):
  workdir, names = unranked['workdir'], [t.name for t in unranked['trials']]
  assert [r['trial'] for r in _read_csv(os.path.join(workdir, 'results.csv'))] == names
  settings = _read_csv(os.path.join(workdir, 'summary.csv'))
  assert [r['setting'] for r in settings] == [f'learning_rate={lr}' for lr in TRIALS]
  assert not {'rank', 'delta_vs_best', 'overlaps_best'} & set(settings[0])
  assert float(settings[1]['test_accuracy_mean']) == pytest.approx(0.981)
  log = unranked['log']
  assert log.count(aggregate.NOT_RANKED) == 2  # Both leaderboards say it, once each.
  assert '4 settings in sweep order, final test accuracy as a result only (mean over seed)' in log
  assert 'best' not in log and 'rank' not in _without_not_ranked(log)
  listed = [line.split()[-1] for line in log.splitlines() if line.rstrip().endswith(
      tuple(f'seed={s}' for s in range(3)))]
  assert listed == [n for n in names if 'learning_rate=0.1,' not in n or n.endswith('seed=0')]
  assert not os.path.exists(os.path.join(workdir, 'plots', 'curves_best.png'))
  assert_png(os.path.join(workdir, 'plots', 'test_accuracy_vs_optimizer.learning_rate.png'))


def test_without_validation_split_the_report_says_not_ranked(unranked):
  for name in ('report.md', 'report.html'):
    with open(os.path.join(unranked['workdir'], name)) as f:
      text = f.read()
    assert aggregate.NOT_RANKED in text
    assert 'best' not in text and 'rank' not in _without_not_ranked(text)
  with open(os.path.join(unranked['workdir'], 'report.md')) as f:
    text = f.read()
  assert '## Settings (sweep order)' in text
  trials = [line.split(' | ')[0].lstrip('| ') for line in text.splitlines()
            if line.startswith('| learning_rate=')]
  assert trials == [t.name for t in unranked['trials']]  # The trials table: sweep order.
  assert '| learning_rate=0.003,seed=1 | done | 98.10% | 2 |  |' in text


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  """write_results over the hand-made folders, as run_sweep calls it at the end."""
  root = str(tmp_path_factory.mktemp('analysis'))
  config, sweep_path, workdir, trials = write_sweep_folders(root)
  config.optimizer.learning_rate = 0.002
  lines = []
  rows = runner.write_results(workdir, trials, ['optimizer.learning_rate', 'seed'], ('seed',),
                              lines.append, sweep_path=sweep_path, config=config,
                              reference_config=default.get_config())
  return {'workdir': workdir, 'rows': rows, 'log': '\n'.join(lines), 'trials': trials,
          'sweep_path': sweep_path, 'config': config}


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_results_are_ordered_by_validation_with_test_beside(written):
  rows = _read_csv(os.path.join(written['workdir'], 'results.csv'))
  validation = [float(r['validation_accuracy']) for r in rows if r['status'] in ('done', 'stopped')]
  assert validation == sorted(validation, reverse=True)
  assert float(rows[0]['validation_accuracy']) == pytest.approx(0.974)
  assert float(rows[0]['test_accuracy']) == pytest.approx(0.962)
  # Trials without results last; the returned rows keep the trial order.
  assert [r['status'] for r in rows[-2:]] == ['failed', 'diverged']
  assert [r['trial'] for r in written['rows']] == [t.name for t in written['trials']]
  leader = next(line for line in written['log'].splitlines() if line.strip().startswith('1  '))
  assert '97.40%' in leader and '96.20%' in leader and 'learning_rate=0.01,seed=2' in leader


def test_summary_tables_hold_the_statistics(written):
  rows = _read_csv(os.path.join(written['workdir'], 'summary.csv'))
  with open(os.path.join(written['workdir'], 'summary.jsonl')) as f:
    json_rows = [json.loads(line) for line in f]
  assert [r['setting'] for r in rows] == [f'learning_rate={lr}' for lr in (0.01, 0.003, 0.001, 0.1)]
  low, high = _t_interval([0.970, 0.972, 0.974])
  assert float(rows[0]['validation_accuracy_ci_low']) == pytest.approx(low, rel=1e-12)
  assert json_rows[0]['validation_accuracy_ci_high'] == pytest.approx(high, rel=1e-12)
  assert json_rows[0]['test_accuracy_mean'] == pytest.approx(0.961)
  assert [r['overlaps_best'] for r in json_rows] == [True, True, False, None]
  # Undefined statistics: empty in the CSV, null in JSON; the statuses counted.
  assert rows[3]['validation_accuracy_std'] == ''
  assert json_rows[3]['validation_accuracy_std'] is None
  assert rows[3]['n'] == '1' and json_rows[3]['statuses'] == {'done': 1, 'failed': 1, 'diverged': 1}
  assert rows[3]['statuses'] == '1 diverged, 1 done, 1 failed'
  assert json_rows[0]['trials'] == [f'learning_rate=0.01,seed={s}' for s in range(3)]


def test_settings_leaderboard_is_printed(written):
  log = written['log']
  assert '4 settings ranked by final validation accuracy (mean over seed)' in log
  best = next(line for line in log.splitlines() if line.rstrip().endswith('learning_rate=0.01'))
  half = _t_interval([0.970, 0.972, 0.974])[1] - 0.972
  assert re.search(rf'^\s*1\s+97\.20%\s+{100 * half:.2f}%\s+0\.20%\s+3\s', best)
  assert 'best' in best
  lone = next(line for line in log.splitlines() if line.rstrip().endswith('learning_rate=0.1'))
  assert re.search(r'^\s*4\s+90\.00%\s+-\s+-\s+1\s', lone)
  assert '1 diverged, 1 done, 1 failed' in lone and ' ? ' in lone
  second = next(line for line in log.splitlines() if line.rstrip().endswith('learning_rate=0.003'))
  assert '-0.50 pp' in second and ' * ' in second


def test_report_holds_the_tables_and_embedded_plots(written):
  workdir = written['workdir']
  with open(os.path.join(workdir, 'report.md')) as f:
    text = f.read()
  half = _t_interval([0.970, 0.972, 0.974])[1] - 0.972
  assert f'| 1 | 97.20% | {100 * half:.2f}% | 0.20% | 3 |' in text
  assert '| 4 | 90.00% | - | - | 1 |' in text
  assert '| optimizer.learning_rate | 0.001 | 0.002 |' in text  # Base config vs default.
  assert "hyper.sweep('seed', [0, 1, 2])" in text  # The sweep file.
  # 4 program runs (diverged and failed trials have no summary.json) of 10 trials.
  assert '| 4 | 10 | 10.0 | 24.0 | 4.0 | 40.0 | 0.250 |' in text
  assert '| learning_rate=0.1,seed=1 | failed | - | - | - | RuntimeError: simulated |' in text
  images = re.findall(r'!\[[^]]*\]\(([^)]+)\)', text)
  assert 'plots/validation_accuracy_vs_optimizer.learning_rate.png' in images
  assert 'plots/curves_best.png' in images
  for image in images:
    assert_png(os.path.join(workdir, image))
  with open(os.path.join(workdir, 'report.html')) as f:
    page = f.read()
  assert page.count('src="data:image/png;base64,') == len(images)
  assert '<td>97.20%</td>' in page and 'src="plots/' not in page


def test_report_only_on_a_partial_sweep(written, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  shutil.copytree(written['workdir'], workdir)
  for name in ('learning_rate=0.003,seed=0', 'learning_rate=0.003,seed=1'):
    shutil.rmtree(results.trial_dir(workdir, name))
  running = results.trial_dir(workdir, 'learning_rate=0.003,seed=2')
  results.write_status(running, 'running')
  lines = []
  with locks.Lock(running):  # Held by a live process (this one): shown running.
    runner.run_sweep(written['config'], written['sweep_path'], workdir, report_only=True,
                     log=lines.append)
  with open(os.path.join(workdir, 'report.md')) as f:
    text = f.read()
  assert 'Partial sweep' in text and '2 pending' in text and '1 running' in text
  entries = [json.loads(line) for line in open(os.path.join(workdir, 'summary.jsonl'))]
  partial = next(e for e in entries if e['setting'] == 'learning_rate=0.003')
  assert partial['n'] == 0 and partial['rank'] is None
  assert partial['statuses'] == {'pending': 2, 'running': 1}


def test_heatmap_for_two_keys(tmp_path):
  rows, entries = [], []
  for width in (8, 16):
    for lr in (0.1, 0.01):
      for seed in (0, 1):
        rows.append({'trial': f'{width},{lr},{seed}', 'status': 'done', 'model.hidden_sizes':
                     (width,), 'optimizer.learning_rate': lr, 'seed': seed,
                     'test_accuracy': 0.9 + width / 1000 + lr + seed / 100, 'test_loss': 0.3})
  keys = ['model.hidden_sizes', 'optimizer.learning_rate', 'seed']
  entries = aggregate.settings(rows, keys)
  paths = results.write_plots(str(tmp_path), rows, entries, keys, ('seed',), 'test')
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ['test_accuracy_heatmap.png',
                   'test_accuracy_vs_model.hidden_sizes.png',
                   'test_accuracy_vs_optimizer.learning_rate.png']
  for path in paths:  # No metrics.jsonl here: no curves.
    assert_png(path)


def test_replicate_keys_from_the_sweep_file(tmp_path, config):
  path = tmp_path / 's.py'
  path.write_text(SWEEP)
  assert sweep_files.replicate_keys(config, str(path)) == ('seed',)
  path.write_text(SWEEP + "REPLICATE_KEYS = ('seed', 'model.dropout_rate')\n")
  assert sweep_files.replicate_keys(config, str(path)) == ('seed', 'model.dropout_rate')
  path.write_text(SWEEP + 'REPLICATE_KEYS = ()\n')
  assert sweep_files.replicate_keys(config, str(path)) == ()
  path.write_text(SWEEP + "REPLICATE_KEYS = ('sed',)\n")
  with pytest.raises(sweep_files.SweepError, match=r"REPLICATE_KEYS names unknown config key "
                     r"'sed' \(did you mean 'seed'\?\)"):
    sweep_files.replicate_keys(config, str(path))
  path.write_text(SWEEP + "REPLICATE_KEYS = 'seed'\n")
  with pytest.raises(sweep_files.SweepError, match='REPLICATE_KEYS must be a tuple'):
    sweep_files.replicate_keys(config, str(path))


def test_other_replicate_keys_aggregate_over_them():
  rows = [{'trial': str(i), 'status': 'done', 'seed': i % 2, 'model.dropout_rate': i // 2 / 10,
           'test_accuracy': 0.9 + i / 100, 'test_loss': 0.1} for i in range(4)]
  keys = ['seed', 'model.dropout_rate']
  (entry,) = aggregate.settings(rows, keys, ('seed', 'model.dropout_rate'))
  assert entry['setting'] == 'all trials' and entry['n'] == 4
  assert entry['test_accuracy_mean'] == pytest.approx(0.915)
  assert len(aggregate.settings(rows, keys, ('seed',))) == 2
  assert len(aggregate.settings(rows, keys, ())) == 4


def test_unknown_statuses_are_counted_not_averaged():
  rows = [{'trial': 'a', 'status': 'done', 'seed': 0, 'test_accuracy': 0.9, 'test_loss': 0.1},
          {'trial': 'b', 'status': 'exploded', 'seed': 1, 'test_accuracy': 0.1, 'test_loss': 9.0}]
  (entry,) = aggregate.settings(rows, ['seed'])
  assert entry['n'] == 1 and entry['test_accuracy_mean'] == 0.9
  assert entry['statuses'] == {'done': 1, 'exploded': 1}
  board = results.leaderboard(rows)  # No validation metrics: listed, not ranked.
  assert aggregate.NOT_RANKED in board and 'rank' not in _without_not_ranked(board)
  assert 'exploded' in board and '90.00%' in board


def test_compare_tables_config_differences_and_draws_curves(written, tmp_path):
  from mlp_mnist.records import workdirs  # pylint: disable=g-import-not-at-top
  from mlp_mnist.tools import compare  # pylint: disable=g-import-not-at-top
  single = str(tmp_path / 'runs' / 'single')
  config = default.get_config()
  config.model.hidden_sizes = (256, 256)
  run_files.write_config(single, config)
  run_files.write_metrics(single, _records(None, 0.95, 3))
  trials = [results.trial_dir(written['workdir'], f'learning_rate={lr},seed=0')
            for lr in (0.01, 0.001)]
  output = str(tmp_path / 'compare.png')
  text = compare.compare([single, *trials], output)
  lines = text.splitlines()
  table = lines[lines.index(next(l for l in lines if l.startswith('config key'))):]
  assert table[0].split() == ['config', 'key', 'single', 'learning_rate=0.01,seed=0',
                              'learning_rate=0.001,seed=0']
  assert [line.split() for line in table[2:table.index('')]] == [
      ['model.hidden_sizes', '(256,256)', '(128,)', '(128,)'],
      ['num_epochs', '5', '2', '2'],
      ['optimizer.learning_rate', '0.001', '0.01', '0.001'],
  ]
  final = table[table.index('') + 1:]
  assert final[2].split() == ['final', 'epoch', '3', '2', '2']
  assert final[3].split() == ['train_accuracy', '93.00%', '92.00%', '92.00%']
  assert final[5].split() == ['test_accuracy', '95.00%', '96.00%', '95.00%']
  assert_png(output, min_size=(600, 300))
  assert compare.config_table([{'a': 1, 'b': (1, 2)}, {'a': 1, 'b': (1, 2), 'c': 0}]) == [
      ['c', '(absent)', '0']]
  assert compare.labels(['x/a/run', 'y/b/run', 'z/c']) == ['a/run', 'b/run', 'z/c']
  with pytest.raises(workdirs.WorkdirError, match=r'has no config.json; it is a sweep workdir: '
                     r'pass its trial folders'):
    compare.compare([written['workdir'], single], output)
  with pytest.raises(workdirs.WorkdirError, match='is not a folder'):
    compare.compare([str(tmp_path / 'nothing'), single], output)


def test_progress_line_names_the_best_by_validation(config):
  lines = []
  progress = runner.Progress(2, 0, 1, lines.append)
  progress.start_group(sweep_files.expand(config, [{'seed': 0}, {'seed': 1}]))
  record = lambda validation, test: {'validation_accuracy': validation, 'validation_loss': 0.1,
                                     'test_accuracy': test, 'test_loss': 0.1}
  progress.epoch(1, {0: record(0.90, 0.99), 1: record(0.95, 0.50)}, [False, False])
  assert 'best validation accuracy 95.00% (test 50.00%, seed=1)' in lines[-1]
  progress.epoch(2, {0: {'test_accuracy': 0.9}, 1: {'test_accuracy': 0.8}}, [False, False])
  assert lines[-1].endswith(f'0 diverged; {aggregate.NOT_RANKED}')  # No best by test.
  assert 'best' not in lines[-1]
