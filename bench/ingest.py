"""Ingesting a large safetensors file over HTTP against hashlib.sha256 over the same file, same run.

Starts a real `atrium serve` (fresh data directory, a creator made with `atrium users add`), creates a
model and a version through the API, writes a valid safetensors file of --size bytes to disk in a
streaming way, times SHA256 of the file (read + hash, page cache warm), then times the resumable upload
(PATCH pieces of --piece-mib streamed from disk over a raw socket) until the 201, sampling the server's
RSS from /proc while it runs. The client alone (the same sends into a sink server that discards the
bytes) is measured too, to show it is not the bottleneck, and so is the disk alone: the same number of
bytes written and fsynced into the node's data directory. The node fsyncs every piece before it confirms
it (a resumable upload must not confirm bytes a crash could lose), so that time is a floor under the
upload's on a disk slower than SHA256.

Target (issue 3): the upload takes <= 2.0x the time of SHA256 over the file; the node's RSS grows < 100 MB.

    python bench/ingest.py [--size 2GiB] [--piece-mib 128] [--runs 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 2.0
TARGET_RSS_MB = 100
READ_BYTES = 4 * 1024 * 1024

SINK = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(8)
buf = bytearray(1 << 20)
while True:
    conn, _ = srv.accept()
    with conn:
        head = b""
        while b"\\r\\n\\r\\n" not in head:
            more = conn.recv(65536)
            if not more:
                break
            head += more
        if b"\\r\\n\\r\\n" not in head:
            continue  # a readiness probe
        header, rest = head.split(b"\\r\\n\\r\\n", 1)
        length = int([l for l in header.split(b"\\r\\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
        left = length - len(rest)
        while left > 0:
            left -= conn.recv_into(buf, min(len(buf), left))
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n")
"""


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]i?B?)?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GiB, 512MiB)")
    unit = (m.group(2) or "").upper()[:1]
    return int(float(m.group(1)) * {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}[unit])


def durable_write(directory: Path, size: int) -> float:
    """Seconds to write `size` bytes to a new file in `directory` and fsync it: what the disk alone
    takes to hold an upload durably (the node fsyncs each piece before it answers)."""
    block = os.urandom(READ_BYTES)
    path = directory / "durable-write.tmp"
    started = time.perf_counter()
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            left -= handle.write(block[:min(left, len(block))])
        handle.flush()
        os.fsync(handle.fileno())
    elapsed = time.perf_counter() - started
    path.unlink()
    return elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_safetensors(path: Path, size: int) -> None:
    """A valid safetensors file of exactly `size` bytes, written in blocks (never all in memory)."""
    header = b""
    for pad in range(0, 512):
        data_len = size - 8 - 256 - pad
        text = json.dumps({"__metadata__": {"bench": "atrium"},
                           "weight": {"dtype": "U8", "shape": [data_len], "data_offsets": [0, data_len]}})
        header = text.encode().ljust(256 + pad)
        if len(header) == 256 + pad:
            break
    data_len = size - 8 - len(header)
    block = os.urandom(8 * 1024 * 1024)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        left = data_len
        while left:
            n = min(left, len(block))
            handle.write(block[:n])
            left -= n


def sha256_file(path: Path) -> float:
    started = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as handle:
        while chunk := handle.read(READ_BYTES):
            digest.update(chunk)
    digest.hexdigest()
    return time.perf_counter() - started


