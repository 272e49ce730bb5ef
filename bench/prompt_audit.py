"""Cost of the prompt audit (plugins/moderation/audit.py) against normalizing the prompt alone, same run.

A typical long prompt (about 1,100 characters) is checked against term lists of growing size (plus an
allow list and one pattern); each case's median time is reported, and its ratio to `fold(prompt)` (NFKC,
case folding, accents and invisible characters removed), the least any audit must do. The audit's
cost should grow with the prompt, not with the number of terms.

    python bench/prompt_audit.py [--runs 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plugins.moderation.audit import AuditPolicy, fold  # noqa: E402

PROMPT = ("masterpiece, best quality, a fox in a snowy forest at dawn, volumetric light, "
          "<lora:foxstyle:0.8>, (detailed fur:1.2), ") * 10


def median_seconds(fn: Any, runs: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    baseline = median_seconds(lambda: fold(PROMPT), args.runs)
    print(f"prompt: {len(PROMPT)} characters; baseline fold(): {baseline * 1e3:.3f} ms")
    print(f"{'terms':>7} {'allowed':>8} {'median ms':>10} {'x baseline':>11}")
    for terms, allowed in ((10, 0), (1_000, 0), (10_000, 0), (10_000, 1_000)):
        policy = AuditPolicy.from_table({
            "banned": [f"word{i}" for i in range(terms)], "minors": ["loli*", "young girl"],
            "allow": [f"allowed phrase {i}" for i in range(allowed)], "blocked_patterns": [r"nsfw\s*=\s*true"]})
        assert policy.check(PROMPT) == []
        seconds = median_seconds(lambda p=policy: p.check(PROMPT), args.runs)  # type: ignore[misc]
        print(f"{terms:>7} {allowed:>8} {seconds * 1e3:>10.3f} {seconds / baseline:>11.1f}")


if __name__ == "__main__":
    main()
