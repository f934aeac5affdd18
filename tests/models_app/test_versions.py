"""Versions, the per-domain active pointer, and LoRA adapters applied at generation time."""

import pytest
import torch

from annotations.models import AuditEvent, Domain
from models_app.inference import Sampling
from models_app.inference.base import ModelRef
from models_app.inference.local import LocalBackend, generation_kwargs, model_cache, prompt_inputs
from models_app.models import ActiveModel, ModelVersion
from models_app.services import activate, base_version_register

MESSAGES = [{"role": "user", "content": "Where is my parcel?"}]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter over the tiny model with random (non-zero) weights, so it changes what the model writes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapters") / "tiny-lora"
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def greedy(ref: ModelRef) -> str:
    output = LocalBackend().generate(
        ref, MESSAGES, Sampling(max_new_tokens=20), on_text=lambda _: None, should_stop=lambda: False
    )
    return output.text


def test_a_lora_adapter_is_applied_on_top_of_its_base(tiny_model_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with_adapter = greedy(ModelRef(key="lora", base_model=str(tiny_model_dir), adapter_path=str(adapter_dir)))

    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir).eval()
    loaded = model_cache.get(ModelRef(key="base", base_model=str(tiny_model_dir)))
    inputs = prompt_inputs(loaded, MESSAGES)
    with torch.inference_mode():
        out = reference.generate(**inputs, **generation_kwargs(Sampling(max_new_tokens=20), loaded.tokenizer))
    expected = loaded.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert with_adapter == expected
    assert with_adapter != greedy(ModelRef(key="base", base_model=str(tiny_model_dir)))


def test_activating_a_version_moves_the_pointer_audits_it_and_retires_the_unused_one(
    tiny_model_dir, manager, customer_service
):
    first, _ = base_version_register(path=tiny_model_dir, name="first", activate_everywhere=True)
    second = ModelVersion.objects.create(name="second", base_model=str(tiny_model_dir))

    for domain in Domain.objects.all():
        activate(version=second, domain=domain, user=manager)

    first.refresh_from_db()
    second.refresh_from_db()
    assert set(ActiveModel.objects.values_list("version__name", flat=True)) == {"second"}
    assert (second.status, second.promoted_by) == (ModelVersion.Status.ACTIVE, manager)
    assert first.status == ModelVersion.Status.RETIRED
    event = AuditEvent.objects.filter(verb="model.activated", target_id=str(customer_service.pk)).latest("id")
    assert (event.before, event.after, event.actor) == ({"version": first.pk}, {"version": second.pk}, manager)


def test_a_version_still_active_somewhere_is_not_retired(tiny_model_dir, customer_service):
    first, _ = base_version_register(path=tiny_model_dir, name="first", activate_everywhere=True)
    second = ModelVersion.objects.create(name="second", base_model=str(tiny_model_dir))

    activate(version=second, domain=customer_service, user=None)

    first.refresh_from_db()
    assert first.status == ModelVersion.Status.ACTIVE


def test_a_manager_repoints_a_domain_in_the_admin(client, admin_user, tiny_model_dir, customer_service):
    base_version_register(path=tiny_model_dir, name="first", activate_everywhere=True)
    second = ModelVersion.objects.create(name="second", base_model=str(tiny_model_dir))
    pointer = ActiveModel.objects.get(domain=customer_service)
    client.force_login(admin_user)

    response = client.post(f"/admin/models_app/activemodel/{pointer.pk}/change/", {"version": second.pk})

    assert response.status_code == 302
    assert ActiveModel.objects.get(domain=customer_service).version == second
    assert AuditEvent.objects.filter(verb="model.activated", actor=admin_user).exists()
    assert client.get("/admin/models_app/modelversion/add/").status_code == 403
