"""A small HTTP client of an Atrium node, for the `atrium` commands that talk to a node (publish,
models, show) and for scripts.

A non-2xx answer becomes a `NodeError` carrying the node's own `detail`; a node that cannot be reached
becomes `NodeUnreachable`. Model files go up through the node's resumable uploads: in pieces, read from
disk in a worker thread so memory stays flat, and a dropped connection or a 5xx answer is resumed from
the offset the node reports.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import quote

import aiohttp

from node import __version__
from node.core.errors import AtriumError, InvalidInput

# Bytes per PATCH request; one piece is at most this much on the wire at a time.
PIECE_BYTES = 8 * 1024 * 1024
# Bytes read from disk (in a worker thread) per write to the socket.
READ_BYTES = 1024 * 1024
# Failed attempts in a row (no byte accepted in between) before an upload gives up.
UPLOAD_RETRIES = 5
# First wait before resuming; it doubles with each failure in a row, up to MAX_RETRY_DELAY.
RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 30.0
UPLOAD_OFFSET = "Upload-Offset"
CONNECT_TIMEOUT = 15.0
# A node may take a while to answer the last piece of a big file (it finishes the hashes and stores it).
READ_TIMEOUT = 300.0

Progress = Callable[[int, int], None]
"""Called with (bytes the node holds, total bytes) as an upload goes on."""


class NodeError(AtriumError):
    """The node answered with an error; `detail` is the node's own message."""

    code = "node_error"

    def __init__(self, detail: str, *, status: int, code: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.status = status


class NodeUnreachable(AtriumError):
    """The node could not be reached (refused connection, unknown host, timeout, dropped connection)."""

    code = "node_unreachable"


class UploadOutcomeUnknown(NodeError):
    """The connection dropped as the last bytes went out and the node no longer knows the upload:
    it most likely completed. Look at the version's files to be sure."""

    code = "upload_outcome_unknown"


def _error_from(status: int, text: str, reason: str | None) -> NodeError:
    """The node's `{"error", "detail"}` body as an exception; a plain-text body (from a proxy) as is."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return NodeError(body["detail"], status=status, code=str(body.get("error") or "error"))
    words = " ".join(text.split())[:200] or reason or "no explanation"
    return NodeError(f"the node answered {status}: {words}", status=status)


def _unreachable(base_url: str, exc: BaseException) -> NodeUnreachable:
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        # asyncio words a refusal "Connect call failed ('127.0.0.1', 8000)"; say what it means.
        why = ("connection refused" if isinstance(error, ConnectionRefusedError)
               else getattr(error, "strerror", None) or str(error or exc))
        return NodeUnreachable(f"cannot reach the node at {base_url}: {why}")
    if isinstance(exc, asyncio.TimeoutError):
        return NodeUnreachable(f"the node at {base_url} did not answer in time")
    return NodeUnreachable(f"lost the connection to the node at {base_url}: {exc or type(exc).__name__}")


class NodeClient:
    """An HTTP client of one node: `async with NodeClient(url, token) as node: await node.get(...)`."""

    def __init__(self, base_url: str, token: str | None = None, *, piece_bytes: int = PIECE_BYTES,
                 retries: int = UPLOAD_RETRIES, retry_delay: float = RETRY_DELAY) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInput(f"the node URL must start with http:// or https://; got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.piece_bytes = piece_bytes
        self.retries = retries
        self.retry_delay = retry_delay
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> NodeClient:
        headers = {"User-Agent": f"atrium/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        self._session = aiohttp.ClientSession(headers=headers, timeout=timeout)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use NodeClient in `async with`")
        return self._session

    def url(self, path: str) -> str:
        """An absolute URL for a node path (`/api/...`); absolute URLs pass through."""
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    # -- JSON calls ----------------------------------------------------------------------------

    async def request(self, method: str, path: str, *, json_body: Any = None, data: Any = None,
                      params: Mapping[str, Any] | None = None,
                      headers: Mapping[str, str] | None = None) -> Any:
        """Call the node and return its decoded JSON answer; raises `NodeError` on a non-2xx answer
        and `NodeUnreachable` when the node cannot be reached."""
        try:
            async with self.session.request(method, self.url(path), json=json_body, data=data,
                                            params=params, headers=headers) as response:
                text = await response.text()
                if response.status >= 400:
                    raise _error_from(response.status, text, response.reason)
        except aiohttp.ClientResponseError as exc:
            raise NodeError(f"the node answered {exc.status}: {exc.message}", status=exc.status) from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _unreachable(self.base_url, exc) from None
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise NodeError(f"the node's answer to {method} {path} is not JSON", status=response.status) from None

    async def get_bytes(self, path: str, *, limit: int = 64 * 1024 * 1024) -> bytes:
        """A non-JSON answer's body (a manifest, a `.torrent`), at most `limit` bytes; errors as `request`."""
        try:
            async with self.session.get(self.url(path)) as response:
                if response.status >= 400:
                    raise _error_from(response.status, await response.text(), response.reason)
                body = bytearray()
                # read(n) returns what has arrived, not n bytes: read to the end, stopping past the limit.
                async for chunk in response.content.iter_chunked(256 * 1024):
                    body += chunk
                    if len(body) > limit:
                        raise NodeError(f"the node's answer to GET {path} is larger than {limit} bytes",
                                        status=response.status)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _unreachable(self.base_url, exc) from None
        return bytes(body)

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.request("POST", path, json_body=body)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)

    async def resolve_air(self, air: str) -> Any:
        """The model version an AIR names (with its model's name and type)."""
        return await self.get("/api/node/v1/air/" + quote(air, safe=":@+.-_"))

    # -- jobs ----------------------------------------------------------------------------------

    async def submit_job(self, kind: str, params: Mapping[str, Any]) -> Any:
        """Queue a job on the node; returns the job's JSON (status pending)."""
        return await self.post("/api/node/v1/jobs", {"kind": kind, "params": dict(params)})

    async def job(self, job_id: int) -> Any:
        return await self.get(f"/api/node/v1/jobs/{int(job_id)}")

    async def jobs(self, *, all_users: bool = False, status: str | None = None, kind: str | None = None,
                   limit: int | None = None) -> Any:
        return await self.get("/api/node/v1/jobs", all="1" if all_users else None, status=status, kind=kind,
                              limit=limit)

    async def cancel_job(self, job_id: int) -> Any:
        return await self.post(f"/api/node/v1/jobs/{int(job_id)}/cancel")

    async def job_events(self, job_id: int) -> AsyncIterator[tuple[str, Any]]:
        """The job's Server-Sent Events as (event, data) until the node ends the stream; NodeUnreachable
        when the connection drops."""
        try:
            async with self.session.get(self.url(f"/api/node/v1/jobs/{int(job_id)}/events"),
                                        headers={"Accept": "text/event-stream"}) as response:
                if response.status >= 400:
                    raise _error_from(response.status, await response.text(), response.reason)
                name, data = "message", []
                async for raw in response.content:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if not line:
                        if data:
                            yield name, json.loads("\n".join(data))
                        name, data = "message", []
                    elif line.startswith("event:"):
                        name = line[len("event:"):].strip()
                    elif line.startswith("data:"):
                        data.append(line[len("data:"):].strip())
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _unreachable(self.base_url, exc) from None

    # -- files ---------------------------------------------------------------------------------

    async def add_image(self, version_id: int, path: Path, *, nsfw_level: int = 1) -> Any:
        """Upload an example image (PNG, JPEG or WebP) of a version; its metadata is read by the node."""
        data = await asyncio.to_thread(path.read_bytes)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return await self.request("POST", f"/api/node/v1/versions/{version_id}/images", data=data,
                                  params={"nsfw_level": str(nsfw_level)}, headers={"Content-Type": mime})

    async def upload_file(self, version_id: int, path: Path, progress: Progress | None = None, *,
                          file_type: str = "Model", filename: str | None = None) -> Any:
        """Upload a model file to a version and return the node's description of the stored file.

        The file goes in PATCH requests of `piece_bytes`. After a dropped connection, a timeout or a
        5xx answer, the node is asked for the offset it holds and the upload continues from there,
        waiting `retry_delay` (doubling) before each try, at most `retries` failures in a row. A 4xx
        answer (a refused file) raises `NodeError` at once: the node has discarded the upload.
        """
        size = (await asyncio.to_thread(os.stat, path)).st_size
        upload = await self.post(f"/api/node/v1/versions/{version_id}/uploads",
                                 {"filename": filename or path.name, "size": size, "type": file_type})
        url = upload["url"]
        offset = int(upload.get("offset") or 0)
        failures = 0
        handle: BinaryIO = await asyncio.to_thread(open, path, "rb")
        try:
            if progress:
                progress(offset, size)
            while True:
                length = min(self.piece_bytes, size - offset)
                try:
                    answer = await self._send_piece(url, handle, offset, length, size, progress)
                except NodeError as exc:
                    if exc.status < 500 and exc.status != 409:
                        raise
                    error: AtriumError = exc
                except NodeUnreachable as exc:
                    error = exc
                else:
                    failures = 0
                    if "file" in answer:
                        if progress:
                            progress(size, size)
                        return answer["file"]
                    offset = int(answer["offset"])
                    continue
                failures, offset = await self._resume(url, error, failures, offset, offset + length >= size)
                if progress:
                    progress(offset, size)
        finally:
            await asyncio.to_thread(handle.close)

    async def _resume(self, url: str, error: AtriumError, failures: int, tried: int,
                      sent_to_end: bool) -> tuple[int, int]:
        """After a failed piece: (failures in a row, the offset the node holds), or raise when the
        upload cannot go on."""
        conflict = error if isinstance(error, NodeError) and error.status == 409 else None
        wait = conflict is None  # a 409 needs no wait: the node simply holds another offset
        while True:
            failures += 1
            if failures > self.retries:
                raise error
            if wait:
                await asyncio.sleep(min(self.retry_delay * 2 ** (failures - 1), MAX_RETRY_DELAY))
            wait = True
            try:
                held = int((await self.get(url))["offset"])
            except NodeError as exc:
                if exc.status == 404 and sent_to_end and conflict is None:
                    raise UploadOutcomeUnknown(
                        "the connection dropped as the last bytes went out and the node no longer knows "
                        "the upload: it most likely completed; check the version's files", status=404) from None
                if exc.status == 404:
                    raise NodeError("the node dropped the upload after the connection failed (it may have "
                                    f"refused the file; the first error was: {error.detail})", status=404) from None
                if exc.status < 500:
                    raise
                error = exc
                continue
            except NodeUnreachable as exc:
                error = exc
                continue
            if conflict is not None and held == tried:
                raise conflict  # not a question of offsets: the node refuses these bytes (e.g. a duplicate)
            return failures, held

    async def _send_piece(self, url: str, handle: BinaryIO, offset: int, length: int, size: int,
                          progress: Progress | None) -> Any:
        shrank: list[int] = []

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            while sent < length:
                chunk = await asyncio.to_thread(_read_at, handle, offset + sent, min(READ_BYTES, length - sent))
                if not chunk:
                    shrank.append(offset + sent)
                    raise EOFError  # aborts the request: the node must not take a short piece as whole
                sent += len(chunk)
                yield chunk
                if progress:
                    progress(offset + sent, size)

        try:
            return await self.request("PATCH", url, data=body(),
                                      headers={UPLOAD_OFFSET: str(offset), "Content-Length": str(length),
                                               "Content-Type": "application/octet-stream"})
        except NodeUnreachable:
            if shrank:
                raise InvalidInput(f"the file shrank while it was being uploaded (it ends at byte {shrank[0]}); "
                                   "upload it again once it is complete") from None
            raise


def _read_at(handle: BinaryIO, offset: int, length: int) -> bytes:
    handle.seek(offset)
    return handle.read(length)
