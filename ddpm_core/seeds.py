"""Seeds, torch-free: a run with base seed ``seed`` draws sample ``i`` from its own generator
seeded with ``seed + i`` (a service job's redraw round ``r``: ``seed + n * r + i``). Every such
seed must be a seed of its own, 0 to :data:`MAX_SEED`: a base seed whose samples would pass
:data:`MAX_SEED` is refused, never wrapped around to 0 (``ddpm sample``, the API and the job
spec all check it here)."""

from __future__ import annotations

MAX_SEED = 2**63 - 1  # the largest sample seed (a signed 64-bit integer, as JSON clients carry it)


def largest_seed(n: int, redraw_rounds: int = 0) -> int:
    """The largest base seed for ``n`` samples drawn ``1 + redraw_rounds`` times."""
    return MAX_SEED - n * (1 + redraw_rounds) + 1


def seed_problem(seed: int, n: int, redraw_rounds: int = 0) -> str | None:
    """Why ``seed`` cannot be the base seed of ``n`` samples (None: it can)."""
    largest = largest_seed(n, redraw_rounds)
    if 0 <= seed <= largest:
        return None
    rounds = f" and {redraw_rounds} redraw rounds" if redraw_rounds else ""
    return (
        f"seed {seed} is out of range: the largest allowed seed for n={n}{rounds} is {largest} "
        f"(sample i uses seed + i, which must stay within 0 to {MAX_SEED})"
    )


def check_seed(seed: int, n: int, redraw_rounds: int = 0) -> int:
    """``seed``, when it can be the base seed of ``n`` samples; raises ValueError otherwise."""
    problem = seed_problem(seed, n, redraw_rounds)
    if problem is not None:
        raise ValueError(problem)
    return seed
