"""The client commands (`atrium publish`, `atrium models`, `atrium show`) against a real `atrium serve`,
and the node client's resumable uploads over a network that drops connections."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web

from node.app import create_app
from node.client import NodeClient, NodeError, NodeUnreachable
from node.core.config import Config
from node.core.plugins import PluginHost
from node.core.tables import Role
from tests.catalog_fixtures import A1111_PARAMETERS, pickle_bytes, png_with_parameters, safetensors_bytes
from tests.conftest import Api, atrium, free_port, http_json, start_serve, wait_healthy

AIR_LINE = re.compile(r"urn:air:sd1:lora:atrium:(\d+)@(\d+)")


@dataclass
class Node:
    url: str
    token: str
    data: Path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One served node for this module's command tests (each publishes under its own model names), with
    one creator, `maker`, whose token the tests publish with."""
    data = tmp_path_factory.mktemp("client") / "data"
    assert atrium("init", str(data)).returncode == 0
    added = atrium("users", "add", "maker", "--role", "creator", data=data)
    assert added.returncode == 0, added.stderr
    server = start_serve(data)
    try:
        wait_healthy(server)
        yield Node(url=server.url, token=added.stdout.splitlines()[-1], data=data)
    finally:
        server.proc.kill()
        server.proc.communicate(timeout=10)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"lora": tmp_path / "catstyle.safetensors", "image": tmp_path / "cat.png",
             "pickle": tmp_path / "sneaky.safetensors"}
    paths["lora"].write_bytes(safetensors_bytes(seed=3))
    paths["image"].write_bytes(png_with_parameters(A1111_PARAMETERS.format(model_hash="abcdef1234",
                                                                           lora_hash="0123456789")))
    paths["pickle"].write_bytes(pickle_bytes())
    return paths


def publish(node: Node, path: Path, *extra: str, name: str = "Cat Style") -> Any:
    return atrium("publish", str(path), "--name", name, "--type", "LORA", "--base-model", "SD 1.5",
                  "--node", node.url, "--token", node.token, *extra)


def test_publish_uploads_a_safetensors_with_an_image_and_prints_an_air_that_resolves(
        node: Node, files: dict[str, Path]) -> None:
    result = publish(node, files["lora"], "--tag", "cats", "--trigger", "catstyle", "--image", str(files["image"]),
                     name="Whiskers")
    assert result.returncode == 0, result.stderr
    air = result.stdout.splitlines()[-1]
    assert AIR_LINE.fullmatch(air), result.stdout
    assert node.token not in result.stdout + result.stderr
    assert "uploaded catstyle.safetensors" in result.stderr  # the plain progress line when not on a terminal
    status, version = http_json("GET", f"{node.url}/api/node/v1/air/{quote(air)}")
    assert status == 200, version
    [stored] = version["files"]
    assert stored["hashes"]["SHA256"] == hashlib.sha256(files["lora"].read_bytes()).hexdigest().upper()
    assert version["trainedWords"] == ["catstyle"] and version["baseModel"] == "SD 1.5"
    [image] = version["images"]
    assert image["meta"]["prompt"].startswith("a cat in a hat")
    status, listing = http_json("GET", f"{node.url}/api/v1/models?query=Whiskers")
    [model] = listing["items"]
    assert model["name"] == "Whiskers" and model["tags"] == ["cats"] and model["creator"]["username"] == "maker"
    assert model["modelVersions"][0]["air"] == air


def test_models_finds_a_published_model_by_query_as_a_table_and_as_json(node: Node, files: dict[str, Path]) -> None:
    air = publish(node, files["lora"], name="Orange Tabby").stdout.splitlines()[-1]
    found = atrium("models", "tabby", "--node", node.url)
    assert found.returncode == 0, found.stderr
    header, row = found.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "TYPE", "BASE", "CREATOR", "DOWNLOADS", "AIR"]
    assert re.fullmatch(rf"\d+\s+Orange Tabby\s+LORA\s+SD 1\.5\s+maker\s+0\s+{re.escape(air)}", row), row
    as_json = atrium("models", "--type", "LORA", "--json", "--node", node.url)
    assert '"name": "Orange Tabby"' in as_json.stdout
    nothing = atrium("models", "zebra", "--node", node.url)
    assert nothing.returncode == 0 and nothing.stdout.strip() == "no models match"


def test_show_prints_a_summary_with_the_sha256_and_download_url(node: Node, files: dict[str, Path]) -> None:
    air = publish(node, files["lora"], "--trigger", "catstyle", name="Calico").stdout.splitlines()[-1]
    sha256 = hashlib.sha256(files["lora"].read_bytes()).hexdigest().upper()
    shown = atrium("show", air, "--node", node.url)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert text.startswith("Calico (LORA)")
    assert re.search(r"creator:\s+maker", text) and re.search(r"trigger words:\s+catstyle", text)
    assert re.search(r"base model:\s+SD 1\.5", text)
    assert f"SHA256:   {sha256}" in text and "catstyle.safetensors" in text and "SafeTensor" in text
    version_id = AIR_LINE.fullmatch(air).group(2)  # type: ignore[union-attr]
    assert f"download: {node.url}/api/download/models/{version_id}" in text
    assert text.splitlines()[-1].strip() == f"AIR: {air}"
    model_id = AIR_LINE.fullmatch(air).group(1)  # type: ignore[union-attr]
    by_id = atrium("show", model_id, "--node", node.url)
    assert by_id.returncode == 0 and sha256 in by_id.stdout


