"""The OpenAI-compatible provider against the mock's chat route, purpose-built fakes and raw
misbehaving servers, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from batchpizza.errors import (
    BadReply,
    BatchpizzaError,
    HTTPStatusError,
    ModelNotFound,
    ProviderError,
    RequestTimeout,
    TransportError,
    UsageError,
    describe,
)
from batchpizza.mock import tokens
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import MockServer
from batchpizza.providers import Provider
from batchpizza.providers.openai import OpenAIAPI
from batchpizza.records import Answer, Prompt, RateInfo
from batchpizza.rows import format_prompt

KEY = "sk-proj-Zq8vT3xLr0aKkWm2Yp9Hc4Nd"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def prompt(text: str, row_id: str = "r1") -> Prompt:
    return Prompt(row_id, text, ({"role": "user", "content": text},))


def chat(messages: list[dict[str, str]], body: Mapping[str, Any] | None = None) -> Prompt:
    return Prompt("r1", format_prompt(messages), tuple(messages), body)


def completion(content: object = "ciao", **extra: Any) -> dict[str, Any]:
    """A chat.completion as OpenAI sends it."""
    message = {"role": "assistant", "content": content, "refusal": None}
    body: dict[str, Any] = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1724858089,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 24, "completion_tokens": 8, "total_tokens": 32},
    }
    body.update(extra)
    return body


class Fake:
    """A chat completions server that records each request and replies as scripted."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.base_url = ""
        self._handler = handler
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.path_qs, dict(request.headers), body))
        if self._handler is not None:
            return await self._handler(request)
        return web.json_response(completion(), headers={"x-request-id": "req_42"})

    def json(self, index: int = -1) -> Any:
        return json.loads(self.requests[index][2])

    async def __aenter__(self) -> Fake:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def replying(
    status: int = 200,
    body: object = None,
    *,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        data = raw if raw is not None else json.dumps(body).encode()
        return web.Response(
            status=status,
            body=data,
            headers={"content-type": "application/json", **(headers or {})},
        )

    return handler


@contextlib.asynccontextmanager
async def raw_server(reply: bytes) -> AsyncIterator[str]:
    """A server that is not HTTP-correct: reads the request, writes `reply` verbatim, hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
            writer.write(reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()


def api(base_url: str, **options: Any) -> OpenAIAPI:
    options.setdefault("model", "gpt-4o-mini")
    options.setdefault("timeout", 5.0)
    return OpenAIAPI(base_url, **options)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def srv() -> AsyncIterator[MockServer]:
    async with MockServer(MockConfig(seed=1)) as server:
        yield server


async def failure(provider: OpenAIAPI, session: aiohttp.ClientSession, p: Prompt) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await provider.ask(session, p)
    return info.value


# --- the provider as the runner sees it ---------------------------------------------------------


def test_it_is_a_provider_with_token_columns_and_401_fatal() -> None:
    provider: Provider = api("http://127.0.0.1:1/v1")
    assert provider.name == "openai"
    assert provider.extra_columns == ("prompt_tokens", "completion_tokens", "tokens_estimated")
    assert provider.fatal_statuses == frozenset({401})
    assert provider.detects_refusals is False


# --- what is sent -------------------------------------------------------------------------------


async def test_a_prompt_row_is_one_user_message(session: aiohttp.ClientSession) -> None:
    async with Fake() as fake:
        answer = await api(fake.base_url).ask(session, prompt("Margherita?"))
    path, headers, _ = fake.requests[0]
    assert path == "/v1/chat/completions"
    assert fake.json() == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Margherita?"}],
    }
    assert headers["Content-Type"] == "application/json"
    assert "Authorization" not in headers  # no key given, none sent
    assert answer.text == "ciao"


async def test_message_rows_are_sent_as_they_are(session: aiohttp.ClientSession) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Ciao!"},
        {"role": "user", "content": "Margherita — or marinara? 🍕"},
    ]
    async with Fake() as fake:
        await api(fake.base_url).ask(session, chat(messages))
    assert fake.json()["messages"] == messages


def test_a_token_cap_given_as_a_param_replaces_a_lines_cap_under_either_name() -> None:
    # OpenAI refuses a request that sets both max_tokens and max_completion_tokens: a line's
    # max_completion_tokens under --param max_tokens must not reach the request beside it.
    line = chat([{"role": "user", "content": "q"}], {"max_completion_tokens": 500, "seed": 1})
    body = api("http://127.0.0.1:9", params={"max_tokens": 7}).body(line)
    assert (body["max_tokens"], "max_completion_tokens" in body, body["seed"]) == (7, False, 1)
    line = chat([{"role": "user", "content": "q"}], {"max_tokens": 500})
    body = api("http://127.0.0.1:9", params={"max_completion_tokens": 7}).body(line)
    assert (body["max_completion_tokens"], "max_tokens" in body) == (7, False)
    # Without a cap in --param, the line's own stands.
    assert api("http://127.0.0.1:9").body(line)["max_tokens"] == 500


async def test_params_reach_the_body_exactly(session: aiohttp.ClientSession) -> None:
    params = {
        "temperature": 0.2,
        "top_p": 1,
        "max_tokens": 7,
        "seed": 42,
        "logprobs": True,
        "n": 1,
        "stop": ["\n\n", "END"],
        "user": None,
        "logit_bias": {"50256": -100},
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "pizza",
                "strict": True,
                "schema": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        },
    }
    async with Fake() as fake:
        await api(fake.base_url, params=params).ask(session, prompt("q"))
    sent = fake.json()
    assert {k: v for k, v in sent.items() if k not in ("model", "messages")} == params
    assert type(sent["top_p"]) is int and type(sent["temperature"]) is float
    assert list(sent)[:2] == ["model", "messages"]


async def test_a_batch_line_body_is_sent_as_given_with_its_model(
    session: aiohttp.ClientSession,
) -> None:
    line = {"model": "line-model", "temperature": 0, "max_tokens": 5, "metadata": {"k": "v"}}
    messages = [{"role": "user", "content": "What is 2+2?"}]
    async with Fake() as fake:
        await api(fake.base_url, model=None).ask(session, chat(messages, line))
    assert fake.json() == {**line, "messages": messages}


async def test_the_users_model_and_params_win_over_the_batch_lines(
    session: aiohttp.ClientSession,
) -> None:
    line = {"model": "line-model", "temperature": 1.0, "seed": 7, "stream": True}
    messages = [{"role": "user", "content": "q"}]
    async with Fake() as fake:
        provider = api(fake.base_url, model="user-model", params={"temperature": 0})
        await provider.ask(session, chat(messages, line))
    # A batch file's stream flag is dropped: the Batch API never streams, and neither do we.
    assert fake.json() == {"model": "user-model", "messages": messages, "temperature": 0, "seed": 7}


async def test_without_a_model_none_is_sent(session: aiohttp.ClientSession) -> None:
    async with Fake() as fake:
        answer = await api(fake.base_url, model=None).ask(session, prompt("q"))
    assert "model" not in fake.json()  # llama.cpp and vLLM serve their one model
    assert answer.model == "gpt-4o-mini-2024-07-18"


async def test_the_key_is_sent_as_a_bearer_token(session: aiohttp.ClientSession) -> None:
    async with Fake() as fake:
        await api(fake.base_url, api_key=f"  {KEY}\n").ask(session, prompt("q"))
    assert fake.requests[0][1]["Authorization"] == f"Bearer {KEY}"  # white space trimmed


@pytest.mark.parametrize("key", ["", "   ", None])
async def test_an_empty_key_sends_no_authorization(
    session: aiohttp.ClientSession, key: str | None
) -> None:
    async with Fake() as fake:
        await api(fake.base_url, api_key=key).ask(session, prompt("q"))
    assert "Authorization" not in fake.requests[0][1]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"model": "x"}, "--model"),
        ({"messages": []}, "messages"),
        ({"stream": True}, "stream"),
    ],
)
def test_params_the_provider_owns_are_usage_errors(params: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        api("http://127.0.0.1:1/v1", params=params)


def test_stream_false_is_harmless() -> None:
    assert api("http://127.0.0.1:1/v1", params={"stream": False}).params == {"stream": False}


@pytest.mark.parametrize("base", ["ftp://host/v1", "localhost:8000/v1", "/v1", "http:///v1"])
def test_a_base_url_that_is_no_http_url_is_a_usage_error(base: str) -> None:
    with pytest.raises(UsageError, match="base URL"):
        api(base)


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://h:8000/v1", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),
        ("http://h/v1/chat/completions", "http://h/v1/chat/completions"),
        (
            "https://x.openai.azure.com/openai/deployments/d?api-version=2024-06-01",
            "https://x.openai.azure.com/openai/deployments/d/chat/completions"
            "?api-version=2024-06-01",
        ),
    ],
)
def test_the_endpoint_is_base_url_plus_chat_completions(base: str, url: str) -> None:
    assert str(api(base).url) == url


async def test_preview_is_what_ask_sends_with_the_key_masked(
    session: aiohttp.ClientSession,
) -> None:
    p = chat([{"role": "user", "content": "q"}], {"model": "m", "temperature": 0})
    async with Fake() as fake:
        provider = api(fake.base_url, model=None, api_key=KEY, params={"seed": 1})
        await provider.ask(session, p)
        url, headers, body = provider.preview(p)
    assert url == fake.base_url + "/chat/completions"
    assert headers["authorization"] == "Bearer ***"
    assert body == fake.requests[0][2]
    assert KEY not in repr((url, headers, body))


# --- what comes back ----------------------------------------------------------------------------


async def test_the_mock_answers_with_its_deterministic_answer(
    srv: MockServer, session: aiohttp.ClientSession
) -> None:
    answer = await api(srv.base_url + "/v1").ask(session, prompt("Quanto costa una pizza?"))
    assert answer.text == mock_answer("Quanto costa una pizza?")
    assert answer.finish_reason == "stop"
    assert answer.model == "gpt-4o-mini"  # echoed
    assert answer.prompt_tokens == tokens.prompt_usage(["Quanto costa una pizza?"])
    assert answer.completion_tokens == tokens.count(answer.text)
    assert answer.response_id is not None and answer.response_id.startswith("chatcmpl-")
    assert answer.request_id == "req_mock_1"
    assert answer.rate is None  # the mock announces limits only when it has one


async def test_messages_are_answered_from_their_formatted_prompt(
    srv: MockServer, session: aiohttp.ClientSession
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    answer = await api(srv.base_url + "/v1").ask(session, chat(messages))
    assert answer.text == mock_answer(format_prompt(messages))


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(
    srv: MockServer, session: aiohttp.ClientSession
) -> None:
    provider = api(srv.base_url + "/v1", params={"max_tokens": 2})
    answer = await provider.ask(session, prompt("q"))
    assert answer.finish_reason == "length"
    assert answer.text == mock_answer("q")[:6]  # "pizza", "-"
    assert (answer.prompt_tokens, answer.completion_tokens) == (7, 2)


async def test_every_field_of_a_real_completion_is_read(session: aiohttp.ClientSession) -> None:
    async with Fake() as fake:
        provider = api(fake.base_url, model="gpt-4o-mini", keep_bodies=True)
        answer = await provider.ask(session, prompt("2+2?"))
    assert answer == Answer(
        "ciao",
        "stop",
        "gpt-4o-mini-2024-07-18",  # the server's model, not the alias asked for
        prompt_tokens=24,
        completion_tokens=8,
        response_id="chatcmpl-abc123",
        request_id="req_42",
        body=json.dumps(completion()).encode(),  # kept as it came, for --format openai-batch
    )


@pytest.mark.parametrize("finish", ["length", "content_filter", "tool_calls", "eos"])
async def test_the_servers_finish_reason_is_kept(
    session: aiohttp.ClientSession, finish: str
) -> None:
    body = completion()
    body["choices"][0]["finish_reason"] = finish
    async with Fake(replying(body=body)) as fake:
        assert (await api(fake.base_url).ask(session, prompt("q"))).finish_reason == finish


async def test_a_reply_without_model_usage_or_finish_reason_still_answers(
    session: aiohttp.ClientSession,
) -> None:
    body = {"choices": [{"message": {"content": "ok"}}]}  # a minimal server
    async with Fake(replying(body=body)) as fake:
        answer = await api(fake.base_url, model="local").ask(session, prompt("q"))
    assert answer == Answer("ok", "stop", "local")  # and no body: none asked for


async def test_usage_counts_sent_as_whole_floats_are_read_as_those_counts(
    session: aiohttp.ClientSession,
) -> None:
    # "prompt_tokens": 10.0 (a server that counts in floats) was read as null; 10.5 stays null.
    body = completion(usage={"prompt_tokens": 10.0, "completion_tokens": 2.5})
    async with Fake(replying(body=body)) as fake:
        answer = await api(fake.base_url).ask(session, prompt("q"))
    assert (answer.prompt_tokens, answer.completion_tokens) == (10, None)
    assert type(answer.prompt_tokens) is int


async def test_content_parts_are_joined(session: aiohttp.ClientSession) -> None:
    parts = [{"type": "text", "text": "Mar"}, {"type": "text", "text": "gherita"}]
    async with Fake(replying(body=completion(parts))) as fake:
        assert (await api(fake.base_url).ask(session, prompt("q"))).text == "Margherita"


async def test_a_models_refusal_is_an_answer_marked_refusal(
    session: aiohttp.ClientSession,
) -> None:
    body = completion(None)
    body["choices"][0]["message"]["refusal"] = "I can't help with that."
    async with Fake(replying(body=body)) as fake:
        answer = await api(fake.base_url).ask(session, prompt("q"))
    assert (answer.text, answer.finish_reason) == ("I can't help with that.", "refusal")


async def test_tool_calls_are_the_answer_as_json(session: aiohttp.ClientSession) -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "order", "arguments": '{"pizza": "margherita"}'},
        }
    ]
    body = completion(None)
    body["choices"][0]["message"]["tool_calls"] = calls
    body["choices"][0]["finish_reason"] = "tool_calls"
    async with Fake(replying(body=body)) as fake:
        answer = await api(fake.base_url).ask(session, prompt("q"))
    assert answer.finish_reason == "tool_calls"
    assert json.loads(answer.text) == calls


def _without_choices() -> dict[str, Any]:
    return completion(choices=[])


def _null_content() -> dict[str, Any]:
    return completion(None)


def _no_message() -> dict[str, Any]:
    body = completion()
    del body["choices"][0]["message"]
    return body


def _finish_error() -> dict[str, Any]:
    body = completion("partial")
    body["choices"][0]["finish_reason"] = "error"  # OpenRouter: the upstream broke mid-answer
    return body


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (_without_choices(), "without choices"),
        ({"object": "chat.completion"}, "without choices"),
        (_null_content(), "content is null"),
        (_no_message(), "message"),
        (_finish_error(), "finish_reason 'error'"),
        ([completion()], "without choices"),
        ("just a string", "without choices"),
        ({"error": {"message": "upstream overloaded"}}, "upstream overloaded"),
    ],
    ids=[
        "choices-empty",
        "choices-missing",
        "content-null",
        "message-missing",
        "finish-error",
        "a-list",
        "a-string",
        "error-with-200",
    ],
)
async def test_a_2xx_without_an_answer_is_a_retryable_bad_reply(
    session: aiohttp.ClientSession, body: object, match: str
) -> None:
    async with Fake(replying(body=body)) as fake:
        exc = await failure(api(fake.base_url), session, prompt("q"))
    assert isinstance(exc, BadReply)
    assert exc.retryable and exc.status == 200
    assert match in exc.message


def _http(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize(
    "reply",
    [
        _http("200 OK", json.dumps(completion(choices=[])).encode()),
        _http("200 OK", json.dumps(completion(None)).encode()),
        _http("200 OK", b"<html><body>Just a moment...</body></html>", "text/html"),
        _http("200 OK", json.dumps(completion()).encode()[:60]),
        _http("200 OK", b""),
        _http("201 Created", b"null"),
    ],
    ids=["choices-empty", "content-null", "html", "truncated-json", "empty-body", "json-null"],
)
async def test_a_raw_server_without_an_answer_is_a_retryable_bad_reply(
    session: aiohttp.ClientSession, reply: bytes
) -> None:
    async with raw_server(reply) as base_url:
        exc = await failure(api(base_url), session, prompt("q"))
    assert type(exc) is BadReply
    assert exc.retryable


async def test_a_body_cut_short_on_the_wire_is_a_retryable_transport_error(
    session: aiohttp.ClientSession,
) -> None:
    body = json.dumps(completion()).encode()
    reply = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body[:40]
    async with raw_server(reply) as base_url:
        exc = await failure(api(base_url), session, prompt("q"))
    assert isinstance(exc, TransportError)
    assert exc.retryable


async def test_a_hang_is_a_request_timeout(srv: MockServer, session: aiohttp.ClientSession) -> None:
    exc = await failure(api(srv.base_url + "/v1", timeout=0.2), session, prompt("[[hang]]"))
    assert isinstance(exc, RequestTimeout)


# --- errors -------------------------------------------------------------------------------------


async def test_a_wrong_key_is_a_fatal_401(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(api_key=KEY)) as server:
        provider = api(server.base_url + "/v1", api_key="sk-wrong-0000000000")
        exc = await failure(provider, session, prompt("q"))
        assert (await api(server.base_url + "/v1", api_key=KEY).ask(session, prompt("q"))).text
    assert type(exc) is HTTPStatusError
    assert exc.status == 401 and exc.status in provider.fatal_statuses
    assert not exc.retryable
    assert exc.fatal and exc.exit_code == 2
    assert exc.message == (
        "HTTP 401 Unauthorized: Incorrect API key provided. [the API key is wrong]"
    )


async def test_a_missing_key_says_none_was_sent(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(api_key=KEY)) as server:
        exc = await failure(api(server.base_url + "/v1"), session, prompt("q"))
    assert exc.status == 401 and exc.fatal
    assert "no API key was sent" in exc.message


async def test_an_unknown_model_is_one_fatal_model_not_found(
    session: aiohttp.ClientSession,
) -> None:
    async with MockServer(MockConfig(models=("llama-3-8b",))) as server:
        exc = await failure(api(server.base_url + "/v1", model="gpt-5"), session, prompt("q"))
    assert isinstance(exc, ModelNotFound)
    assert (exc.status, exc.model) == (404, "gpt-5")
    assert exc.fatal and not exc.retryable and exc.exit_code == 2
    assert "The model `gpt-5` does not exist" in exc.message
    assert "does not serve model 'gpt-5'" in exc.message


@pytest.mark.parametrize(
    ("status", "error"),
    [
        # vLLM
        (404, {"object": "error", "message": "The model `m` does not exist.", "code": 404}),
        # Ollama
        (404, {"error": {"message": 'model "m" not found, try pulling it first', "code": None}}),
        # OpenAI, a project without access
        (403, {"error": {"message": "Project has no access to model `m`", "code": None}}),
        (403, {"error": {"message": "no access", "code": "model_not_found"}}),
        # a gateway that names the parameter
        (400, {"error": {"message": "Bad model", "param": "model"}}),
        # LiteLLM's proxy, as it answered in a trial run (1.108)
        (
            400,
            {
                "error": {
                    "message": "/chat/completions: Invalid model name passed in model=m. "
                    "Call `/v1/models` to view available models for your key.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "400",
                }
            },
        ),
        # Azure
        (404, {"error": {"code": "DeploymentNotFound", "message": "The API deployment ..."}}),
    ],
    ids=["vllm", "ollama", "openai-403", "code-model-not-found", "param-model", "litellm", "azure"],
)
async def test_model_errors_in_other_servers_words_are_model_not_found(
    session: aiohttp.ClientSession, status: int, error: dict[str, Any]
) -> None:
    async with Fake(replying(status, error)) as fake:
        exc = await failure(api(fake.base_url, model="m"), session, prompt("q"))
    assert isinstance(exc, ModelNotFound) and exc.fatal


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "max_tokens is too large for model m: 9999999"),
        (400, "Unsupported parameter: 'temperature' is not supported with this model."),
        (400, "The model `m` does not support 'logprobs'."),
        (403, "Your request was flagged"),
        (400, "Invalid value for 'temperature': must be at most 2."),
        (403, "model-m2 and mx are not m-ish"),  # "m" only inside other words
    ],
)
async def test_other_client_errors_are_per_row_and_not_retried(
    session: aiohttp.ClientSession, status: int, message: str
) -> None:
    async with Fake(replying(status, {"error": {"message": message}})) as fake:
        exc = await failure(api(fake.base_url, model="m"), session, prompt("q"))
    assert type(exc) is HTTPStatusError
    assert not exc.fatal and not exc.retryable


async def test_a_model_error_without_a_model_sent_says_so(session: aiohttp.ClientSession) -> None:
    error = {"error": {"message": "you must provide a model parameter", "code": None}}
    async with Fake(replying(404, error)) as fake:
        exc = await failure(api(fake.base_url, model=None), session, prompt("q"))
    assert isinstance(exc, ModelNotFound) and exc.model is None
    assert "no model was sent" in exc.message


async def test_a_404_that_is_not_about_the_model_is_a_fatal_wrong_url(
    srv: MockServer, session: aiohttp.ClientSession
) -> None:
    exc = await failure(api(srv.base_url), session, prompt("q"))  # forgot /v1
    assert type(exc) is HTTPStatusError
    assert exc.status == 404 and exc.fatal
    assert f"no chat completions API at {srv.base_url}/chat/completions" in exc.message


@pytest.mark.parametrize(
    ("status", "payload", "text"),
    [
        (
            400,
            b'{"error": {"message": "Invalid value for \'temperature\'.", "type": "x"}}',
            "HTTP 400 Bad Request: Invalid value for 'temperature'.",
        ),
        (
            422,
            b'{"detail": [{"loc": ["body"], "msg": "field required"}]}',
            "HTTP 422 Unprocessable Entity: field required",
        ),
        (400, b'{"detail": "bad  request\\n body"}', "HTTP 400 Bad Request: bad request body"),
        (500, b'{"error": "the oven is on fire"}', "HTTP 500 Internal Server Error: the oven"),
        (502, b"<html>Bad gateway</html>", "HTTP 502 Bad Gateway: <html>Bad gateway</html>"),
        (503, b"", "HTTP 503 Service Unavailable"),
    ],
)
async def test_the_servers_error_message_is_in_the_error_text(
    session: aiohttp.ClientSession, status: int, payload: bytes, text: str
) -> None:
    async with Fake(replying(status, raw=payload)) as fake:
        exc = await failure(api(fake.base_url), session, prompt("q"))
    assert isinstance(exc, HTTPStatusError)
    assert exc.message.startswith(text)
    assert exc.retryable == (status >= 500)


async def test_a_long_error_message_is_cut_to_one_line(session: aiohttp.ClientSession) -> None:
    message = "word\n" * 500
    async with Fake(replying(400, {"error": {"message": message}})) as fake:
        exc = await failure(api(fake.base_url), session, prompt("q"))
    assert "\n" not in exc.message and len(exc.message) < 400


async def test_429_with_retry_after_ms_gives_retry_after_in_seconds(
    session: aiohttp.ClientSession,
) -> None:
    async with MockServer(MockConfig(rate_limit=1, retry_after="0.25")) as server:
        provider = api(server.base_url + "/v1")
        await provider.ask(session, prompt("first"))
        exc = await failure(provider, session, prompt("second"))
    assert isinstance(exc, HTTPStatusError)
    assert exc.status == 429 and exc.retryable and not exc.fatal
    assert exc.retry_after == 0.25
    assert exc.rate is not None and exc.rate.remaining == 0
    assert exc.request_id == "req_mock_2"


async def test_retry_after_ms_wins_over_retry_after(session: aiohttp.ClientSession) -> None:
    headers = {"retry-after": "7", "retry-after-ms": "1500"}
    async with Fake(replying(429, {"error": {"message": "slow down"}}, headers=headers)) as fake:
        exc = await failure(api(fake.base_url), session, prompt("q"))
    assert exc.retry_after == 1.5


async def test_directives_work_in_message_content(
    srv: MockServer, session: aiohttp.ClientSession
) -> None:
    provider = api(srv.base_url + "/v1")
    messages = [{"role": "system", "content": "x"}, {"role": "user", "content": "[[fail-first:1]]"}]
    exc = await failure(provider, session, chat(messages))
    assert exc.status == 503 and exc.retryable and exc.retry_after == 0
    assert (await provider.ask(session, chat(messages))).text == mock_answer(
        format_prompt(messages)
    )
    exc = await failure(provider, session, prompt("[[status:429]]"))
    assert exc.status == 429 and exc.retry_after == 1


async def test_ratelimit_headers_reach_answers_and_errors(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(rate_limit=3)) as server:
        provider = api(server.base_url + "/v1")
        answers = [await provider.ask(session, prompt(f"q{i}")) for i in range(3)]
        exc = await failure(provider, session, prompt("q3"))
    rates = [a.rate for a in answers]
    assert all(r is not None and r.limit == 3 for r in rates)
    assert [r.remaining for r in rates if r is not None] == [2, 1, 0]
    assert all(r is not None and r.reset_s is not None and 0 < r.reset_s <= 1 for r in rates)
    assert exc.rate == RateInfo(limit=3, remaining=0, reset_s=exc.rate.reset_s if exc.rate else 0)


async def test_openai_ratelimit_headers_are_parsed(session: aiohttp.ClientSession) -> None:
    headers = {
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-reset-requests": "6m0s",
        "x-ratelimit-limit-tokens": "30000000",
        "x-request-id": "req_abc",
    }
    async with Fake(replying(body=completion(), headers=headers)) as fake:
        answer = await api(fake.base_url).ask(session, prompt("q"))
    assert answer.rate == RateInfo(limit=10000, remaining=9999, reset_s=360, limit_tokens=30000000)
    assert answer.request_id == "req_abc"


# --- the key ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 500])
async def test_the_key_never_appears_in_errors_or_reprs(
    session: aiohttp.ClientSession, status: int
) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        message = f"bad key {auth!r} (the raw key was {auth.removeprefix('Bearer ')})"
        return web.json_response({"error": {"message": message}}, status=status)

    async with Fake(echo) as fake:
        provider = api(fake.base_url, api_key=KEY, model="m")
        exc = await failure(provider, session, prompt("q"))
    assert "bad key" in exc.message  # the message is kept, only the key is cut out
    for text in (str(exc), repr(exc), exc.message, describe(exc), repr(provider)):
        assert KEY not in text
    assert KEY not in repr(vars(provider))
    assert KEY not in repr(provider.preview(prompt("q")))


async def test_the_key_never_appears_in_a_bad_reply(session: aiohttp.ClientSession) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        return web.Response(text=f"echo {request.headers['Authorization']}")

    async with Fake(echo) as fake:
        exc = await failure(api(fake.base_url, api_key=KEY), session, prompt("q"))
    assert isinstance(exc, BadReply)
    assert "echo" in exc.message and KEY not in str(exc)


def test_a_key_a_header_cannot_carry_is_refused_without_quoting_it() -> None:
    with pytest.raises(UsageError) as info:
        api("http://127.0.0.1:1/v1", api_key="sk-abc def\nghi")
    assert "abc" not in str(info.value)
    assert isinstance(info.value, BatchpizzaError) and info.value.exit_code == 2
