"""A real HTTP receiver on loopback for the webhook tests (no mock: the product's HTTP client talks to it)."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from annotations import services as annotation_services
from tests.factories import ItemFactory


class Receiver:
    """Answers each POST with the next status in `script` (then `default`), after `delay` seconds, and keeps
    what it got. `stop()` closes the port (connection refused); `start()` opens the same port again."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[int] = []
        self.default = 200
        self.delay = 0.0
        self.answer_body = b"ok"
        self.extra_headers: dict[str, str] = {}
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/sora"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    status = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                time.sleep(receiver.delay)
                self.send_response(status)
                for name, value in receiver.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(receiver.answer_body)))
                self.end_headers()
                self.wfile.write(receiver.answer_body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def verified(self, secret: str) -> list[dict]:
        """Every request verified as a receiver would, with the `standardwebhooks` library."""
        return [Webhook(secret).verify(r["body"], r["headers"]) for r in self.requests]

    def webhook_ids(self) -> list[str]:
        return [r["headers"]["webhook-id"] for r in self.requests]


@pytest.fixture
def receiver():
    running = Receiver().start()
    yield running
    running.stop()


@pytest.fixture
def approve(reviewer):
    """approve(item, text=None): claim the item and approve it as the reviewer, returning the review."""

    def _approve(item=None, text=None, *, domain=None):
        if item is None:
            item = ItemFactory(domain=domain, draft="Hello, your parcel left today.")
        claimed = annotation_services.item_claim_next(reviewer=reviewer)
        assert claimed.pk == item.pk
        return annotation_services.review_submit(
            item_id=item.pk, reviewer=reviewer, decision="approve", version=claimed.version, final_text=text
        )

    return _approve
