"""A plugin of test job kinds, for tests of the job runner: registered directly in in-process tests, and
through a real entry point (tests/jobs_fixtures.py `install_testkit`) for `atrium serve` and `atrium worker`
subprocesses.

Kinds: echo (returns its text), count (n steps with progress, `delay` seconds each; optionally in a thread,
and appending to a `marker` file when a run starts and when finish() runs), fail (raises), write (writes
an output file, optionally reading a listed blob), gpu_count (count, as a GPU job), fetch (asks for a blob
given in `sha256`, listed or not).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

from node.core.errors import InvalidInput
from node.core.hookspecs import hookimpl
from node.core.jobs import JobContext, JobKind, JobOutput, OutputFile

# Seconds on the monotonic clock at which each job's run() was entered (bench/jobs.py reads it).
STARTED: dict[int, float] = {}


def _int(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"params.{name} must be a whole number from {low} to {high}; got {value!r}")
    return value


def _number(params: dict[str, Any], name: str, default: float, high: float) -> float:
    value = params.get(name, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= high:
        raise InvalidInput(f"params.{name} must be a number from 0 to {high}; got {value!r}")
    return float(value)


def _marker(params: dict[str, Any], line: str) -> None:
    if params.get("marker"):
        with open(params["marker"], "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


async def prepare_echo(node: Any, user: Any, params: dict[str, Any]) -> dict[str, Any]:
    text = params.get("text", "")
    if not isinstance(text, str) or len(text) > 1000:
        raise InvalidInput("params.text must be a string of at most 1000 characters")
    return {"text": text, "_secret": "not shown to clients"}


async def run_echo(ctx: JobContext) -> JobOutput:
    STARTED[ctx.job_id] = time.monotonic()
    ctx.progress(0.5, "echoing")
    return JobOutput(result={"echo": ctx.params["text"], "device": ctx.device})


async def prepare_count(node: Any, user: Any, params: dict[str, Any]) -> dict[str, Any]:
    marker = params.get("marker")
    if marker is not None and not isinstance(marker, str):
        raise InvalidInput("params.marker must be a path")
    return {"n": _int(params, "n", 10, 1, 100_000), "delay": _number(params, "delay", 0.0, 10.0),
            "thread": bool(params.get("thread", False)), "marker": marker}


def _count_steps(ctx: JobContext, n: int, delay: float) -> None:
    for i in range(n):
        ctx.progress(i / n, f"step {i + 1} of {n}", step=i + 1)
        time.sleep(delay)


async def run_count(ctx: JobContext) -> JobOutput:
    params = ctx.params
    _marker(params, f"run {ctx.job_id}")
    if params["thread"]:
        await asyncio.to_thread(_count_steps, ctx, params["n"], params["delay"])
    else:
        for i in range(params["n"]):
            # A detail that is not JSON (here a set) reaches clients as text; it never stops the heartbeats.
            ctx.progress(i / params["n"], f"step {i + 1} of {params['n']}", step=i + 1, odd={i % 2})
            await asyncio.sleep(params["delay"])
    ctx.progress(1.0, "counted")
    return JobOutput(result={"counted": params["n"], "device": ctx.device})


async def finish_count(node: Any, job: Any, output: JobOutput) -> dict[str, Any]:
    _marker(job.params, f"finish {job.id}")
    return {**output.result, "finished": True}


async def prepare_any(node: Any, user: Any, params: dict[str, Any]) -> dict[str, Any]:
    return dict(params)


async def run_fail(ctx: JobContext) -> JobOutput:
    raise RuntimeError("the fail kind fails on purpose")


async def prepare_write(node: Any, user: Any, params: dict[str, Any]) -> dict[str, Any]:
    blobs = params.get("blobs", [])
    if not isinstance(blobs, list):
        raise InvalidInput("params.blobs must be a list")
    for sha in blobs:
        if not isinstance(sha, str) or not node.blobs.exists(sha):
            raise InvalidInput(f"no blob {sha!r} on this node")
    return {"text": str(params.get("text", "")), "blobs": blobs, "name": str(params.get("name", "out.txt"))}


async def run_write(ctx: JobContext) -> JobOutput:
    path = ctx.workdir / "out.txt"
    path.write_text(ctx.params["text"])
    result: dict[str, Any] = {"written": len(ctx.params["text"])}
    for sha in ctx.params["blobs"]:
        blob = await ctx.fetch_blob(sha)
        data = Path(blob).read_bytes()
        result[sha] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return JobOutput(result=result, files=[OutputFile(ctx.params["name"], path, "text/plain")])


async def run_fetch(ctx: JobContext) -> JobOutput:
    blob = await ctx.fetch_blob(ctx.params["sha256"])
    return JobOutput(result={"path": str(blob)})


@hookimpl
def atrium_job_kinds(register: Any) -> None:
    register(JobKind("echo", run=run_echo, prepare=prepare_echo, description="returns its text"))
    register(JobKind("count", run=run_count, prepare=prepare_count, finish=finish_count,
                     description="counts with progress"))
    register(JobKind("fail", run=run_fail, prepare=prepare_any, description="always fails"))
    register(JobKind("write", run=run_write, prepare=prepare_write, description="writes a file"))
    register(JobKind("gpu_count", run=run_count, prepare=prepare_count, finish=finish_count, gpu=True,
                     max_attempts=2, description="counts, one at a time per device"))
    register(JobKind("fetch", run=run_fetch, prepare=prepare_any, description="fetches a blob"))
