"""The gateway as the official `openai` Python SDK sees it.

Starts `switchyard serve` (built-in demo config: in-process mock upstream, models
`gpt-4-1106-preview`, `gpt-3.5-turbo-1106`, `mixtral-8x7b-instruct-v0.1` and the route `auto`)
on a free loopback port and drives it with the real SDK: plain and streamed chat, tools,
JSON mode, n>1, error mapping (400/401/404/upstream 5xx) and the gateway's headers.

Binary: `$SWITCHYARD_BIN`, else the first of target/release, target/debug and
target-bench/release under the repo root. Run:

    .venv/bin/python -m pytest tests/python -q
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

REPO_ROOT = Path(__file__).resolve().parents[2]
CONCRETE_MODEL = "gpt-4-1106-preview"
ROUTE = "auto"
ROUTE_DEFAULT = "gpt-3.5-turbo-1106"
HELLO = [{"role": "user", "content": "Say hello to the gateway test."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def switchyard_binary() -> Path:
    explicit = os.environ.get("SWITCHYARD_BIN")
    if explicit:
        path = Path(explicit)
        if not path.is_absolute():
            path = REPO_ROOT / path
        if not path.is_file():
            pytest.fail(f"SWITCHYARD_BIN={explicit} does not exist")
        return path
    candidates = [
        REPO_ROOT / "target" / "release" / "switchyard",
        REPO_ROOT / "target" / "debug" / "switchyard",
        REPO_ROOT / "target-bench" / "release" / "switchyard",
    ]
    for path in candidates:
        if path.is_file():
            return path
    pytest.fail(
        "switchyard binary not found; build it (`cargo build --release -p gateway`) or set SWITCHYARD_BIN. "
        f"Looked at: {', '.join(str(c) for c in candidates)}"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """A `switchyard serve` process on a loopback port, stopped by `stop()`."""

    def __init__(self, workdir: Path, config: Path | None = None, env: dict[str, str] | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # Its own working directory: the gateway keeps its outcome log (`switchyard.db`) and
        # spill file relative to it by default.
        self.cwd = workdir / f"gateway-{self.port}"
        self.cwd.mkdir()
        self.log_path = self.cwd / "switchyard.log"
        args = [str(switchyard_binary()), "serve", "--listen", f"127.0.0.1:{self.port}"]
        if config is not None:
            args += ["--config", str(Path(config).resolve())]
        child_env = {k: v for k, v in os.environ.items() if k not in ("SWITCHYARD_CONFIG", "SWITCHYARD_LISTEN", "SY_TEST_KEY")}
        child_env.setdefault("RUST_LOG", "warn")
        child_env.update(env or {})
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=child_env, cwd=self.cwd)
        self._wait_healthy()

    def _wait_healthy(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                pytest.fail(f"switchyard exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"switchyard not healthy within {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def client(self, api_key: str = "sk-unused", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(api_key=api_key, base_url=f"{self.base}/v1", max_retries=0, timeout=10.0, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="switchyard-sdk-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def gateway(workdir):
    gw = Gateway(workdir)
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def client(gateway) -> openai.OpenAI:
    return gateway.client()


@pytest.fixture
def fresh_client(workdir):
    """A client of a gateway of its own, for tests that inject upstream faults: a failing
    upstream may open the model's circuit or start a cool-down, which must not leak into
    other tests."""
    gw = Gateway(workdir)
    yield gw.client()
    gw.stop()


def error_object(e: openai.APIStatusError) -> dict:
    """The `error` object of an OpenAI error response, checked against `e.body`."""
    from_response = e.response.json()["error"]
    # The SDK puts the `error` object itself in `.body` when the response has one.
    assert isinstance(e.body, dict), e.body
    body = e.body.get("error", e.body)
    assert body == from_response
    for key in ("message", "type", "param", "code"):
        assert key in from_response, f"error object lacks `{key}`: {from_response}"
    assert isinstance(from_response["message"], str) and from_response["message"]
    assert isinstance(from_response["type"], str) and from_response["type"]
    return from_response


# --- non-stream ---------------------------------------------------------------------------


@pytest.mark.parametrize("model, served_by", [(ROUTE, ROUTE_DEFAULT), (CONCRETE_MODEL, CONCRETE_MODEL)])
def test_chat_non_stream(client, model, served_by):
    completion = client.chat.completions.create(model=model, messages=HELLO)
    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


@pytest.mark.parametrize("model, served_by, route", [(ROUTE, ROUTE_DEFAULT, ROUTE), (CONCRETE_MODEL, CONCRETE_MODEL, None)])
def test_raw_response_headers(client, model, served_by, route):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HELLO)
    assert raw.status_code == 200
    assert raw.headers.get("x-switchyard-model") == served_by
    assert raw.headers.get("x-switchyard-request-id")
    assert raw.headers.get("x-switchyard-route") == route
    completion = raw.parse()
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content


# --- stream -------------------------------------------------------------------------------


def collect(stream) -> tuple[list[ChatCompletionChunk], str, str | None]:
    chunks: list[ChatCompletionChunk] = []
    text = ""
    finish_reason = None
    for chunk in stream:
        assert isinstance(chunk, ChatCompletionChunk)
        assert chunk.object == "chat.completion.chunk"
        chunks.append(chunk)
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
            if choice.finish_reason is not None:
                finish_reason = choice.finish_reason
    return chunks, text, finish_reason


@pytest.mark.parametrize("model", [ROUTE, CONCRETE_MODEL])
def test_stream_without_usage(client, model):
    stream = client.chat.completions.create(model=model, messages=HELLO, stream=True)
    chunks, text, finish_reason = collect(stream)
    assert chunks
    assert text.strip()
    assert finish_reason == "stop"
    # The gateway asks the upstream for usage to cost the request; a client that did not ask
    # must not see the usage-only chunk.
    usage_only = [c for c in chunks if c.usage is not None and not c.choices]
    assert usage_only == [], usage_only
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("model", [ROUTE, CONCRETE_MODEL])
def test_stream_with_usage(client, model):
    stream = client.chat.completions.create(
        model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks, text, finish_reason = collect(stream)
    assert text.strip()
    assert finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    # Only the last chunk carries usage.
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_raw_response_headers(client):
    with client.chat.completions.with_streaming_response.create(model=ROUTE, messages=HELLO, stream=True) as raw:
        assert raw.status_code == 200
        assert raw.headers.get("content-type", "").startswith("text/event-stream")
        assert raw.headers.get("x-switchyard-model") == ROUTE_DEFAULT
        assert raw.headers.get("x-switchyard-route") == ROUTE
        _, text, finish_reason = collect(raw.parse())
    assert text.strip()
    assert finish_reason == "stop"


# --- tools, JSON mode, n ------------------------------------------------------------------


def test_tool_call(client):
    completion = client.chat.completions.create(
        model=CONCRETE_MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls, choice.message
    call = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)


def test_tool_call_stream(client):
    stream = client.chat.completions.create(
        model=ROUTE,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    names, finish_reason = [], None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names.append(call.function.name)
            if choice.finish_reason:
                finish_reason = choice.finish_reason
    assert names == ["get_weather"]
    assert finish_reason == "tool_calls"


def test_tool_result_turn_gets_text(client):
    """After the tool answered, the conversation goes on with text."""
    first = client.chat.completions.create(
        model=CONCRETE_MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    call = first.choices[0].message.tool_calls[0]
    second = client.chat.completions.create(
        model=CONCRETE_MODEL,
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
        ],
        tools=[WEATHER_TOOL],
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content


def test_json_mode(client):
    completion = client.chat.completions.create(
        model=ROUTE,
        messages=[{"role": "user", "content": "Reply in JSON."}],
        response_format={"type": "json_object"},
    )
    content = completion.choices[0].message.content
    assert isinstance(json.loads(content), dict)


def test_n_choices(client):
    completion = client.chat.completions.create(model=CONCRETE_MODEL, messages=HELLO, n=2)
    assert len(completion.choices) == 2
    assert sorted(c.index for c in completion.choices) == [0, 1]
    assert all(c.message.content for c in completion.choices)


def test_unknown_fields_pass_through(client):
    """Parameters the gateway does not act on (seed, temperature, user, extra_body) are accepted."""
    completion = client.chat.completions.create(
        model=ROUTE, messages=HELLO, temperature=0.2, seed=7, user="sdk-test", extra_body={"x_vendor_flag": True}
    )
    assert completion.choices[0].message.content


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert {CONCRETE_MODEL, ROUTE_DEFAULT, "mixtral-8x7b-instruct-v0.1", ROUTE} <= ids


# --- errors -------------------------------------------------------------------------------


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    e = info.value
    assert isinstance(e, openai.APIStatusError)
    assert e.status_code == 404
    error = error_object(e)
    assert "no-such-model" in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"
    assert e.code == "model_not_found"
    assert e.param == "model"


def test_missing_messages_is_bad_request(client):
    # The SDK refuses to send a request without `messages`, so post the raw body.
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body={"model": ROUTE}, cast_to=ChatCompletion)
    e = info.value
    assert isinstance(e, openai.APIStatusError)
    assert e.status_code == 400
    error = error_object(e)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    assert "messages" in error["message"]


def test_empty_messages_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=ROUTE, messages=[])
    assert info.value.status_code == 400
    assert error_object(info.value)["param"] == "messages"


def test_bad_stream_type_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=ROUTE, messages=HELLO, extra_body={"stream": "yes"})
    assert error_object(info.value)["param"] == "stream"


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_error_passes_through(fresh_client, stream):
    with pytest.raises(openai.InternalServerError) as info:
        fresh_client.chat.completions.create(
            model=CONCRETE_MODEL, messages=HELLO, stream=stream, extra_headers={"x-mock-fault": "503"}
        )
    e = info.value
    assert isinstance(e, openai.APIStatusError)
    assert e.status_code == 503
    error = error_object(e)
    assert "503" in error["message"]


def test_upstream_rate_limit_passes_through(fresh_client):
    with pytest.raises(openai.RateLimitError) as info:
        fresh_client.chat.completions.create(model=ROUTE, messages=HELLO, extra_headers={"x-mock-fault": "429:3"})
    e = info.value
    assert e.status_code == 429
    assert e.response.headers.get("retry-after") == "3"
    assert error_object(e)["type"] == "rate_limit_error"


# --- master key ---------------------------------------------------------------------------

KEYED_CONFIG = """
[server]
master_key_env = "SY_TEST_KEY"
max_body_bytes = 4096

