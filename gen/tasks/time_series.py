"""Task ``time_series``: T dates of one scene by chained change simulation (date t + 1 simulated from date t).

* ``full``: every date generated from its layout with the sample's seed (one style), each with its own date in
  the metadata;
* ``hybrid``: the real image is date 0; date t + 1 is date t with only the pixels that changed between them
  inpainted under layout t + 1, so every pixel that never changed is bit-identical to the real image.

Layout 0 comes from masks or vectors exactly as in ``change_pairs`` (same fields). Dates run from ``date``
every ``interval_days`` (unknown when ``date`` is left out). Distractors are drawn for every date after the
first and applied to its written image only, never to the image the next date is made from, so they do not
accumulate and never change a label. Each event records the date index at which it happened; labels cover
every consecutive pair and (0, t): the union of the events between the two dates. Sample i draws everything
from ``sample_seed(seed, i)``: the events of every date first, then the images, distractors and captions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np

from conditions.change_captions import change_captions, change_qa
from conditions.change_events import ChangeEvent, ChangeResult, building_instances, simulate_change
from conditions.distractors import apply_distractors
from conditions.metadata import Metadata, parse_date
from core.seeding import sample_seed
from gen import spec as checks
from gen.spec import FieldError, option
from gen.tasks.change_pairs import ChangeOptions, ChangePairsTask, LayoutT1, synthesise
from gen.tasks.common import TextConditions, record
from synth_datasets.output_layouts import SequenceFolder
from synth_datasets.samples import TimeSeriesSample
from synth_datasets.sequence_writer import date_pairs


@dataclass(frozen=True, kw_only=True)
class TimeSeriesSpec(ChangeOptions):
    task = "time_series"
    num_dates: int = option(4, "dates per sequence (>= 2)", checks.integer(2, 100), cli=int, metavar="T")
    interval_days: int = option(365, "days between consecutive dates (counted from date)", checks.integer(1),
                                cli=int)  # fmt: skip
    stack: bool = option(False, "also write every date into one GeoTIFF (3 bands per date, described by date)",
                         checks.boolean, boolean=True)  # fmt: skip

    def validate(self) -> None:
        super().validate()
        if self.date is None and self.interval_days != 365:
            raise FieldError("interval_days", "dates are counted from date; give date (YYYY-MM-DD) as well")


def sequence_dates(start: Any, num_dates: int, interval_days: int) -> list[dt.date | None]:
    """The acquisition date of every date index: ``start`` + t × ``interval_days`` (all unknown without a start)."""
    if start is None:
        return [None] * num_dates
    first = parse_date(start)
    return [first + dt.timedelta(days=t * interval_days) for t in range(num_dates)]


@dataclass
class Chain:
    """The simulated layouts of every date and what changed between consecutive dates."""

    semantics: list[np.ndarray]  # T × (H, W) canonical ids
    steps: list[ChangeResult]  # T - 1 results: steps[t - 1] takes date t - 1 to date t

    def events(self, a: int, b: int) -> list[ChangeEvent]:
        """The events between dates a and b (those that happened at dates a + 1 … b)."""
        return [e for step in self.steps[a:b] for e in step.events]

    def change(self, a: int, b: int) -> np.ndarray:
        """(H, W) bool: every pixel an event changed between dates a and b."""
        return np.logical_or.reduce([step.change_mask for step in self.steps[a:b]])


class TimeSeriesTask(ChangePairsTask):
    def __init__(self, spec: TimeSeriesSpec) -> None:
        super().__init__(spec, SequenceFolder(spec.stack))

    def samples(self, indices: list[int]) -> list[TimeSeriesSample]:
        return [self.sequence(index) for index in indices]

    def sequence(self, index: int) -> TimeSeriesSample:
        """Simulate and synthesise sequence ``index``."""
        spec = self.spec
        seed = sample_seed(spec.seed, index)
        rng = np.random.default_rng(seed)
        t1 = self.layout_t1(self.sources[index % len(self.sources)])
        chain = self.simulate(t1, rng)
        dates = sequence_dates(spec.date, spec.num_dates, spec.interval_days)
        metadata = [dataclasses.replace(t1.metadata, date=d) for d in dates]
        clean, fills = self.synthesise_dates(t1, chain, metadata, seed, rng)
        images, distractors = [clean[0]], [[]]
        for image in clean[1:]:  # on the written image only: the next date is made from the clean one
            image, applied = apply_distractors(image, list(spec.distractors), rng) if spec.distractors else (image, [])
            images.append(image)
            distractors.append(applied)
        height, width = t1.semantic.shape
        changes = {(a, b): chain.change(a, b) for a, b in date_pairs(spec.num_dates)}
        pairs = []
        for (a, b), change in changes.items():
            events = chain.events(a, b)
            pseudo = any(distractors[t] for t in (a, b))
            pairs.append({"from": a, "to": b, "changed_fraction": float(change.mean()),
                          "captions": change_captions(events, width, height, rng, distractors=pseudo),
                          "qa": change_qa(events, width, height, t1.gsd)})  # fmt: skip
        text = TextConditions(spec.prompt, t1.metadata)
        provenance = record(spec, self.pipe, index, text, mode=spec.mode, **t1.provenance, gsd=t1.gsd)
        provenance["sampling"]["layout_strength"] = self.layout_strength({"mask": None})
        provenance["metadata_by_date"] = [m.to_dict() for m in metadata]
        rec = {
            "dates": [d.isoformat() if d else None for d in dates],
            "events": [e.to_dict() for step in chain.steps for e in step.events],
            "pairs": pairs,
            "distractors": distractors,
            "synthesis": self.synthesis_record(fills),
            "provenance": provenance,
        }
        return TimeSeriesSample(images, chain.semantics, changes, rec, t1.georef)

    def simulate(self, t1: LayoutT1, rng: np.random.Generator) -> Chain:
        """Layouts of dates 1 … T-1, each simulated from the previous one; events tagged with their date."""
        semantic = t1.semantic
        instances = t1.instances
        semantics, steps = [semantic], []
        for date in range(1, self.spec.num_dates):
            if rng.random() < self.spec.no_change_fraction:
                inst = instances if instances is not None else building_instances(semantic)
                step = ChangeResult(semantic.copy(), inst.copy(), [], np.zeros(semantic.shape, bool))
            else:
                step = simulate_change(semantic, t1.gsd, self.change, rng, instances=instances,
                                       footprints=self.footprints(t1.gsd))  # fmt: skip
            for event in step.events:
                event.date = date
            semantic, instances = step.semantic, step.instances
            semantics.append(semantic)
            steps.append(step)
        return Chain(semantics, steps)

    def synthesise_dates(
        self, t1: LayoutT1, chain: Chain, metadata: list[Metadata], seed: int, rng: np.random.Generator
    ) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
        """The clean image of every date (full: each generated from its layout; hybrid: each date's changes
        filled into the previous date's image) and the exemplar fill records, tagged with their date."""
        if self.spec.mode == "full":
            return [synthesise(self.pipe, sem, seed, self.sampling_kwargs(m)) for sem, m in zip(chain.semantics,
                                                                                             metadata)], []  # fmt: skip
        images, fills = [t1.image], []
        for date, step in enumerate(chain.steps, start=1):
            common = self.sampling_kwargs(metadata[date])
            image, filled = self.fill_change(images[-1], chain.semantics[date - 1], step, seed, common, rng)
            images.append(image)
            fills.extend({"date": date, **f} for f in filled)
        return images, fills

    def describe(self, index: int) -> dict[str, Any]:
        return {**super().describe(index), "num_dates": self.spec.num_dates}
