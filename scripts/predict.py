r"""Predicts the class of each image file with a trained run's checkpoint.

    python scripts/predict.py --workdir runs/x [--step N|best] digit.png [more.jpg ...] [--background=light]

Images may be grayscale or colour, of any size. For a run on one-channel 28x28 images (MNIST and
its kin) they are converted the way MNIST digits were made (light digit on a dark ground, 20x20
box, centred by mass in 28x28): a dark digit on a light ground is inverted automatically when the
image's border is light (--background=auto); --background=light or dark forces it. For any other
input shape they are resized to the run's H x W, in grayscale or RGB as the run's images are.
An unreadable file gets an error line and the others are still predicted; the exit status is
then 1.
"""

import json
import sys

from absl import app
from absl import flags

from mlp_mnist import cli
from mlp_mnist.tools import digit_images

_WORKDIR = flags.DEFINE_string('workdir', None, 'The --workdir of a training run.')
_STEP = flags.DEFINE_string(
    'step', None, "Checkpoint step (optimizer steps), or 'best' (the best checkpoint by the "
    'monitored metric); default: the latest.')
_BACKGROUND = flags.DEFINE_enum(
    'background', 'auto', digit_images.BACKGROUNDS,
    "The inputs' ground: 'dark' (MNIST-like), 'light' (dark ink on paper: inverted) or 'auto' "
    '(light when the border of the image is brighter than mid gray).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object per image.')


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('Give one or more image files after the flags.')
  from mlp_mnist.tools import prediction  # pylint: disable=g-import-not-at-top
  with cli.exit_on_user_error():
    results = prediction.predict_files(_WORKDIR.value, argv[1:], cli.checkpoint_step(_STEP.value),
                                       _BACKGROUND.value)
  for result in results:
    if _JSON.value:
      print(json.dumps(result))
    else:
      print(prediction.format_result(result), file=sys.stderr if 'error' in result else sys.stdout)
  if any('error' in r for r in results):
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main, flags_parser=cli.parse_flags)
