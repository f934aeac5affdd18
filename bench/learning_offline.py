#!/usr/bin/env python
"""Offline questions on a style bench/learning.py kept (`--keep`): what do its fine-tuned version's drafts of the
held-out messages come to with other examples in the prompt, or after re-training with other settings?

    .venv/bin/python bench/learning_offline.py DATA_DIR --style N [--retrain '{"retrieval_share": 0}']
                                               [--prompts plain,nearest,floor] [--replay-dir DIR]

DATA_DIR is the kept style's data directory (…/style-N). It is copied first (the kept one stays as the run
left it), and the copy's versions are pointed at their adapters in it. With --retrain, the first job's
snapshot is trained again by the product's own runner (models_app.finetune_runner) with those settings over
the first job's, and its gate prints its reasons; the version drafted is then the new candidate, otherwise
the newest fine-tuned version. It drafts the style's held-out messages (bench/learning.py's, greedy, the
domain's sampling) over the domain's approved examples from:

- plain: the prompt alone;
- nearest: the domain's `retrieval_examples` nearest examples (as served before the floor);
- floor: those of them at least SORA_RETRIEVAL_FINETUNED_FLOOR near (as a fine-tuned version is served).

Prints each prompt's mean edit distance and chrF, per-message distances, and each message's nearness. The
copy (its path is printed first) is left for a look; delete it after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def copy_data_dir(kept: Path) -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="sora_learning_offline_")) / kept.name
    shutil.copytree(kept, scratch, ignore=shutil.ignore_patterns("redis.sock"))
    with sqlite3.connect(scratch / "sora.sqlite3") as db:
        db.execute(
            "UPDATE models_app_modelversion SET adapter_path = replace(adapter_path, ?, ?)", (str(kept), str(scratch))
        )
    return scratch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--style", type=int, required=True)
    parser.add_argument("--retrain", type=json.loads, help="training settings (JSON) over the first job's")
    parser.add_argument("--prompts", default="floor,plain,nearest")
    parser.add_argument("--replay-dir", type=Path, help="the general answers bench/learning.py wrote (reused)")
    args = parser.parse_args()

    data_dir = copy_data_dir(args.data_dir.resolve())
    os.environ["SORA_DATA_DIR"] = str(data_dir)
    if args.replay_dir:
        os.environ["SORA_REPLAY_DIR"] = str(args.replay_dir.resolve())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sora_web.settings.local")
    import django

    django.setup()
    from django.conf import settings

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}  # no server here

    from annotations.models import Domain
    from bench.learning import DOMAIN, make_style, score_drafts, style_data
    from models_app import finetune_runner, retrieval
    from models_app.inference.base import Sampling
    from models_app.inference.local import LocalBackend
    from models_app.inference.prompts import build_messages, sampling_from, with_shots
    from models_app.models import FineTuneJob, ModelVersion

    print(f"data directory (a copy): {data_dir}", file=sys.stderr)
    if args.retrain is not None:
        first = FineTuneJob.objects.order_by("id").first()
        job = FineTuneJob.objects.create(
            run_key=uuid.uuid4(),
            snapshot=first.snapshot,
            base_version=first.base_version,
            domain=first.domain,
            hyperparameters={**first.hyperparameters, **args.retrain},
            requested_by=first.requested_by,
        )
        finetune_runner.finetune_job_run(job.pk)
        job.refresh_from_db()
        print(f"job {job.pk}: {job.status} {job.error} {job.evaluation.get('data')}")
        for reason in job.evaluation.get("reasons", []):
            print(f"  {reason}")
        version = job.candidate
    else:
        version = ModelVersion.objects.exclude(adapter_path="").order_by("-id").first()

    domain = Domain.objects.get(slug=DOMAIN)
    heldout = style_data(make_style(args.style), 1, 12, 0)["heldout"]
    retriever = retrieval.Retriever(
        retrieval.shots_from(retrieval.teaching_examples(domain.pk).order_by("-id")[: retrieval.POOL_SIZE])
    )
    domain_sampling = sampling_from(domain.sampling)
    sampling = Sampling(
        max_new_tokens=domain_sampling.max_new_tokens,
        repetition_penalty=domain_sampling.repetition_penalty,
        no_repeat_ngram_size=domain_sampling.no_repeat_ngram_size,
    )
    floor = settings.SORA_RETRIEVAL_FINETUNED_FLOOR
    prompts = {}
    for case in heldout:
        plain = build_messages(
            system_prompt=domain.system_prompt,
            prompt_template=domain.prompt_template,
            input=case["input"],
            metadata=case["metadata"],
        )
        nearest = retriever.top(plain, domain.retrieval_examples)
        print(f"nearness of the nearest: {[round(n, 3) for n in retriever.nearness(plain, nearest)]}")
        chosen = {"plain": [], "nearest": nearest, "floor": retriever.near(plain, nearest, floor)}
        for name, shots in chosen.items():
            prompts.setdefault(name, []).append(with_shots(plain, [(s.messages, s.completion) for s in shots]))
    backend = LocalBackend()
    print(f"version {version.name} ({version.adapter_path})")
    for name in args.prompts.split(","):
        drafts = [
            backend.generate(version.model_ref(), messages, sampling, lambda _: None, lambda: False).text
            for messages in prompts[name]
        ]
        scores = score_drafts(drafts, heldout)
        per_message = [round(d, 2) for d in scores["distances"]]
        print(f"{name}: edit distance {scores['edit_distance']:.3f}, chrF {scores['chrf']:.3f}  {per_message}")


if __name__ == "__main__":
    main()
