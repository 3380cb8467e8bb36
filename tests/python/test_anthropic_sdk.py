"""The gateway as the official `anthropic` Python SDK sees it, on `/v1/messages`: the demo's
models and its `auto` route answer Claude SDK clients, plain and streamed, with Anthropic-shaped
errors. Same `switchyard serve` harness as test_openai_sdk.py."""

from __future__ import annotations

import anthropic
import pytest

from test_openai_sdk import CONCRETE_MODEL, ROUTE, ROUTE_DEFAULT, Gateway


@pytest.fixture(scope="module")
def gateway(workdir):
    gw = Gateway(workdir)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("switchyard-anthropic-")


@pytest.fixture(scope="module")
def claude(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.base, api_key="sk-unused", max_retries=0, timeout=10.0)


@pytest.mark.parametrize("model, served_by", [(ROUTE, ROUTE_DEFAULT), (CONCRETE_MODEL, CONCRETE_MODEL)])
def test_message(claude, model, served_by):
    raw = claude.messages.with_raw_response.create(
        model=model, max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "Say hello to the Claude SDK test."}]
    )
    assert raw.headers["x-switchyard-model"] == served_by
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn"
    assert "Say hello to the Claude SDK test" in message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_message_stream(claude):
    with claude.messages.stream(
        model=ROUTE, max_tokens=64, messages=[{"role": "user", "content": [{"type": "text", "text": "Stream hello for Claude."}]}]
    ) as stream:
        deltas = [text for text in stream.text_stream]
        final = stream.get_final_message()
    assert len(deltas) > 1
    assert final.content[0].text == "".join(deltas)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_unknown_model_is_an_anthropic_not_found(claude):
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    body = e.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error", body


def test_tools_are_refused_as_bad_request(claude):
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(
            model=ROUTE,
            max_tokens=8,
            tools=[{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
            messages=[{"role": "user", "content": "x"}],
        )
    assert e.value.response.json()["error"]["type"] == "invalid_request_error"


def test_upstream_error_keeps_its_status(workdir):
    # A gateway of its own: a failing upstream may trip the model's breaker.
    gw = Gateway(workdir)
    try:
        claude = anthropic.Anthropic(
            base_url=gw.base, api_key="sk-unused", max_retries=0, timeout=10.0, default_headers={"x-mock-fault": "503"}
        )
        with pytest.raises(anthropic.APIStatusError) as e:
            claude.messages.create(model=CONCRETE_MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 503
        assert e.value.response.json()["error"]["type"] == "api_error"
    finally:
        gw.stop()
