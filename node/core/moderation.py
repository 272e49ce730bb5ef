"""What moderation hooks exchange with the generation plugin: violations, image labels, adapters.

A plugin implementing `atrium_check_prompt` or `atrium_check_image` (node/core/hookspecs.py) answers
with a list of `Violation` (and, for images, `ImageLabel`); one violation is enough to refuse. A plugin
implementing `atrium_generation_adapters` calls `register(GenerationAdapter(...))` for each LoRA-shaped
adapter (a concept membrane, say) to apply during a generation. Plain data, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from node.core.errors import InvalidInput

_RULE_RE = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_ADAPTER_WEIGHT = 10.0


@dataclass(frozen=True)
class Violation:
    """A rule a prompt or an image breaks: `rule` is a short machine name (`no_minors`), `message` says
    what is wrong in a sentence a user can act on."""

    rule: str
    message: str

    def __post_init__(self) -> None:
        if not isinstance(self.rule, str) or not _RULE_RE.match(self.rule):
            raise ValueError(f"Violation.rule must be a short lowercase name, not {self.rule!r}")
        if not isinstance(self.message, str) or not self.message.strip():
            raise ValueError("Violation.message must say what is wrong")


@dataclass(frozen=True)
class ImageLabel:
    """A label a checker puts on an image it lets through (`nsfw`, 0.93); stored with the result."""

    name: str
    score: float | None = None


@dataclass(frozen=True)
class GenerationAdapter:
    """A LoRA-shaped adapter applied to one generation on top of the user's LoRAs.

    `sha256` names a safetensors file in the node's blob store (kohya or diffusers LoRA keys, the same
    formats user LoRAs come in); `weight` scales it as a LoRA weight does. The file travels to remote
    workers like every other blob of the job. `name` shows in the job's result, never in the image's
    A1111 parameters (the adapter is the node's policy, not the user's recipe).
    """

    name: str
    sha256: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _RULE_RE.match(self.name):
            raise ValueError(f"GenerationAdapter.name must be a short lowercase name, not {self.name!r}")
        if not isinstance(self.sha256, str) or not _SHA256_RE.match(self.sha256):
            raise ValueError("GenerationAdapter.sha256 must be 64 lowercase hex digits")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not -MAX_ADAPTER_WEIGHT <= self.weight <= MAX_ADAPTER_WEIGHT:
            raise ValueError(f"GenerationAdapter.weight must be a number from -{MAX_ADAPTER_WEIGHT:g} "
                             f"to {MAX_ADAPTER_WEIGHT:g}")


@dataclass(frozen=True)
class CheckContext:
    """Who asks, and for what: handed to the check hooks. `purpose` is the job kind ("generate");
    `request` the validated request as JSON-like data; `job_id` is set once a job exists."""

    user: Any
    purpose: str
    request: dict[str, Any] = field(default_factory=dict)
    job_id: int | None = None


class PolicyViolation(InvalidInput):
    """A moderation hook refused the request or its result; the detail names each rule broken."""

    code = "policy_violation"

    def __init__(self, violations: Iterable[Violation], what: str = "the prompt") -> None:
        self.violations = list(violations)
        rules = "; ".join(f"{v.rule}: {v.message}" for v in self.violations)
        super().__init__(f"{what} breaks this node's rules ({rules})")


def collect_violations(results: Iterable[Any], hook: str) -> tuple[list[Violation], list[ImageLabel]]:
    """Flatten what every plugin's check hook returned into violations and labels.

    A plugin returning something else is a bug in that plugin: say so rather than let it through.
    """
    violations: list[Violation] = []
    labels: list[ImageLabel] = []
    for result in results:
        if result is None:
            continue
        items = [result] if isinstance(result, (Violation, ImageLabel)) else result
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"{hook} must return a list of Violation/ImageLabel, not {type(result).__name__}")
        for item in items:
            if isinstance(item, Violation):
                violations.append(item)
            elif isinstance(item, ImageLabel):
                labels.append(item)
            else:
                raise TypeError(f"{hook} returned {type(item).__name__}; expected Violation or ImageLabel")
    return violations, labels
