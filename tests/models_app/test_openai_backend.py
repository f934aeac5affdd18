"""The `openai` backend (models_app/inference/openai_compat.py) against a real OpenAI-compatible HTTP server.

The server, on 127.0.0.1, is a `http.server.ThreadingHTTPServer` in a thread that answers
POST /v1/chat/completions with a `text/event-stream` of OpenAI-format chunks
(chunked transfer encoding, as vLLM and SGLang send it) and records every
request's path, headers and JSON body.
"""

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from models_app.inference import GenerationFailed, Sampling, get_backend
from models_app.inference.base import ModelRef
from models_app.inference.openai_compat import OpenAIBackend

MESSAGES = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "Where is my parcel? Order 1042."},
]
# (piece of text, [(token, logprob), ...]) per streamed chunk; the second chunk carries two tokens.
PIECES = [
    ("Hi Dana,", [("Hi", -0.1), (" Dana,", -0.25)]),
    (" your parcel", [(" your parcel", -0.5)]),
    (" ships today", [(" ships", -1.0), (" today", -0.125)]),
    (" — ünïcode 🙂.", [(" — ünïcode 🙂.", -2.0)]),
]
TEXTS = [text for text, _ in PIECES]
LOGPROBS = [lp for _, tokens in PIECES for _, lp in tokens]
BASE_REF = ModelRef(key="3:base", base_model="/srv/models/smollm2")
SAMPLING = Sampling(max_new_tokens=40, temperature=0.7, top_p=0.9)


def event(payload: dict) -> str:
    return "data: " + json.dumps(payload, ensure_ascii=False)


def chunk(text: str, tokens: list[tuple[str, float]] | None = None, **extra) -> str:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    if tokens is not None:
        choice["logprobs"] = {"content": [{"token": t, "logprob": lp, "top_logprobs": []} for t, lp in tokens]}
    choice.update(extra)
    return event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]})


