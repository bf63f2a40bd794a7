"""``python -m deqkit.cli``: the ``deqkit`` command line (as under ``torchrun``)."""

import sys

from . import main

sys.exit(main())