[providers.mock]
kind = "mock"

[models."m1"]
provider = "mock"
"""


@pytest.fixture(scope="module")
def keyed_gateway(workdir):
    config = workdir / "keyed.toml"
    config.write_text(KEYED_CONFIG)
    gw = Gateway(workdir, config=config, env={"SY_TEST_KEY": "sk-switchyard-test-key"})
    yield gw
    gw.stop()


def test_wrong_key_is_unauthorized(keyed_gateway):
    client = keyed_gateway.client(api_key="sk-wrong")
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="m1", messages=HELLO)
    e = info.value
    assert isinstance(e, openai.APIStatusError)
    assert e.status_code == 401
    error = error_object(e)
    assert error["code"] == "invalid_api_key"


def test_wrong_key_is_unauthorized_for_models(keyed_gateway):
    with pytest.raises(openai.AuthenticationError):
        keyed_gateway.client(api_key="sk-wrong").models.list()


def test_body_over_limit_is_413(keyed_gateway):
    client = keyed_gateway.client(api_key="sk-switchyard-test-key")
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "x" * 8000}])
    assert info.value.status_code == 413
    assert error_object(info.value)["code"] == "request_too_large"


def test_right_key_works(keyed_gateway):
    client = keyed_gateway.client(api_key="sk-switchyard-test-key")
    raw = client.chat.completions.with_raw_response.create(model="m1", messages=HELLO)
    assert raw.headers.get("x-switchyard-model") == "m1"
    completion = raw.parse()
    assert completion.choices[0].message.content
    chunks, text, finish_reason = collect(client.chat.completions.create(model="m1", messages=HELLO, stream=True))
    assert text.strip() and finish_reason == "stop"
    assert [m.id for m in client.models.list()] == ["m1"]


def test_stream_broken_mid_way_raises(fresh_client):
    """An upstream that drops the connection mid-stream ends the client's stream with an
    error event, which the SDK raises as an APIError after the text received so far."""
    # A per-token delay makes the mock flush the chunks before the break (without it they sit
    # in its write buffer when the connection drops, and nothing reaches the gateway).
    stream = fresh_client.chat.completions.create(
        model=CONCRETE_MODEL,
        messages=HELLO,
        stream=True,
        extra_headers={"x-mock-fault": "reset", "x-mock-per-token-ms": "5"},
    )
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert not isinstance(info.value, openai.APIStatusError)
    assert received, "the chunks before the break reach the client"
    assert info.value.body and info.value.body.get("type")


def test_non_stream_broken_mid_way_is_bad_gateway(fresh_client):
    with pytest.raises(openai.APIStatusError) as info:
        fresh_client.chat.completions.create(model=CONCRETE_MODEL, messages=HELLO, extra_headers={"x-mock-fault": "reset"})
    assert info.value.status_code == 502
    assert error_object(info.value)["code"] == "upstream_unreachable"


def test_invalid_json_is_bad_request(client):
    # The SDK always sends valid JSON; send a broken body with its HTTP client.
    raw = client._client.post(
        f"{client.base_url}chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert raw.status_code == 400
    error = raw.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert set(error) >= {"message", "type", "param", "code"}


# --- streaming latency --------------------------------------------------------------------


def test_stream_first_token_is_not_held_back(client):
    """The first content chunk of a stream reaches the client without a delayed-ACK stall.

    Regression guard: with Nagle's algorithm on the gateway's accepted sockets (and the
    mock's), the response headers leave alone, the first body chunk follows a moment later,
    and the kernel holds it until the client's delayed ACK (~40 ms on Linux): every streamed
    answer on a kept-alive connection got ~40 ms of time to first token (median ~46 ms
    instead of ~5 ms against the zero-latency mock). TCP_NODELAY on accepted sockets fixes it.
    """
    ttft_ms = []
    for _ in range(10):
        started = time.perf_counter()
        first = None
        # Read each stream to its end so that the connection is kept alive for the next.
        for chunk in client.chat.completions.create(model=ROUTE, messages=HELLO, stream=True):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = (time.perf_counter() - started) * 1e3
        assert first is not None
        ttft_ms.append(first)
    # The first requests may open connections; judge the kept-alive ones.
    kept_alive = sorted(ttft_ms[2:])
    median = kept_alive[len(kept_alive) // 2]
    assert median < 35.0, f"stream time to first token, median {median:.1f} ms over {[round(t, 1) for t in ttft_ms]}"


# --- response cache -----------------------------------------------------------------------


def test_cached_stream_replays_the_original_content(client):
    """The demo config caches answers: a repeated streamed request is replayed from the
    cache, chunk for chunk, and the SDK sees the same content and finish reason."""
    messages = [{"role": "user", "content": "List the first four prime numbers, please."}]
    with client.chat.completions.with_streaming_response.create(
        model=ROUTE, messages=messages, stream=True, temperature=0
    ) as raw:
        assert raw.headers.get("x-switchyard-cache") == "miss"
        original = [c.model_dump() for c in raw.parse()]
    with client.chat.completions.with_streaming_response.create(
        model=ROUTE, messages=messages, stream=True, temperature=0
    ) as raw:
        assert raw.headers.get("x-switchyard-cache") == "exact"
        replayed = [c.model_dump() for c in raw.parse()]
    assert replayed == original
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in replayed if c["choices"])
    assert text.strip()

    # The same question as JSON gets the same text back, assembled from the chunks.
    raw = client.chat.completions.with_raw_response.create(model=ROUTE, messages=messages, temperature=0)
    assert raw.headers.get("x-switchyard-cache") == "exact"
    assert raw.parse().choices[0].message.content == text


def test_no_store_bypasses_the_cache(client):
    messages = [{"role": "user", "content": "Give me a random-looking word."}]
    first = client.chat.completions.create(model=CONCRETE_MODEL, messages=messages, temperature=0)
    raw = client.chat.completions.with_raw_response.create(
        model=CONCRETE_MODEL, messages=messages, temperature=0, extra_headers={"cache-control": "no-store"}
    )
    assert raw.headers.get("x-switchyard-cache") == "bypass"
    assert raw.parse().id != first.id


# --- embeddings ---------------------------------------------------------------------------

LOCAL_EMBEDDER = "all-MiniLM-L6-v2"
EMBEDDER_DIR = REPO_ROOT / ".cache" / "models" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def embedding_client(workdir):
    """The demo gateway with the fetched MiniLM weights (`scripts/fetch-model.sh`): its
    `all-MiniLM-L6-v2` embedding model is the in-process embedder."""
    if not (EMBEDDER_DIR / "model.safetensors").is_file():
        pytest.fail(f"{EMBEDDER_DIR} missing: run scripts/fetch-model.sh")
    gw = Gateway(workdir, env={"SWITCHYARD_EMBEDDER_DIR": str(EMBEDDER_DIR)})
    yield gw.client()
    gw.stop()


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def test_embeddings_from_the_local_model(embedding_client):
    texts = [
        "How do I reset my password?",
        "I forgot my password, how can I change it?",
        "What is the boiling point of water at sea level?",
    ]
    # The SDK asks for base64 unless told otherwise, and decodes it.
    result = embedding_client.embeddings.create(model=LOCAL_EMBEDDER, input=texts)
    assert result.model == LOCAL_EMBEDDER
    assert [d.index for d in result.data] == [0, 1, 2]
    vectors = [d.embedding for d in result.data]
    assert all(len(v) == 384 for v in vectors)
    assert all(abs(cosine(v, v) - 1.0) < 1e-4 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    assert result.usage.prompt_tokens == result.usage.total_tokens > len(texts)
    floats = embedding_client.embeddings.create(model=LOCAL_EMBEDDER, input=texts[0], encoding_format="float")
    assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, vectors[0])) < 1e-6


def test_embeddings_refuse_a_chat_model(embedding_client):
    with pytest.raises(openai.BadRequestError) as e:
        embedding_client.embeddings.create(model=CONCRETE_MODEL, input="hello")
    assert error_object(e.value)["param"] == "model"


def test_chat_refuses_an_embedding_model(embedding_client):
    with pytest.raises(openai.BadRequestError) as e:
        embedding_client.chat.completions.create(model=LOCAL_EMBEDDER, messages=HELLO)
    assert error_object(e.value)["param"] == "model"


# --- Responses API ------------------------------------------------------------------------


@pytest.mark.parametrize("model, served_by", [(ROUTE, ROUTE_DEFAULT), (CONCRETE_MODEL, CONCRETE_MODEL)])
def test_responses_non_stream(client, model, served_by):
    raw = client.responses.with_raw_response.create(
        model=model, instructions="Answer briefly.", input="Say hello to the Responses test.", max_output_tokens=64
    )
    assert raw.headers["x-switchyard-model"] == served_by
    response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.output_text, response
    assert response.output[0].role == "assistant"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.instructions == "Answer briefly."


def test_responses_message_items(client):
    response = client.responses.create(
        model=CONCRETE_MODEL,
        input=[
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": [{"type": "input_text", "text": "First question about items?"}]},
        ],
    )
    assert "First question about items" in response.output_text


def test_responses_stream(client):
    events = list(client.responses.create(model=ROUTE, input="Stream a hello for the Responses test.", stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert done.status == "completed"
    assert done.output_text == "".join(deltas) == events[-4].text
    assert done.usage.output_tokens > 0


RESPONSES_WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_responses_function_call_round_trip(client):
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.responses.create(model=CONCRETE_MODEL, input=[question], tools=[RESPONSES_WEATHER_TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.status == "completed"
    json.loads(call.arguments)
    # The tool's result goes back as a function_call_output item; the model answers in text.
    second = client.responses.create(
        model=CONCRETE_MODEL,
        tools=[RESPONSES_WEATHER_TOOL],
        input=[
            question,
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
    )
    assert second.output_text, second.output
    assert not [item for item in second.output if item.type == "function_call"]


def test_responses_function_call_stream(client):
    events = list(client.responses.create(model=CONCRETE_MODEL, input="Weather in Rome?", tools=[RESPONSES_WEATHER_TOOL], stream=True))
    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types and "response.function_call_arguments.done" in types, types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1]
    assert done.type == "response.completed"
    calls = [item for item in done.response.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    streamed = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert streamed == calls[0].arguments


def test_responses_refuse_hosted_tools_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=ROUTE, input="x", tools=[{"type": "web_search"}])
    assert error_object(e.value)["param"] == "tools"


def test_responses_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="no-such-model", input="x")
    assert error_object(e.value)["code"] == "model_not_found"
