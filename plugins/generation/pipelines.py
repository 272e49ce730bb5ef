"""Loaded pipelines, cached per (checkpoint SHA-256, device, dtype) and evicted by memory.

A worker keeps one `PipelineCache` in `ctx.cache` for its whole life. Each entry holds the pipeline,
the LoRAs loaded on it and a lock: a generation holds the lock while it sets its adapters and samples,
so two jobs never share a pipeline's state at once. When the cached pipelines together weigh more than
`limit_bytes`, the least recently used idle ones are dropped (the one just used is always kept).
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from plugins.generation.loras import LoraSlots

CACHE_KEY = "generation.pipelines"


@dataclass
class CachedPipeline:
    pipe: Any
    nbytes: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    loras: LoraSlots = field(default_factory=LoraSlots)
    scheduler_config: dict[str, Any] | None = None  # the checkpoint's own, before any sampler replaced it


def pipeline_nbytes(pipe: Any) -> int:
    """Bytes of the pipeline's weights (parameters and buffers of every torch module in it)."""
    import torch

    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in list(component.parameters()) + list(component.buffers()):
                total += tensor.numel() * tensor.element_size()
    return total


def torch_dtype(device: str, gpu_dtype: str) -> Any:
    """float32 on CPU (half precision is slow or unsupported there); the configured type on a GPU."""
    import torch

    if device == "cpu" or device.startswith("cpu:"):
        return torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}[gpu_dtype]


class PipelineCache:
    """Pipelines by (sha256, device, dtype name), least recently used first."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.entries: OrderedDict[tuple[str, str, str], CachedPipeline] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a pipeline was loaded (tests and the bench read it)

    def get(self, key: tuple[str, str, str], load: Callable[[], Any]) -> CachedPipeline:
        """The cached pipeline for `key`, loading it with `load()` when absent. Blocks."""
        with self._lock:
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
                return entry
        pipe = load()  # outside the lock: other keys stay usable while a big checkpoint loads
        with self._lock:
            entry = self.entries.get(key)
            if entry is None:
                entry = CachedPipeline(pipe=pipe, nbytes=pipeline_nbytes(pipe))
                self.entries[key] = entry
                self.loads += 1
            self.entries.move_to_end(key)
            self._evict(keep=key)
        return entry

    def total_bytes(self) -> int:
        return sum(entry.nbytes + entry.loras.nbytes(entry.pipe) for entry in self.entries.values())

    def _evict(self, keep: tuple[str, str, str]) -> None:
        evicted = False
        for key in list(self.entries):
            if self.total_bytes() <= self.limit_bytes:
                break
            entry = self.entries[key]
            if key == keep or not entry.lock.acquire(blocking=False):
                continue  # in use right now: it goes on a later eviction
            try:
                del self.entries[key]
                evicted = True
            finally:
                entry.lock.release()
        if evicted:
            gc.collect()
            _empty_device_caches()


def _empty_device_caches() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
