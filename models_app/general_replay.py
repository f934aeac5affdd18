"""Replay that exists from the first round: the base model's own answers to general prompts.

A domain's first fine-tune has no earlier examples to replay, yet it can still forget what the base
model could do. So every run mixes in some of the base model's own greedy answers to a fixed set of
general prompts (fixtures/general_prompts.json), and the gate measures forgetting on the others: the
first GENERAL_TRAIN prompts are replay, the rest are never trained on. The answers are written once
per base model by the training worker and kept under SORA_REPLAY_DIR.

Training takes whole answers only. Forgetting is measured on every answer, those cut at the length limit
(SORA_GENERAL_ANSWER_TOKENS) as far as they go: with only the whole ones the gate decided on 5 prompts,
where one noisy figure could keep a candidate (docs/benchmarks.md, "Test styles so far").
"""

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from .inference.base import ModelRef, Sampling
from .training import Example

logger = logging.getLogger(__name__)

PROMPTS_FILE = Path(__file__).parent / "fixtures" / "general_prompts.json"
# Of the 96 prompts, the first 56 are replay and the other 40 measure forgetting. A first round asks for
# ceil(corrections × replay_ratio) replayed examples (31 for 61 corrections); 16 prompts gave 8 whole answers,
# and the candidate of tuning style 1 forgot 6.3% (docs/benchmarks.md). The 40 added are short-answer prompts.
GENERAL_TRAIN = 56


def _cache_file(base_model: str, prompts: list[str], max_new_tokens: int) -> Path:
    key = json.dumps({"model": base_model, "prompts": prompts, "max_new_tokens": max_new_tokens, "format": 2})
    return Path(settings.SORA_REPLAY_DIR) / f"general-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def general_examples(
    base_model: str, on_item: Callable[[int, int], None] = lambda done, total: None
) -> tuple[list[Example], list[Example]]:
    """(replay part, forgetting part): the base model's answers, written now if they are not kept yet.
    Empty answers are left out of both; answers cut at the length limit are left out of replay (they would
    teach the model to stop mid-sentence) and measured without an end (Example.ends). `on_item(done,
    total)` follows the writing."""
    prompts = json.loads(PROMPTS_FILE.read_text())
    limit = settings.SORA_GENERAL_ANSWER_TOKENS
    cache = _cache_file(base_model, prompts, limit)
    if cache.is_file():
        answers = json.loads(cache.read_text())
    else:
        from .inference.local import LocalBackend

        logger.info("writing %s's answers to %d general prompts (once)", base_model, len(prompts))
        ref = ModelRef(key=f"general-replay:{base_model}", base_model=base_model, name="base")
        backend, answers = LocalBackend(), []
        for prompt in prompts:
            output = backend.generate(
                ref,
                [{"role": "user", "content": prompt}],
                Sampling(max_new_tokens=limit),
                on_text=lambda _: None,
                should_stop=lambda: False,
            )
            answers.append({"text": output.text, "ends": len(output.token_logprobs) < limit})
            on_item(len(answers), len(prompts))
        cache.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own: two workers writing the same answers at once each finish with a whole file.
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, suffix=".partial", delete=False) as partial:
            partial.write(json.dumps(answers, ensure_ascii=False))
        os.replace(partial.name, cache)
    numbered = [
        (n, Example([{"role": "user", "content": prompt}], answer["text"], 1.0, ends=answer["ends"]))
        for n, (prompt, answer) in enumerate(zip(prompts, answers, strict=True))
        if answer["text"].strip()
    ]
    return (
        [e for n, e in numbered if n < GENERAL_TRAIN and e.ends],
        [e for n, e in numbered if n >= GENERAL_TRAIN],
    )