def test_a_pickle_renamed_safetensors_exits_1_with_the_nodes_message_and_leaves_no_model(
        node: Node, files: dict[str, Path]) -> None:
    result = publish(node, files["pickle"], name="Sneaky")
    assert result.returncode == 1
    assert "is a Python pickle" in result.stderr and "Convert it to safetensors" in result.stderr
    assert "deleted the draft model" in result.stderr
    assert not AIR_LINE.search(result.stdout)
    model_id = re.search(r"created model (\d+)", result.stdout).group(1)  # type: ignore[union-attr]
    status, _ = http_json("GET", f"{node.url}/api/node/v1/models/{model_id}", token=node.token)
    assert status == 404
    assert http_json("GET", f"{node.url}/api/v1/models?query=Sneaky")[1]["items"] == []


def test_publish_without_a_token_exits_2_before_contacting_the_node(files: dict[str, Path]) -> None:
    result = atrium("publish", str(files["lora"]), "--name", "x", "--type", "LORA", "--base-model", "SD 1.5",
                    "--node", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "needs an API token" in result.stderr and "ATRIUM_TOKEN" in result.stderr


def test_an_unreachable_node_exits_1_with_one_clear_line(files: dict[str, Path]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("show", "urn:air:sd1:lora:atrium:1@1"),
                 ("publish", str(files["lora"]), "--name", "x", "--type", "LORA", "--base-model", "SD 1.5",
                  "--token", "atr_not_sent_anywhere")):
        result = atrium(*args, "--node", url)
        assert result.returncode == 1, args
        assert result.stderr == f"atrium: cannot reach the node at {url}: connection refused\n"


def test_the_node_and_token_come_from_the_environment_or_the_data_directory(
        node: Node, files: dict[str, Path]) -> None:
    env = {"ATRIUM_NODE": node.url, "ATRIUM_TOKEN": node.token}
    result = atrium("publish", str(files["lora"]), "--name", "From Env", "--type", "LORA",
                    "--base-model", "SD 1.5", env=env)
    assert result.returncode == 0, result.stderr
    air = result.stdout.splitlines()[-1]
    # Without --node or ATRIUM_NODE, the node in --data is asked, at its public URL.
    shown = atrium("show", air, data=node.data, env={"ATRIUM_NODE_PUBLIC_URL": node.url})
    assert shown.returncode == 0, shown.stderr
    assert "From Env (LORA)" in shown.stdout


def test_publish_adds_a_version_to_an_existing_model_and_draft_leaves_it_unpublished(
        node: Node, files: dict[str, Path]) -> None:
    first = publish(node, files["lora"]).stdout.splitlines()[-1]
    model_id = AIR_LINE.fullmatch(first).group(1)  # type: ignore[union-attr]
    other = files["lora"].with_name("catstyle-v2.safetensors")
    other.write_bytes(safetensors_bytes(seed=4))
    result = atrium("publish", str(other), "--model-id", model_id, "--version-name", "v2", "--base-model", "SD 1.5",
                    "--draft", "--node", node.url, "--token", node.token)
    assert result.returncode == 0, result.stderr
    draft_air = result.stdout.splitlines()[-1]
    assert draft_air.startswith(f"urn:air:sd1:lora:atrium:{model_id}@") and draft_air != first
    assert http_json("GET", f"{node.url}/api/node/v1/air/{quote(draft_air)}")[0] == 404  # not public yet
    assert http_json("GET", f"{node.url}/api/node/v1/air/{quote(draft_air)}", token=node.token)[0] == 200
    missing = atrium("publish", str(other), "--base-model", "SD 1.5", "--node", node.url, "--token", node.token)
    assert missing.returncode == 2 and "--name and --type" in missing.stderr


def test_a_refused_image_deletes_the_version_the_command_added(node: Node, files: dict[str, Path],
                                                                tmp_path: Path) -> None:
    first = publish(node, files["lora"], name="Tortoiseshell").stdout.splitlines()[-1]
    model_id = AIR_LINE.fullmatch(first).group(1)  # type: ignore[union-attr]
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are notes, not pixels")
    result = atrium("publish", str(files["lora"]), "--model-id", model_id, "--version-name", "v2",
                    "--base-model", "SD 1.5", "--image", str(not_an_image), "--node", node.url, "--token", node.token)
    assert result.returncode == 1
    assert re.search(r"atrium: deleted the draft version \d+ of model \d+ that this command created", result.stderr)
    status, model = http_json("GET", f"{node.url}/api/node/v1/models/{model_id}", token=node.token)
    assert status == 200 and [v["name"] for v in model["modelVersions"]] == ["v1"]


# -- the client's resumable uploads ------------------------------------------------------------


class CuttingProxy:
    """A TCP relay in front of the node that drops connections part-way through a request, as a flaky
    network does: the node sees a real connection loss and keeps the bytes that arrived."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.budget: int | None = None  # bytes towards the node before the next cut
        self.cuts_left = 0
        self.cuts = 0
        self.forwarded = 0  # bytes passed on towards the node
        self.server: asyncio.Server | None = None

    def cut(self, after: int, times: int = 1) -> None:
        """Drop the connection that carries byte `after` (counted from now) towards the node, `times` times."""
        self.budget, self.cuts_left = after, times
        self._after = after

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        def drop() -> None:
            writer.transport.abort()
            up_writer.transport.abort()

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, towards_node: bool) -> None:
            try:
                while data := await src.read(65536):
                    if towards_node and self.budget is not None and self.cuts_left:
                        if len(data) >= self.budget:
                            dst.write(data[:self.budget])
                            self.forwarded += self.budget
                            await dst.drain()
                            self.cuts_left -= 1
                            self.cuts += 1
                            self.budget = self._after
                            drop()
                            return
                        self.budget -= len(data)
                    if towards_node:
                        self.forwarded += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))


@dataclass
class Flaky:
    api: Api
    proxy: CuttingProxy
    url: str
    token: str
    patch_failures: list[int]  # status codes to answer the next PATCH requests with, before the node sees them

    def client(self, **options: Any) -> NodeClient:
        return NodeClient(self.url, self.token, piece_bytes=1024 * 1024, retry_delay=0.01, **options)

    async def version(self) -> int:
        async with self.client() as node:
            model = await node.post("/api/node/v1/models", {"name": "Resumed", "type": "LORA"})
            version = await node.post(f"/api/node/v1/models/{model['id']}/versions",
                                      {"name": "v1", "base_model": "SD 1.5"})
        return version["id"]


@pytest.fixture
async def flaky(aiohttp_client: Any, sqlite_config: Config) -> AsyncIterator[Flaky]:
    """The real app behind a proxy that can cut connections, with a switch to answer PATCHes with a 5xx."""
    failures: list[int] = []

    @web.middleware
    async def failing_patches(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "PATCH" and failures:
            return web.json_response({"error": "unavailable", "detail": "try again"}, status=failures.pop(0))
        return await handler(request)

    app = create_app(sqlite_config, migrate=True, plugins=PluginHost([], available={}))
    app.middlewares.insert(0, failing_patches)
    client = await aiohttp_client(app)
    api = Api(client=client, app=app)
    proxy = CuttingProxy(client.port)
    url = await proxy.start()
    try:
        yield Flaky(api=api, proxy=proxy, url=url, token=await api.user("maker", Role.CREATOR),
                    patch_failures=failures)
    finally:
        await proxy.stop()


def lora_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.safetensors"
    path.write_bytes(safetensors_bytes(seed=9, tensors=4, size=800))  # about 5 MiB: several pieces
    return path


async def test_an_upload_resumes_from_the_nodes_offset_after_dropped_connections(flaky: Flaky,
                                                                                   tmp_path: Path) -> None:
    path = lora_file(tmp_path)
    version_id = await flaky.version()
    seen: list[int] = []
    flaky.proxy.cut(after=1_500_000, times=2)  # mid-way through the second piece, then the fourth
    async with flaky.client() as node:
        stored = await node.upload_file(version_id, path, lambda done, total: seen.append(done))
    assert flaky.proxy.cuts == 2
    assert stored["hashes"]["SHA256"] == hashlib.sha256(path.read_bytes()).hexdigest().upper()
    size = path.stat().st_size
    assert seen[-1] == size and max(seen) == size
    # The client went on from what the node held (at least each whole piece it had taken), not from
    # the start: starting over would have sent the first 1.5 MB twice more.
    assert flaky.proxy.forwarded < size + 2 * 1024 * 1024


async def test_an_upload_resumes_after_a_5xx_answer(flaky: Flaky, tmp_path: Path) -> None:
    path = lora_file(tmp_path)
    version_id = await flaky.version()
    flaky.patch_failures.extend([503, 502])
    async with flaky.client() as node:
        stored = await node.upload_file(version_id, path)
    assert flaky.patch_failures == []
    assert stored["hashes"]["SHA256"] == hashlib.sha256(path.read_bytes()).hexdigest().upper()


async def test_an_upload_gives_up_after_bounded_retries(flaky: Flaky, tmp_path: Path) -> None:
    path = lora_file(tmp_path)
    version_id = await flaky.version()
    flaky.proxy.cut(after=100_000, times=100)
    async with flaky.client(retries=3) as node:
        with pytest.raises(NodeUnreachable, match="lost the connection to the node"):
            await node.upload_file(version_id, path)
    assert flaky.proxy.cuts <= 4  # the first try and three retries (a 409 after a cut counts as a try)


async def test_a_refused_upload_raises_the_nodes_message_without_retrying(flaky: Flaky, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle_bytes())
    version_id = await flaky.version()
    async with flaky.client() as node:
        with pytest.raises(NodeError, match="is a Python pickle") as refused:
            await node.upload_file(version_id, path)
    assert refused.value.status == 400
