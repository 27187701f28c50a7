"""``python -m experiments.input_pipeline make-sample|prepare``."""

import sys

from experiments.input_pipeline.datasets import main

sys.exit(main())
