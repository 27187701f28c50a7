"""``python -m experiments.study run|collect|commands``: see :mod:`experiments.study.runner`."""

import sys

from experiments.study.runner import main

sys.exit(main())
