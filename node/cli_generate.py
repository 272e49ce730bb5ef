"""`atrium generate`: ask a node for images, follow the job with a progress bar, save the PNGs.

With `--batch N` above 1 the images are written next to `--out` as NAME-0.png, NAME-1.png, ...; each is
written atomically (a temporary file renamed into place), so an interrupted run leaves no half image.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from node.core.errors import InvalidInput

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
MAX_IMAGE_BYTES = 256 * 1024 * 1024


def parse_lora(text: str) -> dict[str, Any]:
    """`AIR:WEIGHT` or `AIR` (weight 1). The weight is the part after the last ':' when it is a number
    and either holds a decimal point or follows a version (`...@34:0.8`, `...@34:1`)."""
    head, sep, tail = text.rpartition(":")
    if sep and _NUMBER.fullmatch(tail) and ("." in tail or "@" in head):
        return {"air": head, "weight": float(tail)}
    return {"air": text, "weight": 1.0}


def parse_size(text: str) -> tuple[int, int]:
    match = _SIZE.fullmatch(text.strip().lower())
    if not match:
        raise InvalidInput(f"--size: {text!r} is not WIDTHxHEIGHT, e.g. 512x768")
    return int(match.group(1)), int(match.group(2))


def output_paths(out: Path, count: int) -> list[Path]:
    """Where each image goes: `out` itself for one image, NAME-0.png, NAME-1.png, ... for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(count)]


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON body of POST /api/node/v1/generate from the command's options."""
    body: dict[str, Any] = {"model": args.model, "prompt": args.prompt}
    optional = {"negative": args.negative, "steps": args.steps, "cfg": args.cfg, "seed": args.seed,
                "sampler": args.sampler, "clip_skip": args.clip_skip, "batch": args.batch,
                "init_image": args.init_image, "denoising_strength": args.strength}
    body.update({key: value for key, value in optional.items() if value is not None})
    if args.lora:
        body["loras"] = [parse_lora(text) for text in args.lora]
    if args.size:
        body["width"], body["height"] = parse_size(args.size)
    return body


def cmd_generate(args: argparse.Namespace) -> int:
    from node.cli import CommandError, UsageError, _client, out, run_async
    from node.cli_jobs import follow_job
    from node.core.files import atomic_write_bytes

    target = Path(args.out)
    if not target.parent.is_dir():
        raise UsageError(f"--out: the folder {target.parent} does not exist")
    body = request_body(args)
    client = _client(args)

    async def run() -> int:
        async with client as node:
            job = await node.post("/api/node/v1/generate", body)
            final = await follow_job(node, job["id"], label=f"job {job['id']} generate")
            images = (final.get("result") or {}).get("images") or []
            files = {f["name"]: f for f in final.get("files") or []}
            paths = output_paths(target, len(images))
            for image, path in zip(images, paths):
                source = files.get(image["name"])
                if source is None:
                    raise CommandError(f"job {job['id']} lists {image['name']} but has no such file")
                atomic_write_bytes(path, await node.get_bytes(source["url"], limit=MAX_IMAGE_BYTES))
                where = f"  image {image['image_id']}" if image.get("image_id") else ""
                out(f"{path}  seed {image['seed']}{where}")
        return 0

    return run_async(run())


def add_commands(sub: Any, common: argparse.ArgumentParser, remote: argparse.ArgumentParser) -> None:
    """Add `generate` to the `atrium` parser."""
    text = "generate images on a node with a checkpoint (and LoRAs) from its catalog; waits, then saves them"
    p = sub.add_parser("generate", help=text, description=text, parents=[common, remote])
    p.set_defaults(func=cmd_generate)
    p.add_argument("--model", required=True, metavar="AIR", help="the checkpoint, by AIR")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the prompt; may hold <lora:name:weight> tags")
    p.add_argument("--negative", metavar="TEXT", help="the negative prompt")
    p.add_argument("--lora", action="append", metavar="AIR:WEIGHT",
                   help="stack a LoRA by AIR with a weight (repeatable), e.g. urn:air:sd1:lora:mynode:5@6:0.8")
    p.add_argument("--steps", type=int, metavar="N", help="sampling steps (default 20)")
    p.add_argument("--cfg", type=float, metavar="X", help="CFG scale (default 7)")
    p.add_argument("--seed", type=int, metavar="N", help="the seed (default: random, printed; -1 is random too)")
    p.add_argument("--size", metavar="WxH", help="image size (default: the checkpoint family's)")
    p.add_argument("--sampler", metavar="NAME", help="an A1111 sampler name, e.g. 'DPM++ 2M Karras' "
                                                     "(default: the checkpoint's own scheduler)")
    p.add_argument("--clip-skip", type=int, metavar="N", help="A1111's Clip skip (1 = last layer)")
    p.add_argument("--batch", type=int, metavar="N", help="how many images (seeds seed, seed+1, ...)")
    p.add_argument("--init-image", type=int, metavar="ID", help="image-to-image from this catalog image id")
    p.add_argument("--strength", type=float, metavar="X", help="denoising strength for --init-image (default 0.75)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="where to save the image "
                   "(with --batch: FILE-0.png, FILE-1.png, ...)")
