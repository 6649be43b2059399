"""Default values the command line shows in its help and the library uses, torch-free so that
``ddpm --help`` never imports torch."""

from __future__ import annotations

DEFAULT_BETA_START = 1e-4  # Ho et al.'s linear schedule, for T = 1000
DEFAULT_BETA_END = 0.02
DEFAULT_DIST_TIMEOUT_S = 900.0  # how long a rank of a distributed run waits for the others
