"""Lines of an OpenAI Batch API output file, from stored results."""

from __future__ import annotations

import json

import pytest

from batchpizza.sinks.openai_batch import batch_output_line


def test_an_answered_row_is_a_batch_line_with_a_chat_completion() -> None:
    line = batch_output_line(
        "request-1",
        answer="2 + 2 equals 4.",
        finish_reason="stop",
        model="gpt-4o-mini-2024-07-18",
        prompt_tokens=24,
        completion_tokens=8,
        response_id="chatcmpl-A1",
        request_id="af0bac0d",
        created=1724858089,
    )
    assert line == {
        "id": line["id"],
        "custom_id": "request-1",
        "response": {
            "status_code": 200,
            "request_id": "af0bac0d",
            "body": {
                "id": "chatcmpl-A1",
                "object": "chat.completion",
                "created": 1724858089,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "2 + 2 equals 4.",
                            "refusal": None,
                        },
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 24, "completion_tokens": 8, "total_tokens": 32},
            },
        },
        "error": None,
    }
    assert line["id"].startswith("batch_req_")
    json.dumps(line)  # every value is JSON


def test_batch_line_ids_are_stable_and_distinct() -> None:
    def ids(custom_id: str) -> tuple[str, str, str]:
        line = batch_output_line(custom_id, answer="a", finish_reason="stop")
        return line["id"], line["response"]["request_id"], line["response"]["body"]["id"]

    assert ids("a") == ids("a")
    assert len({*ids("a"), *ids("b")}) == 6
    line = batch_output_line("a", answer="a", finish_reason="length", model=None)
    assert line["response"]["body"]["usage"] is None  # unknown counts are not made up
    assert line["response"]["body"]["choices"][0]["finish_reason"] == "length"


def test_a_refusal_and_tool_calls_are_rebuilt_as_openai_sends_them() -> None:
    refused = batch_output_line("r", answer="I can't.", finish_reason="refusal")
    choice = refused["response"]["body"]["choices"][0]
    assert choice["message"]["content"] is None
    assert choice["message"]["refusal"] == "I can't."
    assert choice["finish_reason"] == "stop"
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    tools = batch_output_line("t", answer=json.dumps(calls), finish_reason="tool_calls")
    message = tools["response"]["body"]["choices"][0]["message"]
    assert (message["content"], message["tool_calls"]) == (None, calls)


def test_a_failed_row_is_a_batch_line_with_an_error() -> None:
    line = batch_output_line(
        "x",
        answer=None,
        finish_reason="error",
        error="HTTP 503 after 6 attempts",
        status_code=503,
        request_id="req_9",
    )
    assert line["error"] is None  # as in OpenAI's batch error files: the response says it
    assert line["response"]["status_code"] == 503
    assert line["response"]["request_id"] == "req_9"
    assert line["response"]["body"]["error"]["message"] == "HTTP 503 after 6 attempts"


@pytest.mark.parametrize(
    ("finish", "code"),
    [
        ("error", "request_failed"),
        ("misuse", "refused"),
        ("invalid", "invalid_request"),
        ("pending", "batch_expired"),
    ],
)
def test_unanswered_rows_without_a_status_have_no_response(finish: str, code: str) -> None:
    line = batch_output_line("x", answer=None, finish_reason=finish, error=None)
    assert line["response"] is None
    assert line["error"]["code"] == code
    assert line["error"]["message"]


def test_a_kept_body_is_the_line_body_as_the_server_sent_it() -> None:
    body = {"id": "chatcmpl-B", "object": "chat.completion", "created": 1724858089,
            "model": "m-2024", "system_fingerprint": "fp_1", "service_tier": "default",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}  # fmt: skip
    line = batch_output_line("c", answer="hi", finish_reason="stop", body=json.dumps(body).encode())
    assert line["response"]["body"] == body
    error = {"error": {"message": "too long", "type": "invalid_request_error", "param": None,
                       "code": "context_length_exceeded"}}  # fmt: skip
    failed = batch_output_line(
        "c", answer=None, finish_reason="error", error="HTTP 400", status_code=400,
        body=json.dumps(error).encode(),
    )  # fmt: skip
    assert failed["response"] == {
        "status_code": 400,
        "request_id": failed["response"]["request_id"],
        "body": error,
    }
    assert failed["error"] is None


def test_a_kept_body_that_is_no_completion_is_rebuilt() -> None:
    line = batch_output_line("c", answer="hi", finish_reason="stop", body=b"<html>")
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "hi"
    odd = batch_output_line("c", answer="hi", finish_reason="stop", body=b'{"a": "\\ud800"}')
    assert odd["response"]["body"]["object"] == "chat.completion"
    json.dumps(odd)
