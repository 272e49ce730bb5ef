"""`atrium pull`: from an AIR, a hash or a URL to a verified file in the folder a UI reads, resuming
after an interruption and refusing what the node's key did not sign."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import libtorrent as lt
import pytest
from aiohttp import web

from node.cli import main
from node.core.identity import create_identity
from node.core.manifests import sign_manifest
from node.pull import folder_for
from tests.conftest import TEST_SWARM_ENV
from tests.swarm_fixtures import Cluster, pull_process, wait_until


def pull(*args: str) -> tuple[int, str, str]:
    """Run `atrium pull` in a subprocess, as a user would; (exit code, stdout, stderr)."""
    process = pull_process(*args)
    out, err = process.communicate(timeout=90)
    return process.returncode, out, err


def test_each_layout_puts_the_file_where_its_ui_looks(cluster: Cluster, tmp_path: Path) -> None:
    sha256 = cluster.file["hashes"]["SHA256"]
    download_url = f"{cluster.alpha.url}/api/download/models/{cluster.version['id']}?fileId={cluster.file['id']}"
    for target, layout, expected in (
            (cluster.air, "a1111", "models/Lora/catstyle.safetensors"),
            (sha256, "comfyui", "models/loras/catstyle.safetensors"),
            (download_url, "flat", "catstyle.safetensors")):
        root = tmp_path / layout
        code, out, err = pull(target, "--node", cluster.alpha.url, "--to", str(root), "--layout", layout)
        assert code == 0, err
        assert out.strip() == str(root / expected)
        assert (root / expected).read_bytes() == cluster.data
        assert "verified against the manifest" in err and "ETA" in err  # the progress line
        assert not (root / ".atrium-partial").exists()
    # Pulling again finds the file in place and checks it instead of downloading it.
    code, _out, err = pull(cluster.air, "--node", cluster.alpha.url, "--to", str(tmp_path / "a1111"),
                           "--layout", "a1111")
    assert code == 0 and "already in" in err and "verified" in err, err


def test_every_model_type_has_a_folder_in_each_ui_layout(tmp_path: Path) -> None:
    assert folder_for(tmp_path, "a1111", "Checkpoint") == tmp_path / "models/Stable-diffusion"
    assert folder_for(tmp_path, "a1111", "TextualInversion") == tmp_path / "embeddings"
    assert folder_for(tmp_path, "a1111", "Checkpoint", "VAE") == tmp_path / "models/VAE"
    assert folder_for(tmp_path, "comfyui", "Checkpoint") == tmp_path / "models/checkpoints"
    assert folder_for(tmp_path, "comfyui", "VAE") == tmp_path / "models/vae"
    assert folder_for(tmp_path, "comfyui", "TextualInversion") == tmp_path / "models/embeddings"
    assert folder_for(tmp_path, "comfyui", "Wildcards") == tmp_path  # no standard place: the folder itself
    assert folder_for(tmp_path, "flat", "LORA") == tmp_path


def _pieces_on_disk(resume: Path) -> int:
    try:
        return sum(lt.read_resume_data(resume.read_bytes()).have_pieces)
    except Exception:  # being replaced at this moment
        return 0


def test_a_pull_killed_mid_download_resumes_where_it_stopped(cluster: Cluster, tmp_path: Path) -> None:
    slow = pull_process(cluster.air, "--node", cluster.alpha.url, "--to", str(tmp_path), "--peers-only",
                        "--max-rate", "1M")
    try:
        resume = wait_until(lambda: next(iter((tmp_path / ".atrium-partial").rglob("resume.dat")), None),
                            timeout=30, what="resume data is written")
        wait_until(lambda: _pieces_on_disk(resume) >= 4, timeout=30, what="some pieces are saved")
    finally:
        slow.send_signal(signal.SIGKILL)
        slow.communicate(timeout=10)
    assert not (tmp_path / "catstyle.safetensors").exists()  # nothing half-written in the folder
    code, out, err = pull(cluster.air, "--node", cluster.alpha.url, "--to", str(tmp_path))
    assert code == 0, err
    assert "resuming" in err and "already here" in err, err
    kept = float(err.split("resuming, ", 1)[1].split(" MiB", 1)[0])
    assert kept >= 1.0, err  # at least the 4 saved pieces of 256 KiB were not fetched again
    assert (tmp_path / "catstyle.safetensors").read_bytes() == cluster.data
    assert not (tmp_path / ".atrium-partial").exists()


async def test_a_manifest_signed_by_another_key_is_refused(cluster: Cluster, tmp_path: Path,
                                                          aiohttp_server: Any) -> None:
    """A node (here a proxy in front of alpha) that hands out a manifest signed by a key other than its
    own: the pull stops before downloading anything."""
    stranger = create_identity(tmp_path / "stranger.key")
    real = cluster.alpha.raw(f"/api/node/v1/versions/{cluster.version['id']}/manifest")
    statement = json.loads(base64.b64decode(json.loads(real)["payload"]))
    statement["predicate"]["node"]["id"] = stranger.node_id
    forged = sign_manifest(stranger, statement)

    async def proxy(request: web.Request) -> web.Response:
        if request.path.endswith("/manifest"):
            return web.Response(body=forged, content_type="application/json")
        async with aiohttp.ClientSession() as session:
            async with session.get(cluster.alpha.url + request.path_qs) as answer:
                return web.Response(body=await answer.read(), status=answer.status,
                                    content_type=answer.content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", proxy)
    server = await aiohttp_server(app, host="127.0.0.1")
    node_url = f"http://127.0.0.1:{server.port}"
    for extra in ([], ["--key", stranger.node_id]):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "node", "pull", cluster.air, "--node", node_url, "--to", str(tmp_path / "ui"),
            "--listen", "127.0.0.1:0", *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**_env(), **TEST_SWARM_ENV})
        _out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 1, err
        words = "not signed by" if not extra else "not the pinned"
        assert words in err.decode(), err
    assert not (tmp_path / "ui").exists()  # refused before a byte was downloaded


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}


def test_bad_targets_and_options_get_a_clear_message_and_an_exit_code(
        cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = ["--node", cluster.alpha.url, "--listen", "127.0.0.1:0", "--to", str(tmp_path)]
    cases = [
        (["urn:air:sd1:lora:alpha:999@999", *node], 1, "no model version 999"),
        (["urn:air:sd1:lora:elsewhere:1@1", *node], 1, "which this node ('alpha') does not follow"),
        (["hello", *node], 1, "not an AIR"),
        ([f"{cluster.alpha.url}/about", *node], 1, "not a URL of a model"),
        ([cluster.air, *node, "--peer", "nowhere"], 2, "HOST:PORT"),
        ([cluster.air, *node, "--max-rate", "fast"], 2, "--max-rate"),
        # No --node, no ATRIUM_NODE and no node in --data (an empty folder: the test must not see an
        # ./atrium-data that the README's quick start may have made in the working directory).
        ([cluster.air, "--listen", "127.0.0.1:0", "--data", str(tmp_path / "no-node")], 2, "does not name a node"),
    ]
    for args, code, words in cases:
        assert main(["pull", *args]) == code, args
        err = capsys.readouterr().err
        assert words in err, (args, err)
    # A different file already in the way is left alone.
    (tmp_path / "catstyle.safetensors").write_bytes(b"my own file")
    assert main(["pull", cluster.air, *node]) == 1
    assert "exists and is not the signed file" in capsys.readouterr().err
    assert (tmp_path / "catstyle.safetensors").read_bytes() == b"my own file"
    with pytest.raises(SystemExit) as exit_info:
        main(["pull", cluster.air, *node, "--layout", "invokeai"])
    assert exit_info.value.code == 2


async def test_the_node_client_reads_a_body_that_arrives_in_pieces_to_the_end(aiohttp_server: Any) -> None:
    """A .torrent of a big file is ~100 KB: it reaches the client in several reads."""
    from node.client import NodeClient, NodeError

    body = bytes(range(256)) * 4096  # 1 MiB

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for offset in range(0, len(body), 64 * 1024):
            await response.write(body[offset:offset + 64 * 1024])
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/big", slow)
    server = await aiohttp_server(app, host="127.0.0.1")
    async with NodeClient(f"http://127.0.0.1:{server.port}") as client:
        assert await client.get_bytes("/big") == body
        with pytest.raises(NodeError, match="larger than"):
            await client.get_bytes("/big", limit=100_000)
