"""``rstitch serve`` over HTTP on the tiny pair: protocol, attribution, errors, auth, metrics, batching, disconnects.

Every request goes through a real uvicorn server on a real socket. Answers are checked against the
same request run in-process through the adapters' core (greedy, float64: the same tokens, sources
and text), so the HTTP layer is shown to add and lose nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from rstitch_integrations.core import decode_call, prepare_call
from rstitch_server import StitchService

from serving import API_KEY, TINY_MODEL_ID

HELLO = [{"role": "user", "content": "What is 3 + 4?"}]


def local_answer(service: StitchService, messages: list[dict[str, Any]], **call: Any) -> tuple[str, list[str], list]:
    """(content, token sources, tool calls) of the request run in-process through the core."""
    prepared = prepare_call(service.engine, service.options, messages, call)
    steps = list(decode_call(service.engine, prepared, True, False))
    text = "".join(step.parsed.content for step in steps)
    calls = [c for step in steps for c in step.parsed.calls]
    return text, [step.event.source for step in steps if step.event is not None], calls


def sse_events(response: httpx.Response) -> list[Any]:
    """The JSON payloads of an SSE response, ``"[DONE]"`` kept as the string."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_health_and_models_name_the_served_pair(http: httpx.Client) -> None:
    assert http.get("/health").json()["status"] == "ok"
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [TINY_MODEL_ID]


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {API_KEY}", "Bearer"])
def test_a_missing_or_wrong_key_gets_401(tiny_server: tuple[str, StitchService], header: str | None) -> None:
    base, _ = tiny_server
    headers = {"Authorization": header} if header else {}
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
        response = httpx.request(method, base + path, headers=headers, json={"messages": HELLO})
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(base + "/health").status_code == 200  # only /v1 is guarded


def test_a_whole_answer_equals_the_in_process_one(http: httpx.Client, tiny_server: tuple[str, StitchService]) -> None:
    _, service = tiny_server
    body = http.post("/v1/chat/completions", json={"model": "any", "messages": HELLO, "max_tokens": 12}).json()
    text, sources, _ = local_answer(service, HELLO, max_tokens=12)
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": text}
    assert body["object"] == "chat.completion" and body["model"] == TINY_MODEL_ID
    assert body["rstitch"]["token_sources"] == sources
    stats = body["rstitch"]["stats"]
    assert stats["output_tokens"] == len(sources) == body["usage"]["completion_tokens"]
    assert stats["slm_tokens"] == sources.count("slm") and stats["llm_tokens"] == sources.count("llm")
    assert {"speedup", "speedup_basis", "switches_to_llm", "router"} <= set(stats)
    assert choice["finish_reason"] == ("length" if stats["finish_reason"] == "length" else "stop")
    assert body["usage"]["prompt_tokens"] == stats["prompt_tokens"]


