"""A small HTTP/1.1 server for the token endpoint and /stats.

picows only accepts bodiless GET upgrade requests, so the form POST of the token endpoint needs a server
of its own. One request per connection (`Connection: close`): these endpoints are called a handful of
times, by curl, urllib and the recorder, and simplicity beats keep-alive here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Any

import orjson

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
READ_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # names lower-cased
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
        return cls(status, orjson.dumps(obj) + b"\n", "application/json", headers)

    @classmethod
    def error(cls, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
        return cls.json(status, {"error": message}, headers)

    def to_bytes(self) -> bytes:
        phrase = HTTPStatus(self.status).phrase
        lines = [f"HTTP/1.1 {self.status} {phrase}", f"Content-Type: {self.content_type}",
                 f"Content-Length: {len(self.body)}", "Connection: close", "Cache-Control: no-store"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


Handler = Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpServer:
    """Routes `{path: {method: handler}}`; unknown path 404, known path with another method 405."""

    def __init__(self, routes: Mapping[str, Mapping[str, Handler]]) -> None:
        self._routes = {path: dict(methods) for path, methods in routes.items()}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("HTTP server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._on_client, host, port, limit=MAX_HEADER_BYTES)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                request = await asyncio.wait_for(self._read_request(reader, writer), READ_TIMEOUT)
                response = await self._dispatch(request)
            except _BadRequest as exc:
                response = HttpResponse.error(exc.status, str(exc))
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            writer.write(response.to_bytes())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> HttpRequest:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request header too large") from None
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, "malformed header line")
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise _BadRequest(411, "chunked request bodies are not supported; send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _BadRequest(400, "bad Content-Length") from None
        if length < 0:
            raise _BadRequest(400, "bad Content-Length")
        if length > MAX_BODY_BYTES:
            raise _BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
        if length and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(length) if length else b""
        path, _, query = target.partition("?")
        return HttpRequest(method.upper(), path, query, MappingProxyType(headers), body)

    async def _dispatch(self, request: HttpRequest) -> HttpResponse:
        methods = self._routes.get(request.path) or self._routes.get(request.path.rstrip("/") or "/")
        if methods is None:
            return HttpResponse.error(404, f"no such endpoint: {request.path[:100]}")
        handler = methods.get(request.method)
        if handler is None:
            allow = ", ".join(sorted(methods))
            return HttpResponse.error(405, f"method {request.method[:20]} not allowed; use {allow}",
                                      (("Allow", allow),))
        try:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            log.exception("HTTP handler for %s %s failed", request.method, request.path)
            return HttpResponse.error(500, "internal error")
        assert isinstance(result, HttpResponse)
        return result
