"""``python -m experiments.bench.suite``: runs the accelerator suite (see :mod:`experiments.bench.suite.runner`)."""

import sys

from experiments.bench.suite.runner import main

sys.exit(main())
