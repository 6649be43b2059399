"""``python -m ddpm_core``: the ``ddpm`` command."""

import sys

from ddpm_core.cli import main

sys.exit(main())
