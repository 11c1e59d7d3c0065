"""Any image of a handwritten digit, converted the way MNIST digits were made.

MNIST digits are light on a dark ground, scaled so the digit's bounding box fits in 20x20 pixels
(aspect ratio kept) and placed in a 28x28 image so their centre of mass is at the centre. Inputs may
be grayscale or colour (with or without transparency) of any size. A dark digit on a light ground
(ink on paper) is inverted: with `background='auto'` when the image's border is brighter than mid
gray, always with `'light'`, never with `'dark'`.
"""

import numpy as np

BACKGROUNDS = ('auto', 'dark', 'light')
MNIST_FRAME = (28, 28)  # The conversion's frame: MNIST's recipe, used for runs of this shape.
DIGIT_BOX = 20
INK_THRESHOLD = 0.1  # Pixels above this fraction of the brightest count as the digit.


class ImageError(ValueError):
  """A file is not a readable image, or holds no digit."""


def read_grayscale(path: str) -> np.ndarray:
  """The image at `path` as float32 [H, W] in [0, 255]; transparency becomes a plain ground."""
  from PIL import Image, ImageOps, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)  # Phone photos store their rotation in EXIF.
      if image.mode.startswith('I;16'):
        return np.asarray(image, np.float32) / 257.0
      if image.mode in ('I', 'F'):
        values = np.asarray(image, np.float32)
        return (values - values.min()) * (255.0 / max(float(np.ptp(values)), 1e-6))
      if image.mode in ('LA', 'PA', 'RGBA', 'La', 'RGBa') or 'transparency' in image.info:
        rgba = np.asarray(image.convert('RGBA'), np.float32)
        gray = rgba[..., :3] @ np.float32([0.299, 0.587, 0.114])
        alpha = rgba[..., 3] / 255.0
        # Drawn strokes on a transparent canvas: put them on the ground they contrast with.
        ink = np.sum(gray * alpha) / max(np.sum(alpha), 1e-6)
        ground = 255.0 if ink < 128 else 0.0
        return gray * alpha + ground * (1 - alpha)
      return np.asarray(image.convert('L'), np.float32)
  except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
    raise ImageError(f'{path}: not a readable image ({type(e).__name__}: {e})') from None


def has_light_background(gray: np.ndarray) -> bool:
  """Whether the border of the image is mostly light, as for a dark digit on paper."""
  border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
  return float(np.median(border)) > 127.5


def to_mnist(gray: np.ndarray, background: str = 'auto') -> np.ndarray:
  """An MNIST-like uint8 [28, 28] image (light digit, dark ground) from a float [H, W] image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if background not in BACKGROUNDS:
    raise ValueError(f'background must be one of {BACKGROUNDS}, not {background!r}')
  gray = np.asarray(gray, np.float32)
  if background == 'light' or (background == 'auto' and has_light_background(gray)):
    gray = 255.0 - gray
  border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
  ink = np.clip(gray - np.median(border), 0, None)  # A gray ground (photo, scan) becomes black.
  if ink.max() <= 0:
    hint = ' (a dark digit on a light ground needs background light or auto)' * (
        background == 'dark')
    raise ValueError(f'no digit found: nothing is lighter than the ground{hint}')
  ink *= 255.0 / ink.max()
  rows, cols = np.nonzero(ink > INK_THRESHOLD * 255)
  ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
  height, width = ink.shape
  scale = DIGIT_BOX / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  digit = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS), np.float32)
  digit = np.clip(digit, 0, 255)
  return _centre_by_mass(digit)


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
  height, width = MNIST_FRAME
  total = digit.sum()
  ys, xs = np.indices(digit.shape)
  centre_y, centre_x = (ys * digit).sum() / total, (xs * digit).sum() / total
  top = int(round(height / 2 - 0.5 - centre_y))
  left = int(round(width / 2 - 0.5 - centre_x))
  # Keep the whole digit inside the frame even when its mass is far off-centre.
  top = min(max(top, 0), height - digit.shape[0])
  left = min(max(left, 0), width - digit.shape[1])
  out = np.zeros((height, width), np.float32)
  out[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
  return np.round(out).astype(np.uint8)


def load_digit(path: str, background: str = 'auto') -> np.ndarray:
  """The image file at `path` as an MNIST-like uint8 [28, 28] digit; ImageError if it cannot be."""
  gray = read_grayscale(path)
  try:
    return to_mnist(gray, background)
  except ValueError as e:
    raise ImageError(f'{path}: {e}') from None