def test_a_stream_adds_up_to_the_whole_answer(http: httpx.Client, tiny_server: tuple[str, StitchService]) -> None:
    _, service = tiny_server
    request = {"messages": HELLO, "max_tokens": 12, "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and "rstitch" in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage_chunk, final = chunks[-1], chunks[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 12
    assert final["choices"][0]["finish_reason"] == "length" and final["rstitch"]["stats"]["output_tokens"] == 12
    assert all("stats" not in c["rstitch"] for c in chunks[:-2])
    text, sources, _ = local_answer(service, HELLO, max_tokens=12)
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert streamed == text
    assert [s for c in chunks for s in c["rstitch"]["token_sources"]] == sources


def test_the_openai_client_reads_answers_streams_and_the_rstitch_field(tiny_server: tuple[str, StitchService]) -> None:
    base, service = tiny_server
    client = openai.OpenAI(base_url=base + "/v1", api_key=API_KEY)
    reply = client.chat.completions.create(model=TINY_MODEL_ID, messages=HELLO, max_tokens=10,
                                           extra_body={"threshold": 0.3})
    text, sources, _ = local_answer(service, HELLO, max_tokens=10, threshold=0.3)
    assert reply.choices[0].message.content == text
    assert reply.model_extra["rstitch"]["token_sources"] == sources
    assert reply.model_extra["rstitch"]["stats"]["threshold"] == 0.3
    pieces, streamed_sources, stats = [], [], None
    for chunk in client.chat.completions.create(model=TINY_MODEL_ID, messages=HELLO, max_tokens=10, stream=True,
                                                extra_body={"threshold": 0.3}):
        streamed_sources += chunk.model_extra["rstitch"]["token_sources"]
        stats = chunk.model_extra["rstitch"].get("stats", stats)
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == text and streamed_sources == sources and stats["output_tokens"] == len(sources)
    completion = client.completions.create(model=TINY_MODEL_ID, prompt="The quick brown", max_tokens=6)
    assert completion.usage.completion_tokens == len(completion.model_extra["rstitch"]["token_sources"]) == 6


BAD_REQUESTS = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    ({"messages": []}, "messages"),
    ({"messages": HELLO, "n": 2}, "n must be 1"),
    ({"messages": HELLO, "max_tokens": "many"}, "max_tokens"),
    ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"messages": HELLO, "temperature": -1}, "temperature"),
    ({"messages": HELLO, "stream": "yes please"}, "stream"),
    ({"messages": HELLO, "max_tokens": 100000}, "context window"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "wizard"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "text only"),
    ({"messages": HELLO, "tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools.0.function.name"),
    ({"messages": HELLO, "tools": [{"type": "function", "function": {"name": "f", "parameters": 5}}]},
     "tools.0.function.parameters"),
    ({"messages": HELLO, "tools": "all of them"}, "tools"),
    ({"messages": ["hi"]}, "messages.0"),
    ({"messages": [{"role": "user", "content": {"text": "hi"}}]}, "content must be a string or a list"),
    ({"messages": [{"content": "hi"}]}, "'role' string"),
    ({"messages": HELLO, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "names no bound tool"),
    ({"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}},
     ""),
    ({"messages": HELLO, "response_format": {"type": "xml"}}, "response_format"),
    ({"messages": HELLO, "quality": "superb"}, "quality"),
    ({"messages": HELLO, "quality": "fast", "threshold": 0.1}, "not both"),
    ({"messages": HELLO, "logprobs": True}, "logprobs"),
]


@pytest.mark.parametrize(("body", "says"), BAD_REQUESTS)
def test_a_bad_request_gets_a_400_that_says_what_to_fix_and_the_server_stays_up(
    http: httpx.Client, body: Any, says: str
) -> None:
    response = (http.post("/v1/chat/completions", content=body) if isinstance(body, bytes)
                else http.post("/v1/chat/completions", json=body))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and says in error["message"] and error["message"]
    # OpenAI's code for a prompt over the window (remote mode raises PromptTooLongError by it); else the status
    assert error["code"] == ("context_length_exceeded" if says == "context window" else 400)
    assert http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2}).status_code == 200


TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"enum": [1, 2, 3]}},
                   "required": ["city", "days"]}}}


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_forced_tool_call_is_valid_whole_and_streamed(http: httpx.Client, tool_choice: Any) -> None:
    request = {"messages": HELLO, "tools": [TOOL], "tool_choice": tool_choice, "max_tokens": 40}
    body = http.post("/v1/chat/completions", json=request).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), TOOL["function"]["parameters"])
    with http.stream("POST", "/v1/chat/completions", json=request | {"stream": True}) as response:
        chunks = sse_events(response)[:-1]
    fragments = [t for c in chunks for t in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(f["index"], f["function"]["name"], json.loads(f["function"]["arguments"])) for f in fragments] == [
        (0, "get_weather", json.loads(call["function"]["arguments"]))]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice_none_answers_in_text(http: httpx.Client) -> None:
    body = http.post("/v1/chat/completions", json={"messages": HELLO, "tools": [TOOL], "tool_choice": "none",
                                                   "max_tokens": 6}).json()
    assert "tool_calls" not in body["choices"][0]["message"] and body["choices"][0]["finish_reason"] != "tool_calls"


SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["S", "M", "L"]}},
          "required": ["ok", "size"]}


def test_json_schema_output_is_valid(http: httpx.Client) -> None:
    """(Free ``json_object`` answers are checked on the real pair: a random model's free JSON may not end.)"""
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
    body = http.post("/v1/chat/completions", json={"messages": HELLO, "response_format": response_format,
                                                   "max_tokens": 60}).json()
    assert body["rstitch"]["stats"]["finish_reason"] == "stop", body
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), SCHEMA | {"additionalProperties": False})


