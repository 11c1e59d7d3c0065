import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mlp_mnist.records import workdirs
from mlp_mnist.tools import evaluation

from conftest import REPO, assert_png

STEPS_PER_EPOCH = 13  # 400 examples in batches of 32.


@pytest.mark.parametrize('epoch', [1, 6])
def test_evaluate_reports_what_training_reported(font_run, epoch, tmp_path):
  report = evaluation.evaluate_run(font_run['workdir'], epoch * STEPS_PER_EPOCH,
                                   devices=font_run['devices'], dataset=font_run['dataset'],
                                   plots_dir=str(tmp_path))
  trained = font_run['result']['history'][epoch - 1]
  assert (report['step'], report['epoch']) == (trained['step'], epoch)
  assert report['test_loss'] == trained['test_loss']
  assert report['test_accuracy'] == trained['test_accuracy']
  assert report['training_reported']['test_loss'] == trained['test_loss']

  labels = font_run['dataset']['test'][1]
  matrix = np.asarray(report['confusion_matrix'])
  assert matrix.sum() == len(labels)
  np.testing.assert_array_equal(matrix.sum(1), np.bincount(labels, minlength=10))
  assert np.trace(matrix) / len(labels) == pytest.approx(report['test_accuracy'], abs=1e-6)
  np.testing.assert_allclose(report['per_class_accuracy'], np.diag(matrix) / matrix.sum(1))
  assert_png(tmp_path / 'confusion_matrix.png', min_size=(500, 400))
  assert_png(tmp_path / 'misclassified.png', min_size=(150, 100), min_bytes=2_000)
  if epoch == 1:
    assert report['test_accuracy'] < 1.0  # Some mistakes to show.


def test_predictions_agree_with_the_evaluated_accuracy(font_run):
  config, state, step, run = evaluation.load_run(font_run['workdir'], devices=font_run['devices'])
  assert step == 6 * STEPS_PER_EPOCH
  assert (run['dataset']['image_shape'], run['dataset']['num_classes']) == ((28, 28), 10)
  images, labels = font_run['dataset']['test']
  probabilities = evaluation.predict_probabilities(config, state.params, images, 10)
  assert probabilities.shape == (len(labels), 10)
  np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
  accuracy = np.mean(probabilities.argmax(1) == labels)
  assert accuracy == pytest.approx(font_run['result']['history'][-1]['test_accuracy'], abs=1e-6)


def test_confusion_matrix_and_most_confident_mistakes_exactly():
  labels = np.array([0, 1, 2, 2, 1])
  probabilities = np.array([
      [0.9, 0.1, 0.0],  # right
      [0.7, 0.3, 0.0],  # 1 taken for 0 at 0.7
      [0.0, 0.05, 0.95],  # right
      [0.0, 0.99, 0.01],  # 2 taken for 1 at 0.99
      [0.6, 0.4, 0.0],  # 1 taken for 0 at 0.6
  ])
  np.testing.assert_array_equal(
      evaluation.confusion_matrix(labels, probabilities.argmax(1), 3),
      [[1, 0, 0], [2, 0, 0], [0, 1, 1]])
  np.testing.assert_array_equal(evaluation.most_confident_mistakes(labels, probabilities, 2),
                                [3, 1])
  assert len(evaluation.most_confident_mistakes(labels, probabilities, 10)) == 3


def test_evaluate_script_json_and_plots(font_run):
  step = 2 * STEPS_PER_EPOCH
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'evaluate.py'),
       f'--workdir={font_run["workdir"]}', f'--step={step}', '--json'],
      capture_output=True, text=True, timeout=120, cwd=REPO)
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  trained = font_run['result']['history'][1]
  # The script evaluates on its own devices (one CPU here, two in training): the count of correct
  # answers is exact, the loss equal up to summation order.
  assert report['test_accuracy'] == trained['test_accuracy']
  assert report['test_loss'] == pytest.approx(trained['test_loss'], rel=1e-5)
  assert len(report['per_class_accuracy']) == 10
  for path in report['plots'].values():
    assert path.startswith(os.path.join(font_run['workdir'], 'plots'))
    assert_png(path, min_size=(150, 100), min_bytes=2_000)


def test_evaluate_errors_name_what_to_do(font_run, tmp_path):
  with pytest.raises(workdirs.WorkdirError, match='has no config.json; is it the --workdir'):
    evaluation.evaluate_run(str(tmp_path))
  result = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'evaluate.py'),
                           f'--workdir={font_run["workdir"]}', '--step=5'],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
  assert result.returncode == 2
  assert result.stderr.startswith(
      f'error: {font_run["workdir"]} has no checkpoint at step 5; it has steps 13, 26,'), result.stderr
  assert 'Traceback' not in result.stderr
