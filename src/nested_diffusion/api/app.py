"""The FastAPI app of ``nested-diffusion api``: the OpenAI Images API (``POST /v1/images/generations``,
``GET /v1/models``) over an ``ImageService``. Needs the ``[api]`` extra (FastAPI + uvicorn).

Security defaults: an optional Bearer key (``api_key``; compared in constant time) on every ``/v1`` route,
a cap on the request body (``max_body_bytes``), and errors only ever as OpenAI-shaped JSON
(``{"error": {"message", "type", "param", "code"}}``) — never a traceback.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .service import ApiError, ImageService, response_body, response_events

log = logging.getLogger("nested_diffusion.api")
MAX_BODY_BYTES = 64 * 1024


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class EventStream(Response):
    """Server-sent events from an async iterator of event dicts, watching for the client's disconnect the whole
    time (``on_disconnect`` is called once, at once, whichever ASGI version the server speaks)."""

    media_type = "text/event-stream"

    def __init__(self, events: Any, on_disconnect: Any):
        self.status_code, self.background = 200, None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
                            (b"x-accel-buffering", b"no")]
        self.events, self.on_disconnect = events, on_disconnect

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as tg:
            async def watch():
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        self.on_disconnect()
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch)
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            try:
                async for event in self.events:
                    data = json.dumps(event, separators=(",", ":"))
                    chunk = f"event: {event.get('type', 'message')}\ndata: {data}\n\n".encode()
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                self.on_disconnect()
            tg.cancel_scope.cancel()


class Guard:
    """Pure ASGI middleware (streams pass through untouched): the API key on /v1 routes and the body cap by
    Content-Length (bodies without one are capped while read, ``_read_body``)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        error = None
        if self.expected is not None and scope["path"].startswith("/v1") \
                and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            error = ApiError("Authorization: missing or wrong API key; send 'Authorization: Bearer KEY' with the "
                             "server's --api-key", None, 401, code="invalid_api_key")
        length = headers.get(b"content-length")
        if error is None and length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            error = ApiError(f"body: {length.decode(errors='replace')} bytes; this server accepts at most "
                             f"{self.max_body_bytes}", None, 413, code="request_too_large")
        if error is not None:
            return await error_response(error)(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(service: ImageService, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    app = FastAPI(title="nested-diffusion", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        what = {404: f"{request.url.path}: no such route; the API serves GET /v1/models and POST "
                     f"/v1/images/generations", 405: f"{request.method} {request.url.path}: method not allowed"}
        return error_response(ApiError(what.get(exc.status_code, str(exc.detail)), None, exc.status_code))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(ApiError("internal server error (the server log has the details)", None, 500,
                                       "server_error"))

    @app.get("/")
    async def root():
        return {"service": "nested-diffusion", "models": [m["id"] for m in service.models()["data"]],
                "endpoints": ["GET /v1/models", "POST /v1/images/generations"]}

    @app.get("/v1/models")
    async def models():
        return service.models()

    @app.post("/v1/images/generations")
    async def generations(request: Request):
        try:
            raw = await _read_body(request, max_body_bytes)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise ApiError(f"body: not valid JSON ({e}); send a JSON object such as "
                               f'{{"prompt": "sneaker"}}', None) from None
            req = await anyio.to_thread.run_sync(service.parse, body)
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()
            ticket = service.submit(req, lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev))
        except ApiError as e:
            return error_response(e)
        seeds = req.prepared.seeds
        if req.stream:
            return EventStream(_events(queue, req, seeds), lambda: service.cancel(ticket))
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(queue.get(), 0.1)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        service.cancel(ticket)
                        return Response(status_code=499)
                    continue
                if ev["type"] == "error":
                    return error_response(ev["error"])
                if ev["type"] == "done":
                    return JSONResponse(response_body(ev, req, seeds))
        except asyncio.CancelledError:
            service.cancel(ticket)
            raise

    return app


async def _events(queue: asyncio.Queue, req, seeds):
    while True:
        ev = await queue.get()
        if ev["type"] == "error":
            yield {"type": "error", **ev["error"].body()}
            return
        if ev["type"] == "done":
            for out in response_events(ev, req, seeds):
                yield out
            return
        yield ev


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(f"body: more than {limit} bytes; this server accepts at most {limit}", None, 413,
                           code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def app_from_env() -> FastAPI:
    """The app of ``nested-diffusion api --workers N``: each uvicorn worker builds its own service from the
    settings the command put in ``NESTED_DIFFUSION_API`` (JSON), so replicas share nothing."""
    from .server import build_service
    settings = json.loads(os.environ["NESTED_DIFFUSION_API"])
    service = build_service(settings)
    return create_app(service, settings.get("api_key") or os.environ.get("NESTED_DIFFUSION_API_KEY"),
                      settings["max_body_bytes"])
