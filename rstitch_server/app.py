"""The HTTP layer: an OpenAI-compatible FastAPI app over one ``StitchService``.

Routes: ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /v1/models``,
``POST /v1/chat/completions``, ``POST /v1/completions``. With an API key every ``/v1`` route needs
``Authorization: Bearer <key>`` (else 401). Every error is OpenAI-shaped
(``{"error": {"message", "type", "param", "code"}}``): bad JSON, a field of the wrong type, an
option rstitch cannot honour, a prompt over the context window, a bad tool schema -> 400; an
unexpected fault -> 500, and the server goes on. While the server drains (``state.draining``, set
on SIGTERM) new ``/v1`` requests get 503 and the requests in flight finish.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from rstitch_engine import RStitchError
from rstitch_integrations.answer_parsing import AnswerStep

from .protocol import ChatCompletionRequest, CompletionRequest, RequestError, validation_message
from .service import RunningCall, StitchService
from .wire import Reply, sse

log = logging.getLogger("rstitch_server")


def create_app(service: StitchService, api_key: str | None = None) -> FastAPI:
    """The server's app over ``service``; ``api_key`` (when set) guards every ``/v1`` route."""
    app = FastAPI(title="rstitch", description="OpenAI-compatible server for R-Stitch stitched decoding")
    app.state.service = service
    app.state.draining = False

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if path.startswith("/v1"):
            if app.state.draining:
                return _error(RequestError("the server is shutting down; retry on another replica", 503,
                                           "service_unavailable"), service, path)
            if api_key is not None and not _authorised(request, api_key):
                return _error(RequestError("missing or wrong API key: send 'Authorization: Bearer <key>'", 401,
                                           "authentication_error"), service, path)
        try:
            return await call_next(request)
        except Exception:  # a fault of ours: say so, stay up
            log.exception("unhandled error on %s", path)
            return _error(RequestError("internal server error", 500, "server_error"), service, path)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "draining" if app.state.draining else "ok", "model": service.model_id,
                "in_flight": service.in_flight, "pid": os.getpid()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": service.model_id, "object": "model", "created": 0,
                                            "owned_by": "rstitch"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _complete(service, request, ChatCompletionRequest, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(service, request, CompletionRequest, "text")

    return app


def _authorised(request: Request, api_key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), api_key.encode())


def _error(error: RequestError, service: StitchService, path: str) -> JSONResponse:
    service.metrics.requests.labels(path, str(error.status)).inc()
    return JSONResponse(error.body(), status_code=error.status)


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise RequestError(validation_message(error)) from None


async def _complete(service: StitchService, request: Request, model: type[BaseModel], kind: str) -> Response:
    path = request.url.path
    try:
        body = await _parse(request, model)
        running = await (service.open_chat(body) if kind == "chat" else service.open_completion(body))
    except RequestError as error:
        return _error(error, service, path)
    except RStitchError as error:  # what the engine or the core refused: a bad tool schema, a prompt too long
        return _error(RequestError.refused(error), service, path)
    reply = Reply(service.model_id, kind, running.prompt_tokens)  # type: ignore[arg-type]
    if kind == "text":
        reply.id = reply.id.replace("chatcmpl-", "cmpl-")
    service.metrics.requests.labels(path, "200").inc()
    if body.stream:
        return StreamingResponse(_stream(running, reply, body.include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        return JSONResponse(await _whole(running, reply))
    except (RStitchError, TimeoutError) as error:
        return _error(RequestError.refused(error), service, path)


async def _whole(running: RunningCall, reply: Reply) -> dict[str, Any]:
    answer, sources, entropies = AnswerStep(), [], []
    async with aclosing(running.steps()) as steps:
        async for step in steps:
            answer = answer.then(step.parsed)
            if step.event is not None:
                sources.append(step.event.source)
                entropies.append(step.event.entropy)
            if step.stats is not None:
                return reply.response(answer, sources, entropies, step.stats)
    raise RuntimeError("the call ended without stats")


async def _stream(running: RunningCall, reply: Reply, include_usage: bool) -> AsyncIterator[str]:
    """SSE: a role chunk, one chunk per kept token, the final chunk (finish reason, stats), usage, ``[DONE]``."""
    if reply.kind == "chat":
        yield sse(reply.chunk(None, role=True) | {"rstitch": {"token_sources": [], "token_entropies": [],
                                                              "prompt_tokens": reply.prompt_tokens}})
    try:
        async with aclosing(running.steps()) as steps:
            async for step in steps:
                if step.stats is not None:
                    yield sse(reply.chunk(step.parsed, stats=step.stats))
                    if include_usage:
                        yield sse(reply.usage_chunk(step.stats))
                    break
                assert step.event is not None
                yield sse(reply.chunk(step.parsed, [step.event], in_reasoning=step.in_reasoning))
    except (RStitchError, TimeoutError) as error:  # mid-stream: the status is sent, the error goes in the stream
        yield sse(RequestError.refused(error).body())
    except Exception:
        log.exception("stream failed")
        yield sse(RequestError("internal server error", 500, "server_error").body())
    yield sse("[DONE]")


