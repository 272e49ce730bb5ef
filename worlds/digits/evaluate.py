"""Print the prompt-following table of a digits-world pipeline.

python -m worlds.digits.evaluate [--model DIR] [--seeds 30] [--guidance 10] [--template "a {numeral}"]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from . import CLASSIFIER_FILE, MODEL_DIR
from .judge import GUIDANCE_SCALE, STEPS, load_classifier, load_pipeline, prompt_accuracy
from .prompts import DEFAULT_TEMPLATE


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worlds.digits.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR, help="diffusers-format folder")
    parser.add_argument("--classifier", type=Path, default=CLASSIFIER_FILE)
    parser.add_argument("--seeds", type=int, default=30, help="seeds per digit")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, nargs="+", default=[GUIDANCE_SCALE])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--template", default=DEFAULT_TEMPLATE)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(model_dir=args.model)
    classifier = load_classifier(args.classifier)
    for guidance in args.guidance:
        start = time.monotonic()
        table = prompt_accuracy(pipe, seeds=args.seeds, prompt_template=args.template, guidance_scale=guidance,
                                steps=args.steps, first_seed=args.first_seed, classifier=classifier)
        print(f"guidance {guidance:g}, {args.steps} steps ({time.monotonic() - start:.0f} s)")
        print(table.format(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
