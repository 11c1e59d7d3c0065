import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mlp_mnist.tools import digit_images
from mlp_mnist.tools import prediction

from conftest import REPO, draw_digit


def _correlation(a, b):
  return np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1]


def _aligned_correlation(a, b):
  """The best correlation with `a` shifted by up to a pixel (centring rounds to whole pixels)."""
  return max(_correlation(np.roll(a, (dy, dx), (0, 1)), b) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def _photo_of(digit28: np.ndarray, scale: int = 5) -> np.ndarray:
  """A 28x28 MNIST-like digit as dark ink on a tinted page, larger, off-centre, in colour."""
  big = np.asarray(Image.fromarray(digit28).resize((28 * scale, 28 * scale),
                                                   Image.Resampling.BILINEAR), np.float32)
  page = np.zeros((28 * scale + 70, 28 * scale + 30), np.float32)
  page[50:50 + big.shape[0], 5:5 + big.shape[1]] = big
  ink = 255 - page  # Dark ink, light page.
  tint = np.float32([1.0, 0.95, 0.85])
  return np.clip(ink[..., None] * tint, 0, 255).astype(np.uint8)


def test_to_mnist_undoes_size_position_colour_and_polarity(font_run, tmp_path):
  images = font_run['dataset']['test'][0][:10]
  for i, digit in enumerate(images):
    path = tmp_path / f'{i}.png'
    Image.fromarray(_photo_of(digit), 'RGB').save(path)
    converted = digit_images.load_digit(str(path))
    assert converted.shape == (28, 28) and converted.dtype == np.uint8
    assert _aligned_correlation(converted, digit) > 0.95, i


def test_to_mnist_geometry_matches_mnist(tmp_path):
  gray = np.zeros((300, 120), np.float32)
  gray[40:260, 30:70] = 200.0  # A tall bar, off-centre in a tall image.
  digit = digit_images.to_mnist(gray, 'dark')
  rows, cols = np.nonzero(digit > 25)
  assert rows.max() - rows.min() + 1 == 20  # The longer side fills the 20-pixel box.
  assert cols.max() - cols.min() + 1 <= 5  # Aspect ratio kept: 40/220 of 20 pixels, plus blur.
  ys, xs = np.indices(digit.shape)
  mass = digit.astype(float).sum()
  assert abs((ys * digit).sum() / mass - 13.5) <= 0.75
  assert abs((xs * digit).sum() / mass - 13.5) <= 0.75
  assert digit.max() == 255 and digit[0].max() == 0


def test_background_choice():
  light_ground = np.full((60, 60), 240.0)
  light_ground[10:50, 25:35] = 10.0
  assert digit_images.has_light_background(light_ground)
  auto = digit_images.to_mnist(light_ground, 'auto')
  np.testing.assert_array_equal(auto, digit_images.to_mnist(light_ground, 'light'))
  np.testing.assert_array_equal(auto, digit_images.to_mnist(255.0 - light_ground, 'dark'))
  assert auto[14, 14] > 200 and auto[0, 0] == 0
  # Forcing 'dark' on ink on paper finds nothing lighter than the paper.
  with pytest.raises(ValueError, match='no digit found.*needs background light or auto'):
    digit_images.to_mnist(light_ground, 'dark')
  with pytest.raises(ValueError, match='no digit found'):
    digit_images.to_mnist(np.full((20, 20), 255.0), 'auto')


def test_read_grayscale_handles_modes(tmp_path):
  digit = draw_digit(4, size=(80, 80))
  reference = digit_images.to_mnist(np.asarray(digit, np.float32), 'dark')
  variants = {
      'rgb.jpg': digit.convert('RGB'),
      'palette.gif': digit.convert('P'),
      'sixteen.png': Image.fromarray(np.asarray(digit, np.uint16) * 257),
  }
  # Dark strokes on a transparent canvas, as drawing apps save them.
  strokes = np.zeros((80, 80, 4), np.uint8)
  strokes[..., 3] = np.asarray(digit)
  variants['transparent.png'] = Image.fromarray(strokes, 'RGBA')
  for name, image in variants.items():
    image.save(tmp_path / name)
    converted = digit_images.load_digit(str(tmp_path / name))
    assert _correlation(converted, reference) > 0.95, name


def _drawn_digits(tmp_path):
  """Digits as a person would give them: large dark ink on tinted paper in colour, small light
  chalk on a dark board in grayscale JPEG, strokes on a transparent canvas."""
  paths = {}
  for digit in range(10):
    path = tmp_path / f'paper_{digit}.png'
    draw_digit(digit, size=(300, 220), font_size=160, position=(90, 10), ink=(30, 30, 110),
               ground=(250, 244, 228), stroke=2, mode='RGB').save(path)
    paths[str(path)] = digit
  path = tmp_path / 'board_7.jpg'
  draw_digit(7, size=(40, 52), font_size=34, position=(10, 4), ink=230, ground=25,
             stroke=1).save(path, quality=90)
  paths[str(path)] = 7
  path = tmp_path / 'canvas_3.png'
  alpha = np.asarray(draw_digit(3, size=(128, 128), font_size=90, position=(35, 10), stroke=3))
  Image.fromarray(np.dstack([np.zeros((128, 128, 3), np.uint8), alpha]), 'RGBA').save(path)
  paths[str(path)] = 3
  return paths


def test_predict_files_reads_drawn_digits_and_reports_bad_files(font_run, tmp_path):
  expected = _drawn_digits(tmp_path)
  (tmp_path / 'notes.png').write_text('this is not an image')
  good = tmp_path / 'paper_1.png'
  (tmp_path / 'truncated.png').write_bytes(good.read_bytes()[:200])
  bad = [str(tmp_path / 'notes.png'), str(tmp_path / 'missing.png'),
         str(tmp_path / 'truncated.png'), str(tmp_path)]
  paths = bad[:2] + list(expected) + bad[2:]
  results = prediction.predict_files(font_run['workdir'], paths, devices=font_run['devices'])
  assert [r['path'] for r in results] == paths
  for result in results:
    if result['path'] in bad:
      assert result['error'].startswith(f"{result['path']}: not a readable image ("), result
      continue
    assert result['label'] == expected[result['path']], result
    digits, probabilities = zip(*result['top'])
    assert len(set(digits)) == 3 and digits[0] == result['label']
    assert list(probabilities) == sorted(probabilities, reverse=True)
    assert sum(probabilities) <= 1.0 + 1e-6 and probabilities[0] > 0.5
  assert prediction.format_result(results[0]).startswith('error: ')
  assert prediction.format_result(results[2]).startswith(f'{paths[2]}: 0  (0: ')


def test_predict_script_exit_status_and_json(font_run, tmp_path):
  expected = _drawn_digits(tmp_path)
  good = [p for p in expected if 'paper_2' in p or 'board_7' in p]
  (tmp_path / 'bad.png').write_text('not an image')
  command = [sys.executable, os.path.join(REPO, 'scripts', 'predict.py'),
             f'--workdir={font_run["workdir"]}', good[0], str(tmp_path / 'bad.png'), good[1]]
  result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
  assert result.returncode == 1
  lines = result.stdout.splitlines()
  assert [line.split(':')[0] for line in lines] == good
  assert [int(line.split(':')[1].split()[0]) for line in lines] == [expected[p] for p in good]
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'error: {tmp_path / "bad.png"}: not a readable image')

  result = subprocess.run(command[:-2] + ['--json'], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout)['label'] == expected[good[0]]
