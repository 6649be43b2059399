"""The samplers on offer, torch-free: one table that every surface reads.

Each :class:`SamplerSpec` says what a sampler is called on the wire, what it does in one line,
whether a request chooses its number of steps, its step limits and default, how many tensors of
history a job keeps between steps, and whether it adds noise after the start. The library's
sampler classes (:mod:`ddpm_core.samplers`), the job spec's type (:mod:`contract.spec`), the
API's validation and OpenAPI enum, ``GET /models``, the CLI's choices and the web page all read
this table, so a sampler is added here and in :mod:`ddpm_core.samplers` and nowhere else (a test
fails when one of the two lacks it).

Step counts: a sampler that chooses its steps takes ``min_steps`` to the model's training steps
T (fewer when T is smaller), ``default_steps`` when a request gives none. An operator may set
one floor for all of them (``DDPM_MIN_STEPS``). DDPM always runs all T steps.

Labels: a class index is checked once, by :func:`check_class_label`, wherever a request names
one (the library, the engine, the API).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler as every surface knows it.

    Attributes:
        name: the wire name (``sampler`` in a request, ``--sampler`` on the command line).
        title: a short human name, e.g. 'UniPC'.
        description: one line: what it does and when to use it.
        chooses_steps: whether a request chooses its number of steps (False: all training steps).
        min_steps: the fewest steps a request may ask for (the quality table's fewest).
        default_steps: the steps when a request gives none; None: all training steps.
        history: tensors of per-sample state a job keeps between steps besides x_t (0: one-step).
        deterministic: True when no noise is added after the initial x_T (the seed fixes x_T only).
    """

    name: str
    title: str
    description: str
    chooses_steps: bool
    min_steps: int
    default_steps: int | None
    history: int
    deterministic: bool

    def fewest_steps(self, floor: int | None = None) -> int | None:
        """The fewest steps a request may ask for on a long enough model: :attr:`min_steps`, or
        ``floor`` (the operator's ``DDPM_MIN_STEPS``) when set; None when it runs all steps."""
        if not self.chooses_steps:
            return None
        return self.min_steps if floor is None else floor

    def step_range(self, total: int, floor: int | None = None) -> tuple[int, int]:
        """(fewest, most) steps on a model trained with ``total`` steps (see :meth:`fewest_steps`)."""
        fewest = self.fewest_steps(floor)
        return (total, total) if fewest is None else (min(fewest, total), total)

    def resolve_steps(self, steps: int | None, total: int, floor: int | None = None) -> int:
        """The steps a request gets: ``steps`` within :meth:`step_range`, or the default.

        Raises:
            ValueError: ``steps`` outside the range (one line that names the range).
        """
        low, high = self.step_range(total, floor)
        if steps is None:
            return high if self.default_steps is None else min(max(self.default_steps, low), high)
        if not self.chooses_steps and steps != total:
            choosers = ", ".join(spec.name for spec in SAMPLER_SPECS if spec.chooses_steps)
            raise ValueError(f"the {self.name} sampler runs all {total} training steps; choose {choosers} to set steps")
        if not low <= steps <= high:
            raise ValueError(f"the {self.name} sampler takes {low} to {high} steps on this model, got {steps}")
        return steps


DDPM = SamplerSpec(
    name="ddpm",
    title="DDPM",
    description="the ancestral sampler of the reverse process: every training step, fresh noise each step",
    chooses_steps=False,
    min_steps=1,
    default_steps=None,
    history=0,
    deterministic=False,
)
DDIM = SamplerSpec(
    name="ddim",
    title="DDIM",
    description="the deterministic first-order sampler over spaced steps (eta 0)",
    chooses_steps=True,
    min_steps=10,
    default_steps=50,
    history=0,
    deterministic=True,
)
DPMPP_2M = SamplerSpec(
    name="dpmpp_2m",
    title="DPM-Solver++ 2M",
    description="a second-order multistep ODE solver in data prediction; good results in 8 to 20 steps",
    chooses_steps=True,
    min_steps=5,
    default_steps=8,
    history=1,
    deterministic=True,
)
UNI_PC = SamplerSpec(
    name="uni_pc",
    title="UniPC",
    description="a multistep predictor with a free corrector (order 3, B(h) = h); the best at 5 to 10 steps",
    chooses_steps=True,
    min_steps=5,
    default_steps=8,
    history=4,
    deterministic=True,
)

SAMPLER_SPECS: tuple[SamplerSpec, ...] = (DDPM, DDIM, DPMPP_2M, UNI_PC)
SAMPLER_NAMES: tuple[str, ...] = tuple(spec.name for spec in SAMPLER_SPECS)
SAMPLERS_BY_NAME: dict[str, SamplerSpec] = {spec.name: spec for spec in SAMPLER_SPECS}
DEFAULT_SAMPLER = DDPM.name
"""What the API runs when a request names no sampler: the reverse process the model was trained for."""
FAST_SAMPLER = UNI_PC.name
"""The page's default: a few steps, close to the full reverse process in quality."""
# how a spaced sampler picks its timesteps from the training ones
SPACINGS = ("trailing", "linspace")
MAX_HISTORY = max(spec.history for spec in SAMPLER_SPECS)
"""History slots every multistep job keeps, so jobs of different samplers share one step."""


def sampler_spec(name: str) -> SamplerSpec:
    """The spec of sampler ``name``; ValueError naming the choices for an unknown one."""
    spec = SAMPLERS_BY_NAME.get(name)
    if spec is None:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLER_NAMES)}")
    return spec


def describe_samplers() -> str:
    """Every sampler in one paragraph ('name: description; ...'), for help texts and OpenAPI."""
    return "; ".join(f"{spec.name}: {spec.description}" for spec in SAMPLER_SPECS)


def check_class_label(label: int, num_classes: int) -> int:
    """A class index for a model with ``num_classes`` classes (0: unconditional), as an int.

    The null label ``num_classes`` (the unconditional row of classifier-free guidance) is not a
    class: callers spell it None.

    Raises:
        ValueError: the model is unconditional, or the index is outside [0, num_classes - 1].
    """
    if num_classes == 0:
        raise ValueError("this model is unconditional: it takes no class labels")
    if isinstance(label, bool) or not 0 <= int(label) < num_classes:
        raise ValueError(f"class label {label} must be between 0 and {num_classes - 1}")
    return int(label)
