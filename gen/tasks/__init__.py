"""The task layer: one module per task, each a typed spec (the YAML keys and CLI flags) and a task
class that turns (spec, sample index) into typed conditions, runs its pipeline and returns samples.

Every CLI command and ``rsgen run`` build a spec and hand it to :func:`gen.runner.run_job`.
"""

from __future__ import annotations

from typing import Any

from gen.spec import SpecError, build_spec
from gen.tasks.change_pairs import ChangePairsSpec, ChangePairsTask
from gen.tasks.generate import GenerateSpec, GenerateTask
from gen.tasks.inpaint import InpaintSpec, InpaintTask
from gen.tasks.sr import SRSpec, SRTask
from gen.tasks.time_series import TimeSeriesSpec, TimeSeriesTask
from gen.tasks.txt2img import Txt2ImgSpec, Txt2ImgTask

# task name -> (spec class, task class); the only place a task is chosen by its name
TASKS: dict[str, tuple[type, type]] = {
    "txt2img": (Txt2ImgSpec, Txt2ImgTask),
    "generate": (GenerateSpec, GenerateTask),
    "inpaint": (InpaintSpec, InpaintTask),
    "change_pairs": (ChangePairsSpec, ChangePairsTask),
    "time_series": (TimeSeriesSpec, TimeSeriesTask),
    "sr": (SRSpec, SRTask),
}


def spec_class(task: Any) -> type:
    if task not in TASKS:
        raise SpecError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    return TASKS[task][0]


def spec_from_mapping(data: dict[str, Any]) -> Any:
    """A spec from a YAML mapping with its ``task`` key (``out`` is the runner's, not the spec's)."""
    cls = spec_class(data.get("task"))
    return build_spec(cls, {k: v for k, v in data.items() if k not in ("task", "out")})


def open_task(spec: Any) -> Any:
    """The task object of ``spec``: its inputs are read and checked; the model is loaded by ``load_model``."""
    return TASKS[spec.task][1](spec)


__all__ = ["TASKS", "open_task", "spec_class", "spec_from_mapping"]