ROLE = event(
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
)
FINISH = event({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
USAGE = event({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 6}})
DONE = "data: [DONE]"


def standard_stream() -> list[str]:
    return [ROLE, *(chunk(text, tokens) for text, tokens in PIECES), FINISH, USAGE, DONE]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: dict


@dataclass
class FakeOpenAIServer:
    """What the fake server answers, and what it was asked. `url` is the base URL the backend takes."""

    url: str = ""
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    status: int = 200
    error_body: str = ""
    blocks: list[str] = field(default_factory=standard_stream)  # each sent as one SSE block (+ blank line)
    pause_after: int | None = None  # hold the stream after this many blocks until `release` is set
    release: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)  # the handler wrote its last byte


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpenAIServer  # set on the subclass the fixture makes

    def log_message(self, format, *args):  # keep the test output quiet
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        self.fake.requests.append(
            Recorded("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(raw or b"null"))
        )
        self.close_connection = True
        if self.path != "/v1/chat/completions":
            self._plain(404, '{"error": {"message": "no such route"}}')
            return
        if self.fake.status != 200:
            self._plain(self.fake.status, self.fake.error_body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for index, block in enumerate(self.fake.blocks):
                if self.fake.pause_after is not None and index == self.fake.pause_after:
                    self.fake.release.wait(timeout=20)
                self._chunk((block + "\n\n").encode())
            self._chunk(b"")  # the zero-length chunk that ends the body
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: exactly what a cancel does
        finally:
            self.fake.finished.set()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _plain(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.fake.finished.set()


@pytest.fixture
def server():
    fake = FakeOpenAIServer()
    handler = type("Handler", (_Handler,), {"fake": fake})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    fake.port = httpd.server_address[1]
    fake.url = f"http://127.0.0.1:{fake.port}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()  # let a held stream end
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def backend_for(server: FakeOpenAIServer, *, api_key: str = "sk-test-123", model: str = "served-model"):
    return OpenAIBackend(base_url=server.url, api_key=api_key, model=model)


def run(backend, ref=BASE_REF, sampling=SAMPLING, should_stop=None):
    pieces: list[str] = []
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return should_stop(len(asked)) if should_stop else False

    output = backend.generate(ref, MESSAGES, sampling, on_text=pieces.append, should_stop=stop)
    return output, pieces, len(asked)


# --- streaming --------------------------------------------------------------


def test_pieces_arrive_in_order_and_concatenate_to_the_returned_text(server):
    output, pieces, _ = run(backend_for(server))

    assert pieces == TEXTS  # the role-only, finish and usage chunks carry no text and send no empty piece
    assert output.text == "".join(TEXTS) == "Hi Dana, your parcel ships today — ünïcode 🙂."
    assert output.cancelled is False


def test_the_log_probability_of_every_token_is_collected(server):
    output, _, _ = run(backend_for(server))

    assert output.token_logprobs == [-0.1, -0.25, -0.5, -1.0, -0.125, -2.0] == LOGPROBS
    assert output.uncertainty == pytest.approx(3.975 / 6)


def test_should_stop_is_asked_after_every_event(server):
    _, _, asked = run(backend_for(server))

    assert asked == len(standard_stream()) - 1  # every JSON event, not the [DONE] marker


def test_keep_alive_comments_and_other_fields_are_ignored(server):
    server.blocks = [": ping", ROLE, ": ping", "event: message\nid: 7\n" + chunk(*PIECES[0]), "retry: 1000"]
    server.blocks += [chunk(*p) for p in PIECES[1:]] + [": ping", FINISH, DONE]

    output, pieces, asked = run(backend_for(server))

    assert pieces == TEXTS
    assert output.text == "".join(TEXTS)
    assert output.token_logprobs == LOGPROBS
    assert asked == 1 + len(PIECES) + 1  # role + pieces + finish: comments are not events


def test_data_lines_without_a_space_after_the_colon_are_read(server):
    server.blocks = [
        'data:{"choices":[{"delta":{"content":"tight"},"logprobs":{"content":[{"token":"tight","logprob":-0.3}]}}]}',
        "data:[DONE]",
    ]

    output, pieces, _ = run(backend_for(server))

    assert (pieces, output.text, output.token_logprobs) == (["tight"], "tight", [-0.3])


def test_nothing_after_done_is_read(server):
    server.blocks = [chunk(*PIECES[0]), DONE, chunk("LEAKED", [("LEAKED", -9.0)]), DONE]

    output, pieces, _ = run(backend_for(server))

    assert pieces == ["Hi Dana,"]
    assert output.text == "Hi Dana,"
    assert output.token_logprobs == [-0.1, -0.25]


def test_a_nul_from_the_server_arrives_as_a_replacement_character(server):
    server.blocks = [chunk("Hello\u0000", None), chunk(" there", None), DONE]  # JSON's escape for NUL

    output, pieces, _ = run(backend_for(server))

    assert (pieces, output.text) == (["Hello\ufffd", " there"], "Hello\ufffd there")  # PostgreSQL stores it


def test_chunks_without_logprobs_give_text_but_no_log_probabilities(server):
    server.blocks = [chunk("Hello", None), chunk(" there", None, logprobs=None), DONE]

    output, pieces, _ = run(backend_for(server))

    assert (pieces, output.text, output.token_logprobs, output.uncertainty) == (
        ["Hello", " there"],
        "Hello there",
        [],
        None,
    )


# --- the request ------------------------------------------------------------


def test_the_request_carries_model_messages_stream_sampling_and_the_bearer_key(server):
    run(backend_for(server), sampling=Sampling(max_new_tokens=40, temperature=0.7, top_p=0.9))

    assert len(server.requests) == 1
    request = server.requests[0]
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer sk-test-123"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "model": "served-model",
        "messages": MESSAGES,
        "stream": True,
        "max_tokens": 40,
        "temperature": 0.7,
        "top_p": 0.9,
        "logprobs": True,
    }  # repetition_penalty 1.0 is the default: not sent


def test_greedy_sampling_sends_temperature_zero_and_a_repetition_penalty_when_set(server):
    run(backend_for(server), sampling=Sampling(max_new_tokens=7, repetition_penalty=1.3))

    body = server.requests[0].body
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["repetition_penalty"]) == (7, 0.0, 1.0, 1.3)


def test_without_an_api_key_no_authorization_header_is_sent(server):
    run(backend_for(server, api_key=""))

    assert "authorization" not in server.requests[0].headers


def test_a_trailing_slash_on_the_base_url_does_not_double_the_path(server):
    backend = OpenAIBackend(base_url=server.url + "/", api_key="k", model="m")

    output, _, _ = run(backend)

    assert server.requests[0].path == "/v1/chat/completions"
    assert output.text == "".join(TEXTS)


def test_without_a_configured_model_the_base_model_is_asked_for(server):
    run(backend_for(server, model=""))

    assert server.requests[0].body["model"] == "/srv/models/smollm2"


def test_a_version_with_an_adapter_asks_for_the_model_by_its_key(server):
    ref = ModelRef(key="7:cs-lora-v2", base_model="/srv/models/smollm2", adapter_path="/srv/adapters/cs-lora-v2")

    run(backend_for(server, model="served-model"), ref=ref)

    assert server.requests[0].body["model"] == "7:cs-lora-v2"


# --- failures ---------------------------------------------------------------


def test_a_500_answer_is_a_generation_failure_that_quotes_the_server(server):
    server.status = 500
    server.error_body = '{"error": {"message": "CUDA out of memory"}}'
    pieces = []

    with pytest.raises(GenerationFailed) as caught:
        backend_for(server).generate(BASE_REF, MESSAGES, Sampling(), on_text=pieces.append, should_stop=lambda: False)

    assert str(caught.value) == 'The inference server answered 500: {"error": {"message": "CUDA out of memory"}}'
    assert pieces == []


def test_a_404_answer_names_the_status(server):
    server.status = 404
    server.error_body = "The model `x` does not exist."

    with pytest.raises(GenerationFailed, match=r"^The inference server answered 404: The model `x` does not exist\.$"):
        run(backend_for(server))


def test_a_malformed_json_data_line_is_a_generation_failure(server):
    server.blocks = [chunk(*PIECES[0]), 'data: {"choices": [{"delta": {"content": "broken', DONE]
    pieces = []

    with pytest.raises(GenerationFailed) as caught:
        backend_for(server).generate(BASE_REF, MESSAGES, Sampling(), on_text=pieces.append, should_stop=lambda: False)

    assert str(caught.value) == (
        'The inference server sent malformed JSON: \'{"choices": [{"delta": {"content": "broken\''
    )
    assert pieces == ["Hi Dana,"]  # what came before the bad line was streamed


def test_nothing_listening_is_a_generation_failure():
    with socket.socket() as probe:  # an ephemeral port that nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = OpenAIBackend(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", model="m")

    with pytest.raises(GenerationFailed, match=rf"^The inference server at http://127\.0\.0\.1:{port}/v1 failed: "):
        run(backend)


def test_an_empty_base_url_is_refused_at_construction():
    with pytest.raises(GenerationFailed, match=r"^SORA_OPENAI_BASE_URL is not set\.$"):
        OpenAIBackend(base_url="", api_key="k", model="m")


def test_an_error_event_in_the_stream_is_a_generation_failure(server):
    server.blocks = [
        chunk(*PIECES[0]),
        event(
            {"error": {"object": "error", "message": "KV cache exhausted", "type": "InternalServerError", "code": 500}}
        ),
        DONE,
    ]

    with pytest.raises(GenerationFailed, match="KV cache exhausted"):
        run(backend_for(server))


# --- cancel -----------------------------------------------------------------


def test_should_stop_after_the_first_event_stops_reading_and_returns_the_text_so_far(server):
    server.blocks = [chunk(*p) for p in PIECES] + [DONE]
    server.pause_after = 1  # the rest only comes once the test releases it (or after 20 s)

    started = time.monotonic()
    output, pieces, asked = run(backend_for(server), should_stop=lambda n: True)
    elapsed = time.monotonic() - started

    assert output.cancelled is True
    assert output.text == "Hi Dana,"
    assert pieces == ["Hi Dana,"]
    assert output.token_logprobs == [-0.1, -0.25]
    assert asked == 1
    assert elapsed < 10  # it did not wait for the held rest of the stream
    assert not server.finished.is_set()  # the server is still holding the rest: the client left first


def test_should_stop_after_the_second_event_keeps_two_pieces(server):
    output, pieces, asked = run(backend_for(server), should_stop=lambda n: n >= 3)  # role, piece 1, piece 2

    assert (output.cancelled, output.text, pieces, asked) == (True, "Hi Dana, your parcel", TEXTS[:2], 3)
    assert output.token_logprobs == [-0.1, -0.25, -0.5]


# --- get_backend ------------------------------------------------------------


def test_get_backend_picks_the_openai_backend_from_settings(settings, server):
    settings.SORA_INFERENCE_BACKEND = "openai"
    settings.SORA_OPENAI_BASE_URL = server.url + "/"
    settings.SORA_OPENAI_API_KEY = "sk-from-settings"
    settings.SORA_OPENAI_MODEL = "settings-model"

    backend = get_backend()

    assert type(backend) is OpenAIBackend
    assert (backend.base_url, backend.api_key, backend.model) == (server.url, "sk-from-settings", "settings-model")
    output, _, _ = run(backend)
    assert output.text == "".join(TEXTS)
    assert server.requests[0].headers["authorization"] == "Bearer sk-from-settings"
    assert server.requests[0].body["model"] == "settings-model"


def test_get_backend_picks_the_local_backend_by_default(settings):
    from models_app.inference.local import LocalBackend

    settings.SORA_INFERENCE_BACKEND = "local"

    assert type(get_backend()) is LocalBackend


def test_get_backend_refuses_an_unknown_name(settings):
    settings.SORA_INFERENCE_BACKEND = "tgi"

    with pytest.raises(GenerationFailed, match=r"^Unknown SORA_INFERENCE_BACKEND 'tgi'; use 'local' or 'openai'\.$"):
        get_backend()


def test_get_backend_openai_without_a_base_url_fails(settings):
    settings.SORA_INFERENCE_BACKEND = "openai"
    settings.SORA_OPENAI_BASE_URL = ""

    with pytest.raises(GenerationFailed, match=r"^SORA_OPENAI_BASE_URL is not set\.$"):
        get_backend()


# --- through the generation service -------------------------------------------


@pytest.fixture
def openai_settings(settings, server):
    settings.SORA_INFERENCE_BACKEND = "openai"
    settings.SORA_OPENAI_BASE_URL = server.url
    settings.SORA_OPENAI_API_KEY = "sk-worker"
    settings.SORA_OPENAI_MODEL = "served-model"
    return settings


def submit(integration, domain, capture):
    from annotations import services

    with capture(execute=True):
        item, _ = services.item_submit(submitted_by=integration, domain=domain.slug, input="Where is my parcel?")
    item.refresh_from_db()
    return item


def test_a_draft_is_written_through_the_openai_server(
    openai_settings, server, integration, domain, tiny_model, django_capture_on_commit_callbacks
):
    from annotations.models import Generation, Item

    domain.system_prompt = "Be brief."
    domain.prompt_template = "Reply to: {input}"
    domain.sampling = {"max_new_tokens": 32, "temperature": 0.2}
    domain.save()

    item = submit(integration, domain, django_capture_on_commit_callbacks)

    generation = item.generations.get()
    assert (generation.status, generation.text, generation.token_logprobs) == (
        Generation.Status.DONE,
        "".join(TEXTS),
        LOGPROBS,
    )
    assert (item.status, item.draft) == (Item.Status.READY, "".join(TEXTS))
    assert item.uncertainty == pytest.approx(3.975 / 6)
    body = server.requests[0].body
    assert body["model"] == "served-model"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Reply to: Where is my parcel?"},
    ]
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (32, 0.2, 1.0)


def test_an_openai_server_failure_fails_the_generation_with_its_message(
    openai_settings, server, integration, domain, tiny_model, django_capture_on_commit_callbacks
):
    from annotations.models import Generation, Item

    server.status = 503
    server.error_body = "overloaded"

    item = submit(integration, domain, django_capture_on_commit_callbacks)

    generation = item.generations.get()
    assert (generation.status, generation.error) == (
        Generation.Status.FAILED,
        "The inference server answered 503: overloaded",
    )
    assert item.status == Item.Status.FAILED


def test_an_adapter_version_is_asked_for_by_its_name_through_the_generation_service(
    openai_settings, server, integration, domain, django_capture_on_commit_callbacks
):
    from models_app.models import ModelVersion
    from models_app.services import activate

    version = ModelVersion.objects.create(
        name="cs-lora-v2", base_model="/srv/models/smollm2", adapter_path="/srv/adapters/cs-lora-v2"
    )
    activate(version=version, domain=domain, user=None)

    submit(integration, domain, django_capture_on_commit_callbacks)

    assert server.requests[0].body["model"] == "cs-lora-v2"