def test_stop_strings_cut_the_answer(http: httpx.Client, tiny_server: tuple[str, StitchService]) -> None:
    _, service = tiny_server
    full, _, _ = local_answer(service, HELLO, max_tokens=16)
    stop = full[4:6]  # a piece of what the pair writes
    body = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 16, "stop": [stop]}).json()
    content = body["choices"][0]["message"]["content"]
    assert content == full[: full.index(stop)] and body["choices"][0]["finish_reason"] == "stop"


def metric(text: str, name: str, labels: str = "") -> float:
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_metrics_count_what_was_served(http: httpx.Client) -> None:
    before = http.get("/metrics").text
    body = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 7}).json()
    after = http.get("/metrics").text
    stats = body["rstitch"]["stats"]
    for model in ("slm", "llm"):
        labels = f'{{model="{model}"}}'
        delta = metric(after, "rstitch_output_tokens_total", labels) - metric(before, "rstitch_output_tokens_total", labels)
        assert delta == stats[f"{model}_tokens"]
    assert metric(after, "rstitch_time_to_first_token_seconds_count") == metric(before, "rstitch_time_to_first_token_seconds_count") + 1
    assert metric(after, "rstitch_inter_token_latency_seconds_count") - metric(before, "rstitch_inter_token_latency_seconds_count") == 6
    ok = '{endpoint="/v1/chat/completions",status="200"}'
    assert metric(after, "rstitch_requests_total", ok) == metric(before, "rstitch_requests_total", ok) + 1
    for name in ("rstitch_switches_total", "rstitch_batch_size", "rstitch_queue_depth", "rstitch_speedup",
                 "rstitch_requests_running"):
        assert name in after


async def test_concurrent_streams_share_the_batch_and_each_gets_its_own_answer(
    tiny_server: tuple[str, StitchService],
) -> None:
    base, service = tiny_server
    prompts = [[{"role": "user", "content": f"Count to {n}."}] for n in range(1, 7)]
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=API_KEY)

    async def one(messages: list[dict[str, Any]]) -> tuple[str, list[str], dict[str, Any]]:
        text, sources, stats = "", [], {}
        async for chunk in await client.chat.completions.create(model="m", messages=messages, max_tokens=20,
                                                                stream=True):
            sources += chunk.model_extra["rstitch"]["token_sources"]
            stats = chunk.model_extra["rstitch"].get("stats", stats)
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        return text, sources, stats

    answers = await asyncio.gather(*(one(m) for m in prompts))
    for messages, (text, sources, _) in zip(prompts, answers):
        assert (text, sources) == local_answer(service, messages, max_tokens=20)[:2]
    assert max(stats["largest_batch"] for _, _, stats in answers) > 1


LONG = {"type": "regex", "pattern": "[a-z]{200}"}
"""An answer the grammar keeps going for 200 letters: the tiny pair cannot end it early."""


def test_a_client_that_goes_away_leaves_the_batch_and_the_other_stream_is_untouched(
    tiny_server: tuple[str, StitchService],
) -> None:
    base, service = tiny_server
    headers = {"Authorization": f"Bearer {API_KEY}"}
    survivor_messages = [{"role": "user", "content": "Write letters."}]
    survivor_request = {"messages": survivor_messages, "max_tokens": 200, "response_format": LONG, "stream": True}
    survivor_text: list[str] = []

    def survivor() -> None:
        with httpx.stream("POST", base + "/v1/chat/completions", json=survivor_request, headers=headers,
                          timeout=120) as response:
            for event in sse_events(response)[:-1]:
                survivor_text.append(event["choices"][0]["delta"].get("content", ""))

    disconnects = metric(httpx.get(base + "/metrics").text, "rstitch_client_disconnects_total")
    thread = threading.Thread(target=survivor)
    thread.start()
    with httpx.stream("POST", base + "/v1/chat/completions", headers=headers, timeout=120,
                      json={"messages": HELLO, "max_tokens": 200, "response_format": LONG, "stream": True}) as gone:
        lines = gone.iter_lines()
        for _ in range(6):  # a few tokens in, the client hangs up
            next(lines)
    deadline = time.monotonic() + 30
    while service.in_flight > 1 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.in_flight <= 1  # the abandoned request has been closed (it left the batch)
    thread.join(120)
    expected, _, _ = local_answer(service, survivor_messages, max_tokens=200, response_format=LONG)
    assert "".join(survivor_text) == expected and len(expected) == 200
    assert metric(httpx.get(base + "/metrics").text, "rstitch_client_disconnects_total") == disconnects + 1
