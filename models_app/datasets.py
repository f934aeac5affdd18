"""Training data: approved items become examples; a fine-tune run trains on a frozen snapshot of them.

- An example is written when its item is approved, in the same transaction, redacted first when the
  domain says so (annotations/redaction.py): nothing unredacted ever reaches a training set.
- Which examples are held out for evaluation is a function of the item alone (`example_split`), so
  an example is on the same side in every snapshot and a candidate is never evaluated on what it
  learnt from.
- A snapshot is a manifest of (example id, content hash, split) with its sha256; examples are
  immutable, so the manifest pins exactly what a run saw.
- What an approval teaches (TrainingExample.origin): a corrected draft is new data with weight 2;
  a draft a person wrote (submitted with the item) approved as it was, weight 1; the model's own
  draft approved unchanged, weight 0: it shows the model what it already does, so it neither counts
  towards the fine-tune threshold nor trains as new data, nor is it an example in prompts or in the
  gate's decision set. It is replay material: the model's own behaviour, approved by a person
  (finetune_runner.training_examples).
"""

import hashlib
import json
from collections.abc import Iterator

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Max

from annotations.models import Domain, Generation, Item
from annotations.redaction import redact, redact_metadata

from .inference.prompts import build_messages
from .models import DatasetSnapshot, TrainingExample

TRAIN, HELDOUT = "train", "heldout"
# Loss weight as new data, by origin (the module's docstring says why).
ORIGIN_WEIGHTS = {
    TrainingExample.Origin.CORRECTED: 2.0,
    TrainingExample.Origin.WRITTEN: 1.0,
    TrainingExample.Origin.ACCEPTED: 0.0,
}


def example_split(item_id: int) -> str:
    bucket = int(hashlib.sha256(f"sora-split:{item_id}".encode()).hexdigest()[:8], 16) % 100
    return HELDOUT if bucket < settings.SORA_HELDOUT_PERCENT else TRAIN