def api(port: int, method: str, path: str, token: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def send_piece(port: int, path: str, token: str, offset: int, handle, length: int) -> tuple[int, bytes]:
    """One PATCH with `length` bytes read from `handle`, sent with sendfile (the client costs ~nothing)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                     f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n"
                     f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode())
        sent = 0
        while sent < length:
            sent += os.sendfile(sock.fileno(), handle.fileno(), offset + sent, length - sent)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[-1]


def upload(port: int, token: str, version_id: int, path: Path, size: int, piece: int) -> float:
    started = time.perf_counter()
    start = api(port, "POST", f"/api/node/v1/versions/{version_id}/uploads", token,
                {"filename": "bench.safetensors", "size": size, "type": "Model"})
    status = 0
    with path.open("rb") as handle:
        for offset in range(0, size, piece):
            status, body = send_piece(port, start["url"], token, offset, handle, min(piece, size - offset))
            if status not in (200, 201):
                raise SystemExit(f"PATCH at {offset} answered {status}: {body[:300]!r}")
    if status != 201:
        raise SystemExit(f"the last PATCH answered {status}, not 201")
    return time.perf_counter() - started


def client_alone(path: Path, size: int, piece: int) -> float:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        started = time.perf_counter()
        with path.open("rb") as handle:
            for offset in range(0, size, piece):
                send_piece(port, "/sink", "x", offset, handle, min(piece, size - offset))
        return time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("2GiB"), help="file size (default 2GiB)")
    parser.add_argument("--piece-mib", type=int, default=128, help="bytes per PATCH, in MiB (default 128)")
    parser.add_argument("--runs", type=int, default=1, help="uploads (each into a new version); best is reported")
    args = parser.parse_args()
    size, piece = args.size, args.piece_mib * 1024 * 1024
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    with tempfile.TemporaryDirectory(prefix="atrium-bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "node"
        subprocess.run([sys.executable, "-m", "node", "init", "--no-demo", str(data)], check=True,
                       capture_output=True, env=env, cwd=ROOT)
        out = subprocess.run([sys.executable, "-m", "node", "users", "add", "maker", "--role", "creator",
                              "--data", str(data)], check=True, capture_output=True, text=True, env=env, cwd=ROOT)
        token = out.stdout.strip().splitlines()[-1].strip()
        file_path = tmp / "bench.safetensors"
        write_safetensors(file_path, size)
        port = free_port()
        log = (tmp / "node.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "node", "serve", "--data", str(data), "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/node/v1/health", timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"atrium serve did not start: {(tmp / 'node.log').read_text()[-2000:]}")
                    time.sleep(0.05)
            sha_times, upload_times, client_times, growth, disk_times = [], [], [], [], []
            sha256_file(file_path)  # warm the page cache
            for run in range(args.runs):
                model = api(port, "POST", "/api/node/v1/models", token, {"name": f"Bench {run}", "type": "Checkpoint"})
                version = api(port, "POST", f"/api/node/v1/models/{model['id']}/versions", token,
                              {"name": "v1", "base_model": "SD 1.5"})
                sha_times.append(sha256_file(file_path))
                client_times.append(client_alone(file_path, size, piece))
                disk_times.append(durable_write(data, size))
                before = rss_bytes(proc.pid)
                peak = [before]
                done = threading.Event()

                def sample() -> None:
                    while not done.wait(0.05):
                        peak[0] = max(peak[0], rss_bytes(proc.pid))

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                try:
                    upload_times.append(upload(port, token, version["id"], file_path, size, piece))
                finally:
                    done.set()
                    sampler.join()
                growth.append(peak[0] - before)
                sha_times.append(sha256_file(file_path))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
    sha = min(sha_times)
    up = min(upload_times)
    ratio = up / sha
    grow_mb = max(growth) / 1e6
    mib = size / 1024 ** 2
    print(f"{mib:,.0f} MiB safetensors, PATCH pieces of {args.piece_mib} MiB, {os.cpu_count()} CPUs, "
          f"best of {args.runs} run(s)")
    print(f"  sha256 of the file:      {sha:6.2f} s  {mib / sha:6.0f} MiB/s")
    print(f"  client alone (sink):     {min(client_times):6.2f} s  {mib / min(client_times):6.0f} MiB/s")
    disk = min(disk_times)
    print(f"  disk alone (write+fsync): {disk:5.2f} s  {mib / disk:6.0f} MiB/s  ({disk / sha:.2f}x sha256: "
          "a floor for a durable upload)")
    print(f"  upload to atrium (201):  {up:6.2f} s  {mib / up:6.0f} MiB/s")
    print(f"  ratio upload / sha256: {ratio:.2f}x (target <= {TARGET_RATIO:.1f}x: "
          f"{'met' if ratio <= TARGET_RATIO else 'MISSED'})")
    print(f"  node RSS growth during the upload: {grow_mb:.0f} MB (target < {TARGET_RSS_MB} MB: "
          f"{'met' if grow_mb < TARGET_RSS_MB else 'MISSED'})")


if __name__ == "__main__":
    main()
