"""How fast `atrium serve` answers its first health check, against a bare aiohttp server as baseline.

Both are started as fresh processes the same way and polled the same way, alternately, so the ratio
holds on a noisy shared machine. Target (issue 2): first health check within 2 s of start.

    python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BASELINE = """
import sys
from aiohttp import web
async def health(request):
    return web.json_response({"status": "ok"})
app = web.Application()
app.router.add_get("/api/node/v1/health", health)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def time_to_health(cmd: list[str], port: int, env: dict[str, str]) -> float:
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/node/v1/health", timeout=0.5) as r:
                    if r.status == 200:
                        return time.monotonic() - started
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"{cmd[:4]} exited with {proc.returncode}")
                if time.monotonic() - started > 30:
                    raise SystemExit("no answer within 30 s")
                time.sleep(0.005)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "node"
        subprocess.run([sys.executable, "-m", "node", "init", str(data)], check=True, capture_output=True)
        atrium, bare = [], []
        for _ in range(args.runs):
            port = free_port()
            atrium.append(time_to_health([sys.executable, "-m", "node", "serve", "--data", str(data),
                                          "--port", str(port)], port, env))
            port = free_port()
            bare.append(time_to_health([sys.executable, "-c", BASELINE, str(port)], port, env))
    a, b = statistics.median(atrium), statistics.median(bare)
    print(f"atrium serve, first health check: median {a:.2f} s (min {min(atrium):.2f}, max {max(atrium):.2f}) "
          f"over {args.runs} runs; target < 2.00 s: {'met' if max(atrium) < 2 else 'MISSED'}")
    print(f"bare aiohttp server baseline:     median {b:.2f} s")
    print(f"ratio atrium / baseline: {a / b:.2f}x")


if __name__ == "__main__":
    main()