def _content_hash(messages: list[dict], completion: str) -> str:
    payload = json.dumps({"messages": messages, "completion": completion}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def approval_origin(item: Item) -> str:
    """What the item's approval taught: a correction, a person's text approved, or the model's draft accepted."""
    if item.final_text != item.draft:
        return TrainingExample.Origin.CORRECTED
    model_text = (
        item.generations.filter(status=Generation.Status.DONE, source=Generation.Source.MODEL)
        .order_by("-id")
        .values_list("text", flat=True)
        .first()
    )
    return TrainingExample.Origin.ACCEPTED if model_text == item.draft else TrainingExample.Origin.WRITTEN


def training_example_record(*, item: Item) -> TrainingExample:
    """The approved item as a training example (once: a second call returns the first)."""
    existing = TrainingExample.objects.filter(item=item).first()
    if existing is not None:
        return existing
    domain = item.domain
    input_text, metadata, completion = item.input, item.metadata, item.final_text
    if domain.redact_identifiers:
        input_text = redact(input_text, metadata=item.metadata)
        completion = redact(completion, metadata=item.metadata)
        metadata = redact_metadata(item.metadata)
    messages = build_messages(
        system_prompt=domain.system_prompt, prompt_template=domain.prompt_template, input=input_text, metadata=metadata
    )
    origin = approval_origin(item)
    return TrainingExample.objects.create(
        domain=domain,
        item=item,
        messages=messages,
        completion=completion,
        origin=origin,
        weight=ORIGIN_WEIGHTS[origin],
        redacted=domain.redact_identifiers,
        content_hash=_content_hash(messages, completion),
    )


def training_examples_sync(*, domain: Domain) -> int:
    """Examples for approved items that have none (approved before examples existed); returns how many."""
    missing = Item.objects.filter(domain=domain, status=Item.Status.APPROVED, training_example__isnull=True)
    count = 0
    for item in missing.select_related("domain").iterator():
        with transaction.atomic():
            training_example_record(item=item)
        count += 1
    return count


def _trained_ids(domain: Domain, before: DatasetSnapshot | None = None) -> set[int]:
    """Examples a finished run of the domain has trained on (its snapshot holds every example up to then).
    A failed or cancelled run's snapshot does not count: its examples are still new."""
    from .models import FineTuneJob

    runs = FineTuneJob.objects.filter(domain=domain, status=FineTuneJob.Status.SUCCEEDED)
    if before is not None:
        runs = runs.filter(snapshot_id__lt=before.pk)
    last = runs.order_by("-snapshot_id").select_related("snapshot").first()
    return {entry[0] for entry in last.snapshot.manifest} if last else set()


def usable_examples(*, domain_id: int):
    """The domain's examples that may reach a training set or a prompt."""
    examples = TrainingExample.objects.filter(domain_id=domain_id)
    if Domain.objects.filter(pk=domain_id, redact_identifiers=True).exists():
        # Recorded while the domain did not redact: they never reach a training set of a domain that does.
        examples = examples.filter(redacted=True)
    return examples


def _usable(domain: Domain):
    return usable_examples(domain_id=domain.pk)


def _new_teaching(domain: Domain) -> list[tuple[int, int, object]]:
    """(id, item id, recorded at) of the examples that teach something (weight > 0) and no finished run has
    trained on yet."""
    trained = _trained_ids(domain)
    teaching = _usable(domain).filter(weight__gt=0).values_list("id", "item_id", "created_at")
    return [row for row in teaching if row[0] not in trained]


def new_examples_count(*, domain: Domain, split: str | None = None) -> int:
    """New examples that teach something, of one split or both: what the fine-tune threshold counts."""
    return sum(1 for _, item_id, _ in _new_teaching(domain) if split is None or example_split(item_id) == split)


def oldest_new_example_at(*, domain: Domain):
    """When the oldest example no run has trained on yet was recorded, or None."""
    return min((recorded for _, _, recorded in _new_teaching(domain)), default=None)


def snapshot_teaching_count(*, snapshot: DatasetSnapshot, split: str) -> int:
    """The snapshot's examples of `split` that teach something (weight > 0)."""
    teaching = set(
        TrainingExample.objects.filter(domain_id=snapshot.domain_id, weight__gt=0).values_list("id", flat=True)
    )
    return sum(1 for entry in snapshot.manifest if entry[2] == split and entry[0] in teaching)


def last_approval_at(*, domain: Domain):
    """When the domain's newest example was recorded (its item approved), or None."""
    return _usable(domain).aggregate(newest=Max("created_at"))["newest"]


def snapshot_create(*, domain: Domain, user: AbstractBaseUser | None = None) -> DatasetSnapshot:
    """Freeze every usable example of the domain so far into a snapshot."""
    training_examples_sync(domain=domain)  # one item per transaction, before the snapshot's own
    with transaction.atomic():
        examples = _usable(domain).order_by("id").values_list("id", "item_id", "content_hash")
        manifest = [
            [example_id, content_hash, example_split(item_id)] for example_id, item_id, content_hash in examples
        ]
        trained = _trained_ids(domain)
        return DatasetSnapshot.objects.create(
            domain=domain,
            manifest=manifest,
            sha256=hashlib.sha256(json.dumps(manifest).encode()).hexdigest(),
            train_count=sum(1 for entry in manifest if entry[2] == TRAIN),
            heldout_count=sum(1 for entry in manifest if entry[2] == HELDOUT),
            new_count=sum(1 for entry in manifest if entry[0] not in trained),
            created_by=user,
        )


def snapshot_examples(*, snapshot: DatasetSnapshot, split: str | None = None) -> list[TrainingExample]:
    """The snapshot's examples in manifest order, optionally one split only."""
    wanted = [entry[0] for entry in snapshot.manifest if split is None or entry[2] == split]
    by_id = TrainingExample.objects.in_bulk(wanted)
    return [by_id[example_id] for example_id in wanted]


def snapshot_new_ids(*, snapshot: DatasetSnapshot) -> set[int]:
    """Example ids of this snapshot that no earlier finished run trained on (the rest are earlier data)."""
    trained = _trained_ids(snapshot.domain, before=snapshot)
    return {entry[0] for entry in snapshot.manifest if entry[0] not in trained}


def snapshot_jsonl(*, snapshot: DatasetSnapshot) -> Iterator[str]:
    """The snapshot as JSON lines in the chat-messages format most fine-tuning tools read."""
    splits = {entry[0]: entry[2] for entry in snapshot.manifest}
    for example in snapshot_examples(snapshot=snapshot):
        record = {
            "messages": [*example.messages, {"role": "assistant", "content": example.completion}],
            "weight": example.weight,
            "split": splits[example.pk],
            "example_id": example.pk,
            "item_id": example.item_id,
            "content_hash": example.content_hash,
        }
        yield json.dumps(record, ensure_ascii=False) + "\n"
