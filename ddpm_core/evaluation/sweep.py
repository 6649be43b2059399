"""A sweep of samplers x steps on one checkpoint: how good and how fast each is, in one run.

``ddpm evaluate --sweep`` draws the same samples (the same seeds, so the same x_T) with every
sampler at every step count of the sweep, measures them (an image model: the classifier's
accuracy and the FID in its features against the test set; the 2D checkerboard: the fraction of
points on the black squares) and times them on this machine, side by side. The rows go to a CSV
file and a plot (quality against steps, one line per sampler, log x axis, seconds per sample
beside each point; matplotlib, the optional ``plot`` extra).

A sweep is written ``name[@spacing]:steps,steps,... name ...``, e.g. the default
``ddim:5,8,10,20,50 dpmpp_2m:5,8,10,20 uni_pc:5,8,10,20 ddpm`` (a name without steps: the
sampler's default, all training steps for ddpm); ``ddim@linspace:5,10`` draws with the spacing
the service used before trailing.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ddpm_core.errors import UsageError
from ddpm_core.sampler_specs import SPACINGS, sampler_spec

DEFAULT_SWEEP = "ddim:5,8,10,20,50 dpmpp_2m:5,8,10,20 uni_pc:5,8,10,20 ddpm"


@dataclass(frozen=True)
class SweepPoint:
    """One sampler at one step count (None: the sampler's default) and spacing."""

    sampler: str
    steps: int | None = None
    spacing: str = "trailing"

    @property
    def line(self) -> str:
        """The plot line it belongs to: the sampler, with its spacing when not the default."""
        return self.sampler if self.spacing == "trailing" else f"{self.sampler} ({self.spacing})"


def parse_sweep(text: str) -> list[SweepPoint]:
    """``'ddim:5,10 uni_pc:8 ddpm'`` -> its points, in order; UsageError for a bad one."""
    points = []
    for item in text.split():
        name, _, steps_text = item.partition(":")
        name, _, spacing = name.partition("@")
        spacing = spacing or "trailing"
        try:
            spec = sampler_spec(name)
        except ValueError as error:
            raise UsageError(f"--sweep {item!r}: {error}") from None
        if spacing not in SPACINGS:
            raise UsageError(f"--sweep {item!r}: unknown spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
        if not steps_text:
            points.append(SweepPoint(name, None, spacing))
            continue
        if not spec.chooses_steps:
            raise UsageError(f"--sweep {item!r}: the {name} sampler runs all training steps; write just {name!r}")
        for part in steps_text.split(","):
            if not part.strip().isdigit() or int(part) < 1:
                raise UsageError(f"--sweep {item!r}: steps must be whole numbers of at least 1, got {part!r}")
            points.append(SweepPoint(name, int(part), spacing))
    if not points:
        raise UsageError("--sweep names no sampler")
    return points


@dataclass
class SweepRow:
    """One point's measurements. ``accuracy``/``fid``/``fid_floor`` for an image model (the
    floor: the FID of as many real training images), ``on_squares`` for the checkerboard."""

    sampler: str
    steps: int
    spacing: str
    samples: int
    guidance: float
    seconds: float
    seconds_per_sample: float
    accuracy: float | None = None
    fid: float | None = None
    fid_floor: float | None = None
    on_squares: float | None = None

    @property
    def line(self) -> str:
        return SweepPoint(self.sampler, self.steps, self.spacing).line

    @classmethod
    def of(cls, point: SweepPoint, result: dict[str, Any]) -> SweepRow:
        """A row from :func:`~ddpm_core.evaluation.evaluate.evaluate_checkpoint`'s (or
        ``evaluate_points``') result."""
        settings = result["settings"]
        return cls(
            sampler=point.sampler,
            steps=int(settings["steps"]),
            spacing=point.spacing,
            samples=int(result["num_samples"]),
            guidance=float(settings.get("guidance", 0.0)),
            seconds=float(result["sampling_seconds"]),
            seconds_per_sample=float(result["seconds_per_sample"]),
            accuracy=result.get("accuracy"),
            fid=result.get("fid"),
            fid_floor=result.get("fid_train_vs_test_same_n"),
            on_squares=result.get("on_squares"),
        )


def run_sweep(points: Sequence[SweepPoint], evaluate: Callable[[SweepPoint], dict[str, Any]]) -> list[SweepRow]:
    """Evaluate every point in order (``evaluate(point)`` draws and measures it)."""
    return [SweepRow.of(point, evaluate(point)) for point in points]


def write_csv(rows: Sequence[SweepRow], path: str | Path) -> Path:
    """The rows as CSV, one per point, columns as :class:`SweepRow`'s fields."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [field.name for field in fields(SweepRow)]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({name: "" if value is None else value for name, value in asdict(row).items()})
    return path


def quality_metric(rows: Sequence[SweepRow]) -> tuple[str, str]:
    """(field, axis label) of what the rows measure: FID for images, on-squares for points."""
    if all(row.fid is not None for row in rows):
        return "fid", "FID in the classifier's features (lower is better)"
    return "on_squares", "fraction of points on the black squares (higher is better)"


def plot_sweep(rows: Sequence[SweepRow], path: str | Path, title: str) -> Path:
    """A PNG: quality against steps (log x), one line per sampler, seconds per sample beside each
    point; the FID of as many real images as a dashed line when known. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'ddpm-service[plot]'") from None
    metric, label = quality_metric(rows)
    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    for line in dict.fromkeys(row.line for row in rows):
        chosen = sorted((row for row in rows if row.line == line), key=lambda row: row.steps)
        steps = [row.steps for row in chosen]
        values = [getattr(row, metric) for row in chosen]
        axes.plot(steps, values, marker="o", label=line)
        for row, value in zip(chosen, values, strict=True):
            axes.annotate(
                _milliseconds(row.seconds_per_sample),
                (row.steps, value),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    floors = [row.fid_floor for row in rows if row.fid_floor is not None]
    if metric == "fid" and floors:
        axes.axhline(floors[0], color="grey", linestyle="--", linewidth=1, label="real images (same n)")
    axes.set_xscale("log")
    axes.set_xlabel("steps (model calls per sample; labels: ms per sample)")
    axes.set_ylabel(label)
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def _milliseconds(seconds: float) -> str:
    """'18.2 ms', '3925 ms': three significant figures, whole milliseconds from 100 up."""
    milliseconds = seconds * 1000
    return f"{milliseconds:.0f} ms" if milliseconds >= 100 else f"{milliseconds:.3g} ms"


def markdown_table(rows: Sequence[SweepRow]) -> str:
    """The rows as a Markdown table (for the docs)."""
    metric, _ = quality_metric(rows)
    if metric == "fid":
        header = "| sampler | steps | accuracy | FID | FID of real images (same n) | ms per sample |"
        lines = [header, "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in rows:
            floor = "" if row.fid_floor is None else f"{row.fid_floor:.4f}"
            accuracy = "" if row.accuracy is None else f"{row.accuracy:.4f}"
            lines.append(
                f"| {row.line} | {row.steps} | {accuracy} | {row.fid:.4f} | {floor} | "
                f"{row.seconds_per_sample * 1000:.2f} |"
            )
        return "\n".join(lines)
    lines = ["| sampler | steps | on the black squares | ms per sample |", "| --- | ---: | ---: | ---: |"]
    lines += [
        f"| {row.line} | {row.steps} | {row.on_squares:.4f} | {row.seconds_per_sample * 1000:.3f} |" for row in rows
    ]
    return "\n".join(lines)
