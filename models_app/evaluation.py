"""The evaluation gate: is a candidate better than the version it would replace?

Both versions write drafts for the snapshot's held-out examples (greedy, as production
generation does, through the same backend) and are scored against the approved texts:

- mean normalised word edit distance (annotations/diffing.py: what reviewers have to change;
  lower is better) — the deciding figure;
- chrF (character n-gram F-score, β = 2; higher is better), reported beside it;
- loss on a replay set of earlier examples (mean completion-token loss; lower is better): a
  candidate that forgot earlier data is refused even if it does better on the new.

The candidate is promoted when its edit distance is lower by at least `margin` and its replay
loss is no more than `replay_tolerance` (relative) above the active version's.
"""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from annotations.diffing import word_edit_distance

from .inference.base import ModelRef, Sampling
from .inference.local import LocalBackend, model_cache
from .training import Example, collate, weighted_loss

CHRF_ORDER, CHRF_BETA = 6, 2.0


def chrf(hypothesis: str, reference: str) -> float:
    """chrF (Popović 2015): character n-grams up to 6, whitespace removed, recall weighted β = 2; 0–1."""
    hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
    precisions, recalls = [], []
    for n in range(1, CHRF_ORDER + 1):
        hyp_grams = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
        ref_grams = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
        if not hyp_grams or not ref_grams:
            continue
        overlap = sum((hyp_grams & ref_grams).values())
        precisions.append(overlap / sum(hyp_grams.values()))
        recalls.append(overlap / sum(ref_grams.values()))
    if not precisions:
        return 1.0 if hyp == ref else 0.0
    precision, recall = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if precision + recall == 0:
        return 0.0
    beta2 = CHRF_BETA**2
    return (1 + beta2) * precision * recall / (beta2 * precision + recall)


@dataclass(frozen=True)
class Scores:
    edit_distance: float
    chrf: float
    replay_loss: float | None
    drafts: list[str]

    def as_dict(self) -> dict:
        return {"edit_distance": self.edit_distance, "chrf": self.chrf, "replay_loss": self.replay_loss}


def score(
    ref: ModelRef,
    heldout: list[Example],
    replay: list[Example],
    sampling: Sampling,
    on_item: Callable[[], None] = lambda: None,
) -> Scores:
    backend = LocalBackend()
    drafts = []
    for example in heldout:
        output = backend.generate(ref, example.messages, sampling, on_text=lambda _: None, should_stop=lambda: False)
        drafts.append(output.text)
        on_item()
    distances = [word_edit_distance(draft, example.completion) for draft, example in zip(drafts, heldout, strict=True)]
    chrfs = [chrf(draft, example.completion) for draft, example in zip(drafts, heldout, strict=True)]
    return Scores(
        edit_distance=sum(distances) / len(distances) if distances else 0.0,
        chrf=sum(chrfs) / len(chrfs) if chrfs else 0.0,
        replay_loss=replay_loss(ref, replay) if replay else None,
        drafts=drafts,
    )


def replay_loss(ref: ModelRef, examples: list[Example], batch_size: int = 4, max_length: int = 768) -> float:
    """Mean completion-token loss of the version on `examples` (each example weighs the same here)."""
    loaded = model_cache.get(ref)
    losses = []
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            chunk = [Example(e.messages, e.completion, 1.0) for e in examples[start : start + batch_size]]
            batch = collate(loaded.tokenizer, chunk, max_length)
            logits = loaded.model(
                input_ids=batch.input_ids.to(loaded.device), attention_mask=batch.attention_mask.to(loaded.device)
            ).logits
            losses.append(float(weighted_loss(logits, batch.labels.to(loaded.device), batch.weights)) * len(chunk))
    return sum(losses) / len(examples)


def decide(active: Scores, candidate: Scores, *, margin: float, replay_tolerance: float) -> tuple[bool, list[str]]:
    """Promote? and why, in words for the report."""
    reasons = []
    better = candidate.edit_distance <= active.edit_distance - margin
    reasons.append(
        f"edit distance {candidate.edit_distance:.3f} vs {active.edit_distance:.3f}: "
        + ("better by the margin" if better else f"not better by {margin:.3f}")
    )
    kept = True
    if active.replay_loss is not None and candidate.replay_loss is not None:
        limit = active.replay_loss * (1 + replay_tolerance)
        kept = candidate.replay_loss <= limit
        reasons.append(
            f"replay loss {candidate.replay_loss:.3f} vs {active.replay_loss:.3f}: "
            + ("no regression" if kept else f"regressed beyond {replay_tolerance:.0%}")
        )
    return better and kept, reasons
