"""Samplers by their A1111 names, as diffusers schedulers built on the checkpoint's own scheduler config.

The checkpoint's scheduler config (betas, timestep count, prediction type, spacing) stays the base; a
sampler only picks the scheduler class and the few options that make it the A1111 sampler of that
name (Karras sigmas, the SDE variant of DPM-Solver). Pure data plus one builder; diffusers is imported
only when a scheduler is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.core.errors import InvalidInput


@dataclass(frozen=True)
class Sampler:
    """One A1111 sampler: the diffusers scheduler class and its options."""

    name: str
    scheduler: str
    options: dict[str, Any] = field(default_factory=dict)
    needs: str | None = None  # a module the scheduler imports, for a clear error when missing


_KARRAS = {"use_karras_sigmas": True}
_SDE = {"algorithm_type": "sde-dpmsolver++"}

SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("Euler a", "EulerAncestralDiscreteScheduler"),
    Sampler("Euler", "EulerDiscreteScheduler"),
    Sampler("LMS", "LMSDiscreteScheduler"),
    Sampler("LMS Karras", "LMSDiscreteScheduler", _KARRAS),
    Sampler("Heun", "HeunDiscreteScheduler"),
    Sampler("DPM2", "KDPM2DiscreteScheduler"),
    Sampler("DPM2 Karras", "KDPM2DiscreteScheduler", _KARRAS),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
    Sampler("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", _KARRAS),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler"),
    Sampler("DPM++ 2M Karras", "DPMSolverMultistepScheduler", _KARRAS),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _SDE),
    Sampler("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {**_SDE, **_KARRAS}),
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", needs="torchsde"),
    Sampler("DPM++ SDE Karras", "DPMSolverSDEScheduler", _KARRAS, needs="torchsde"),
    Sampler("DDIM", "DDIMScheduler"),
    Sampler("PLMS", "PNDMScheduler"),
    Sampler("UniPC", "UniPCMultistepScheduler"),
)}
_BY_LOWER = {name.lower(): sampler for name, sampler in SAMPLERS.items()}
# A1111 1.9+ writes "Sampler: DPM++ 2M, Schedule type: Karras"; these schedule types map onto names.
SCHEDULE_TYPES = ("Automatic", "Karras")


def sampler_named(name: str, schedule_type: str | None = None) -> Sampler:
    """The sampler of an A1111 name (any case); InvalidInput listing the known names otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("sampler: expected an A1111 sampler name such as 'Euler a' or 'DPM++ 2M Karras'")
    key = " ".join(name.split()).lower()
    if schedule_type is not None:
        if schedule_type not in SCHEDULE_TYPES:
            raise InvalidInput(f"schedule_type: {schedule_type!r} is not one of {', '.join(SCHEDULE_TYPES)}")
        if schedule_type == "Karras" and not key.endswith(" karras"):
            key += " karras"
    sampler = _BY_LOWER.get(key)
    if sampler is None:
        raise InvalidInput(f"sampler: {name!r} is not a sampler this node has (known: {', '.join(SAMPLERS)})")
    return sampler


def native_sampler_name(scheduler_config: dict[str, Any]) -> str:
    """The A1111 name of a checkpoint's own scheduler, to record when a request names none."""
    cls = scheduler_config.get("_class_name", "")
    karras = bool(scheduler_config.get("use_karras_sigmas"))
    sde = scheduler_config.get("algorithm_type") == "sde-dpmsolver++"
    for sampler in SAMPLERS.values():
        if sampler.scheduler != cls:
            continue
        if bool(sampler.options.get("use_karras_sigmas")) == karras and \
                (sampler.options.get("algorithm_type") == "sde-dpmsolver++") == sde:
            return sampler.name
    return cls or "unknown"


def build_scheduler(sampler: Sampler, base_config: dict[str, Any]) -> Any:
    """A scheduler instance for `sampler` on the checkpoint's scheduler config."""
    import importlib.util

    import diffusers

    if sampler.needs and importlib.util.find_spec(sampler.needs) is None:
        raise InvalidInput(f"sampler {sampler.name!r} needs the {sampler.needs!r} package: pip install {sampler.needs}")
    cls = getattr(diffusers, sampler.scheduler)
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    config.update(sampler.options)
    return cls.from_config(config)
