"""`/ws/jobs/{id}/`: a fine-tune job's live progress, for model managers only (PRODUCT.md §6)."""

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from annotations import services
from models_app.finetuning import job_group, job_state
from models_app.models import FineTuneJob
from tests.collab.test_consumers import ALLOWED_ORIGIN, TIMEOUT, application, session_cookie
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def in_memory_channel_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
def job(domain, reviewer, tiny_model, monkeypatch, settings):
    from models_app import finetuning

    settings.SORA_HELDOUT_PERCENT = 0  # the one example must be a training example
    ItemFactory(domain=domain)
    claimed = services.item_claim_next(reviewer=reviewer)
    services.review_submit(item_id=claimed.pk, reviewer=reviewer, decision="approve", version=claimed.version)
    monkeypatch.setattr(finetuning, "_dispatch", lambda job_id: None)  # queued, not run
    return finetuning.finetune_job_start(domain=domain)


async def communicator(job_id: int, user) -> WebsocketCommunicator:
    cookie = await database_sync_to_async(session_cookie)(user)
    headers = [(b"origin", ALLOWED_ORIGIN), (b"cookie", f"sessionid={cookie}".encode())]
    return WebsocketCommunicator(application(), f"/ws/jobs/{job_id}/", headers=headers)


def test_a_manager_gets_the_jobs_state_then_its_progress(manager, job):
    async def body():
        comm = await communicator(job.pk, manager)
        accepted, _ = await comm.connect(timeout=TIMEOUT)
        assert accepted
        snapshot = await comm.receive_json_from(timeout=TIMEOUT)
        assert (snapshot["type"], snapshot["id"], snapshot["status"], snapshot["step"]) == (
            "snapshot",
            job.pk,
            "queued",
            0,
        )

        def step_three():
            FineTuneJob.objects.filter(pk=job.pk).update(status="running", step=3, total_steps=10)
            from collab.events import send_event

            send_event(job_group(job.pk), "job.progress", job_state(FineTuneJob.objects.get(pk=job.pk)))

        await database_sync_to_async(step_three)()
        progress = await comm.receive_json_from(timeout=TIMEOUT)
        assert (progress["type"], progress["status"], progress["step"], progress["total_steps"]) == (
            "progress",
            "running",
            3,
            10,
        )
        await comm.disconnect(timeout=TIMEOUT)

    async_to_sync(body)()


def test_reviewers_and_strangers_are_refused_and_unknown_jobs_too(reviewer, manager, job):
    async def handshake(job_id, user):
        comm = await communicator(job_id, user)
        accepted, _ = await comm.connect(timeout=TIMEOUT)
        if accepted:
            await comm.disconnect(timeout=TIMEOUT)
        return accepted

    assert async_to_sync(handshake)(job.pk, reviewer) is False
    assert async_to_sync(handshake)(999_999, manager) is False
