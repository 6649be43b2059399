import sys

from ddpm_core.cli import main

sys.exit(main())
