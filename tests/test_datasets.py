"""Datasets of any shape and class count through TFDS, the cache keyed by the source, the validation
split in single runs and sweeps, and the default recipe's numbers unchanged."""

import json
import os
import re

import jax
import numpy as np
import pytest
from PIL import Image

from mlp_mnist import data
from mlp_mnist import config_checks
from mlp_mnist import train
from mlp_mnist.data import cache
from mlp_mnist.data import tfds_source
from mlp_mnist.data import validation
from mlp_mnist.records import plots
from mlp_mnist.records import run_files
from mlp_mnist.records import workdirs
from mlp_mnist.sweeps import aggregate
from mlp_mnist.sweeps import runner
from mlp_mnist.sweeps import sweep_files
from mlp_mnist.sweeps import vectorized
from mlp_mnist.tools import evaluation
from mlp_mnist.tools import prediction

from conftest import REPO, assert_png, synthetic_dataset

COMPARED = ('train_loss', 'train_accuracy', 'validation_loss', 'validation_accuracy', 'test_loss',
            'test_accuracy', 'grad_norm')
SHAPES_CLASSES = ('a', 'b', 'c', 'd', 'e')


def _shapes_examples(count: int, seed: int):
  """32x32 colour images of 5 classes: class c is a bright square in one of 5 places and colours."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    label = int(rng.integers(0, 5))
    image = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
    top, left = 4 + 4 * label, 2 + 5 * label
    image[top:top + 8, left:left + 8, label % 3] = 255
    yield i, {'image': image, 'label': label}


@pytest.fixture(scope='module')
def shapes_tfds(tmp_path_factory):
  """A real TFDS dataset, 'tiny_shapes:1.0.0' (32x32x3, 5 classes), prepared offline."""
  tfds = tfds_source.import_tfds()

  class TinyShapes(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(32, 32, 3)),
          'label': tfds.features.ClassLabel(names=SHAPES_CLASSES)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': _shapes_examples(120, 0), 'test': _shapes_examples(40, 1)}

    def _generate_examples(self):
      raise NotImplementedError  # The split generators above yield the examples.

  data_dir = tmp_path_factory.mktemp('tfds')
  TinyShapes(data_dir=str(data_dir)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return str(data_dir)


def _shapes_config(config, data_dir, cache_dir):
  config.data.update(dict(name='tiny_shapes', version='1.0.0', data_dir=data_dir,
                          cache_dir=str(cache_dir), download=False))
  config.num_epochs = 3
  config.batch_size = 16
  config.eval_batch_size = 16
  return config


def test_a_tfds_dataset_of_another_shape_trains_alike_on_1_and_4_devices(
    config, shapes_tfds, tmp_path, capsys):
  config = _shapes_config(config, shapes_tfds, tmp_path / 'cache')
  dataset = data.load_dataset(config.data)
  assert (dataset.image_shape, dataset.num_classes) == ((32, 32, 3), 5)
  assert dataset.class_names == SHAPES_CLASSES and len(dataset.train[1]) == 120
  assert len(os.listdir(tmp_path / 'cache')) == 1
  runs = {n: train.train_and_evaluate(config, str(tmp_path / f'run{n}'),
                                      devices=jax.devices()[:n], log=lambda _: None)
          for n in (1, 4)}
  for got, want in zip(runs[4]['history'], runs[1]['history']):
    for key in ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'grad_norm'):
      np.testing.assert_allclose(got[key], want[key], rtol=2e-5, atol=1e-6, err_msg=key)
  assert runs[1]['history'][-1]['test_accuracy'] > 0.6
  assert runs[1]['state'].params['Dense_1']['kernel'].shape == (128, 5)

  # Evaluation and prediction take the shape and classes from the run's dataset.json.
  workdir = str(tmp_path / 'run4')
  report = evaluation.evaluate_run(workdir, devices=jax.devices()[:4], num_mistakes=6)
  assert report['test_accuracy'] == runs[4]['history'][-1]['test_accuracy']
  assert np.asarray(report['confusion_matrix']).shape == (5, 5)
  assert report['class_names'] == list(SHAPES_CLASSES)
  assert_png(report['plots']['confusion_matrix'])
  # The mistakes' grid shows colour images in colour, captioned with the class names.
  images, labels = dataset.test
  path = plots.save_misclassified(images[:4], labels[:4], (labels[:4] + 1) % 5, [0.5] * 4,
                                  str(tmp_path / 'grid.png'), class_names=SHAPES_CLASSES)
  with Image.open(path) as image:
    pixels = np.asarray(image.convert('RGB'), np.int32)
  assert np.abs(pixels[..., 0] - pixels[..., 1]).max() > 100
  _, example = next(_shapes_examples(1, 5))
  big = Image.fromarray(example['image']).resize((96, 96), Image.Resampling.NEAREST)
  big.save(tmp_path / 'example.png')
  [result] = prediction.predict_files(workdir, [str(tmp_path / 'example.png')],
                                      devices=jax.devices()[:1])
  assert result['label'] == example['label'], result
  assert result['class_name'] == SHAPES_CLASSES[example['label']]


def test_damaged_cache_is_rebuilt_with_a_one_line_warning(config, shapes_tfds, tmp_path, capsys):
  config = _shapes_config(config, shapes_tfds, tmp_path / 'cache')
  expected = data.load_dataset(config.data)
  path = cache.cache_path(config.data)
  assert os.path.exists(path)
  capsys.readouterr()
  for damage in (lambda b: b[:len(b) // 2], lambda b: b[:100] + bytes(len(b) - 100)):
    with open(path, 'rb') as f:
      content = f.read()
    with open(path, 'wb') as f:
      f.write(damage(content))
    rebuilt = data.load_dataset(config.data)
    np.testing.assert_array_equal(rebuilt.train[0], expected.train[0])
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(f'warning: the dataset cache {path} is '
                                                       'damaged ('), warning
    assert warning[0].endswith('rebuilding it.')
    assert cache.read(path) is not None  # Rewritten whole.


def test_cache_names_follow_the_source(config):
  data_config = config.data
  paths = {cache.cache_path(data_config)}
  data_config.data_dir = '/data/tfds'
  paths.add(cache.cache_path(data_config))
  paths.add(cache.cache_path(data_config, idx_identity='abc'))
  data_config.name, data_config.version = 'emnist/letters', '3.1.0'
  paths.add(cache.cache_path(data_config))
  assert len(paths) == 4
  assert os.path.basename(cache.cache_path(data_config)).startswith('emnist_letters-3.1.0-dir')
  data_config.use_cache = False
  assert cache.cache_path(data_config) is None


@pytest.mark.parametrize('name,version,shape,num_classes', [
    ('mnist', '3.0.1', (28, 28), 10), ('fashion_mnist', '3.0.1', (28, 28), 10),
    ('kmnist', '3.0.1', (28, 28), 10), ('emnist/letters', '3.1.0', (28, 28), 37),
    ('cifar10', '3.0.2', (32, 32, 3), 10), ('svhn_cropped', '3.1.0', (32, 32, 3), 10)])
def test_issue_datasets_take_shape_and_classes_from_tfds(config, tmp_path, name, version, shape,
                                                         num_classes):
  tfds = tfds_source.import_tfds()
  config.data.update(dict(name=name, version=version, data_dir=str(tmp_path)))
  image_shape, classes, names = tfds_source.features(tfds_source.builder(tfds, config.data))
  assert (image_shape, classes, len(names)) == (shape, num_classes, num_classes)


def test_cifar10_under_tfds_mock_data(config, tmp_path, monkeypatch):
  tfds = tfds_source.import_tfds()
  monkeypatch.setattr(tfds_source, 'check_reachable', lambda *args: None)
  config.data.update(dict(name='cifar10', version='3.0.2', data_dir=str(tmp_path / 'tfds'),
                          use_cache=False))
  with tfds.testing.mock_data(num_examples=24):
    dataset = data.load_dataset(config.data)
  assert (dataset.image_shape, dataset.num_classes) == ((32, 32, 3), 10)
  assert dataset.train[0].shape == (24, 32, 32, 3) and dataset.train[0].dtype == np.uint8
  assert dataset.train[1].max() < 10 and dataset.class_names[0] == '0'


def test_unknown_dataset_or_version_says_what_to_set(config, tmp_path):
  tfds = tfds_source.import_tfds()
  config.data.update(dict(name='cifar10', data_dir=str(tmp_path)))
  with pytest.raises(data.DataError, match=r'has cifar10:3.0.2, not cifar10:3.0.1; set '
                                           r'--config.data.version=3.0.2'):
    tfds_source.builder(tfds, config.data)
  config.data.name = 'no_such_dataset'
  with pytest.raises(data.DataError, match="no dataset named 'no_such_dataset'"):
    tfds_source.builder(tfds, config.data)


# The validation split.

def test_validation_indices_are_disjoint_fixed_and_seed_independent(config):
  dataset = synthetic_dataset(num_train=200, num_test=10)
  assert validation.validation_size(0.1, 60_000) == 6_000
  assert validation.validation_size(10_000, 60_000) == 10_000
  held = {}
  for seed in (0, 1, 7):
    config.seed = seed
    split = data.hold_out_validation(dataset, config.data.validation_split or 30)
    held[seed] = split
  for split in held.values():
    np.testing.assert_array_equal(split.validation[0], held[0].validation[0])
    np.testing.assert_array_equal(split.train[1], held[0].train[1])
  indices = validation.validation_indices(200, 30)
  assert len(np.unique(indices)) == 30 and indices.min() >= 0 and indices.max() < 200
  np.testing.assert_array_equal(held[0].validation[0], dataset.train[0][indices])
  rest = np.setdiff1d(np.arange(200), indices)  # Disjoint, and the order kept.
  np.testing.assert_array_equal(held[0].train[0], dataset.train[0][rest])
  assert data.hold_out_validation(dataset, 0) is dataset
  for too_many in (200, 0.999):
    with pytest.raises(data.DataError, match='leaving none to train on'):
      data.hold_out_validation(dataset, too_many)


def test_validation_split_of_float_one_is_refused_not_one_example(config):
  """1.0 could mean all the examples or one: refused before any work; 1 holds out one."""
  config.data.validation_split = 1.0
  with pytest.raises(config_checks.ConfigError,
                     match=re.escape('config.data.validation_split=1.0 is invalid')) as raised:
    config_checks.validate_config(config)
  assert '\n' not in str(raised.value)
  with pytest.raises(data.DataError, match='neither a whole count'):
    validation.validation_size(1.0, 100)
  assert validation.validation_size(1, 100) == 1
  assert validation.validation_size(2.0, 100) == 2


def test_validation_in_the_run_and_in_a_sweep(config, tmp_path):
  dataset = synthetic_dataset(num_train=300, num_test=60)
  config.num_epochs = 1
  config.eval_batch_size = 40
  config.data.validation_split = 0.2
  lines = []
  single = train.train_and_evaluate(config, str(tmp_path / 'run'), devices=jax.devices()[:2],
                                    dataset=dataset, log=lines.append)
  records = run_files.read_metrics(str(tmp_path / 'run'))
  assert list(records[0])[:9] == ['epoch', 'step', 'train_loss', 'train_accuracy', 'grad_norm',
                                  'param_norm', 'learning_rate', 'validation_loss',
                                  'validation_accuracy']
  assert records[0]['step'] == 8  # 240 training examples in batches of 32.
  assert any('validation loss' in line for line in lines)  # The epoch line.
  assert any('240 training examples, 60 validation' in line for line in lines)
  assert lines[-1].startswith('Final validation accuracy')
  assert 'validation_sec' in single['timings']
  assert_png(str(tmp_path / 'run' / 'plots' / 'curves.png'))
  from test_run_records import read_events  # pylint: disable=g-import-not-at-top
  scalars = {(v.tag, e.step): v.simple_value for e in read_events(str(tmp_path / 'run'))
             for v in e.summary.value if v.HasField('simple_value')}
  for record in records:
    for key in ('validation_loss', 'validation_accuracy'):
      assert scalars[(key.replace('_', '/'), record['step'])] == pytest.approx(record[key])
  with open(tmp_path / 'run' / 'dataset.json') as f:
    assert json.load(f)['num_validation'] == 60

  # Trials of a sweep validate on those same examples: each equals its single run.
  other_seed = config.copy_and_resolve_references()
  other_seed.seed = 1
  result = vectorized.train_trials([config, other_seed], dataset, jax.devices()[:2])
  for got, want in zip(result['history'][0], single['history']):
    for key in COMPARED:
      np.testing.assert_allclose(got[key], want[key], rtol=2e-5, atol=1e-6, err_msg=key)
  assert result['num_train'] == 240
  assert result['history'][1][-1]['validation_loss'] != single['history'][-1]['validation_loss']


def test_progress_line_chooses_by_validation(config):
  lines = []
  progress = runner.Progress(2, 0, 1, lines.append)
  progress.start_group([sweep_files.Trial(name=n, overrides={}, config=config) for n in 'ab'])
  records = {0: {'validation_accuracy': 0.9, 'validation_loss': 0.3, 'test_accuracy': 0.95,
                 'test_loss': 0.2},
             1: {'validation_accuracy': 0.92, 'validation_loss': 0.25, 'test_accuracy': 0.91,
                 'test_loss': 0.3}}
  progress.epoch(1, records, [False, False])
  assert lines[-1].endswith('best validation accuracy 92.00% (test 91.00%, b)')
  progress.epoch(1, {i: {'test_accuracy': r['test_accuracy'], 'test_loss': r['test_loss']}
                     for i, r in records.items()},
                 [False, False])
  # Without validation metrics nothing is chosen: no trial is named best by its test accuracy.
  assert lines[-1].endswith(f'; {aggregate.NOT_RANKED}') and 'best' not in lines[-1]


def test_sweep_files_fix_one_validation_split(config):
  for name in ('lr_seed', 'activation_dropout', 'optimizers', 'width_depth'):
    trials = sweep_files.sweep_trials(config, os.path.join(REPO, 'configs', 'sweeps', f'{name}.py'))
    assert {t.config.data.validation_split for t in trials} == {10_000}, name
    assert all('validation_split' not in t.name for t in trials)
  with pytest.raises(sweep_files.SweepError, match="'data.validation_split' takes 2 values"):
    sweep_files.expand(config, [{'seed': 0, 'data.validation_split': 100},
                                {'seed': 1, 'data.validation_split': 200}])
  with pytest.raises(sweep_files.SweepError, match="'data.npz_path' cannot be swept"):
    sweep_files.expand(config, [{'data.npz_path': 'a.npz'}])


# Measured with the house branch (before datasets) on the same inputs: the default recipe's
# metrics.jsonl must not change.
HOUSE_RECORDS = [
    {'epoch': 1, 'step': 8, 'train_loss': 1.4897994995117188, 'train_accuracy': 0.7265625,
     'grad_norm': 1.8850983381271362, 'param_norm': 15.515406608581543,
     'learning_rate': 0.0010000000474974513, 'test_loss': 0.6796485781669617,
     'test_accuracy': 1.0},
    {'epoch': 2, 'step': 16, 'train_loss': 0.3751639127731323, 'train_accuracy': 1.0,
     'grad_norm': 0.5241893529891968, 'param_norm': 15.65632152557373,
     'learning_rate': 0.0010000000474974513, 'test_loss': 0.1369054764509201,
     'test_accuracy': 1.0},
]


def test_default_recipe_metrics_are_unchanged(config, tmp_path):
  config.num_epochs = 2
  config.eval_batch_size = 64
  train.train_and_evaluate(config, str(tmp_path), dataset=synthetic_dataset(), log=lambda _: None)
  records = [run_files.without_timing(r) for r in run_files.read_metrics(str(tmp_path))]
  assert [list(r) for r in records] == [list(r) for r in HOUSE_RECORDS]
  for got, want in zip(records, HOUSE_RECORDS):
    assert got == pytest.approx(want, rel=1e-6)


def test_runs_recorded_before_the_new_data_keys_still_load_and_resume(config, tmp_path):
  run_files.write_config(str(tmp_path), config)
  saved = run_files.read_config(str(tmp_path))
  del saved['data']['npz_path'], saved['data']['validation_split']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  loaded = workdirs.load_config(str(tmp_path))
  assert (loaded.data.npz_path, loaded.data.validation_split) == ('', 0.0)
  assert workdirs.config_differences(saved, config) == []
  config.data.validation_split = 100
  assert workdirs.config_differences(saved, config) == ['data.validation_split: 0.0 -> 100.0']


def test_runs_recorded_before_any_later_key_still_load_and_resume(config, tmp_path):
  config.checkpoint.keep_best = False  # What those runs did; today's default keeps the best too.
  run_files.write_config(str(tmp_path), config)
  saved = run_files.read_config(str(tmp_path))
  for key in config_checks.LATER_KEYS:  # As config.json was before each key existed.
    *sections, leaf = key.split('.')
    parent = saved
    for section in sections:
      parent = parent[section]
    del parent[leaf]
  drop_empty = lambda d: {k: drop_empty(v) for k, v in d.items() if v != {}} if isinstance(
      d, dict) else d
  saved = drop_empty(drop_empty(saved))  # Whole sections were added too (model.cnn, early_stopping).
  assert 'early_stopping' not in saved and 'cnn' not in saved['model']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  loaded = workdirs.load_config(str(tmp_path))
  assert json.loads(loaded.to_json()) == json.loads(config.to_json())
  assert workdirs.config_differences(saved, config) == []
