r"""Kills a small 3-epoch run with SIGKILL at random moments, resumes it each time, and checks that
it ends bit for bit where an uninterrupted run ends (benchmarks/soak.py, docs/reliability.md).

    python scripts/soak.py [--kills 20] [--seed 0] [--root /tmp/soak] [--json soak.json]
    python scripts/soak.py --sweep [--kills 20]   # a sweep of two program groups of two trials,
                                                  # each resumed from its own checkpoints
    python scripts/soak.py --sweep --every_steps 300  # its trials also save inside epochs
"""

import os
import sys

# The soak lives beside the package, in the checkout, not in what is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import soak  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == '__main__':
  sys.exit(soak.main())
