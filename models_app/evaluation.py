"""The evaluation gate: is a candidate better than the version it would replace?

Both versions write drafts for the snapshot's held-out examples (greedy, as production
generation does, through the same backend) and are scored against the approved texts:

- mean normalised word edit distance (annotations/diffing.py: what reviewers have to change;
  lower is better) — the deciding figure;
- chrF (character n-gram F-score, β = 2; higher is better), reported beside it;
- loss on a replay set of earlier examples (mean completion-token loss; lower is better): a
  candidate that forgot earlier data is refused even if it does better on the new.

The approved text is cut to the drafts' own token limit before it is scored: a draft cannot be
longer than max_new_tokens, so the part of a reference beyond it is not held against either version.

Each held-out item is drafted from two prompts (finetune_runner.decision_set): with examples that are not
like it ("unmatched": the deciding drafts, what a version writes for a new kind of request) and with the
examples retrieval finds ("served", as drafts are served). Each version is shown of these examples what it
would be shown when served (a fine-tuned one only the near ones: retrieval.shot_floor). The candidate is
promoted when, on the unmatched prompts, its edit distance is lower by at least `margin` on average and a
one-sided Wilcoxon signed-rank test of the paired gains says it is better (p < ALPHA; paired_gain says why
ranks and not the mean's t interval, which is reported beside it); on the served prompts it is no worse
than the active version by more than `margin`; and its replay loss is no more than `replay_tolerance`
(relative) above the active version's. Too few items and the
gate does not decide at all (finetune_runner: SORA_EVAL_MIN_ITEMS).
"""

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from scipy import stats

from annotations.diffing import word_edit_distance

from .inference.base import ModelRef, Sampling
from .inference.local import LocalBackend, model_cache
from .training import Example, collate, completion_logits, weighted_loss

CHRF_ORDER, CHRF_BETA = 6, 2.0
# The gate promotes only when a candidate this much better would arise by chance less often than this.
ALPHA = 0.05


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
    distances: tuple[float, ...] = ()  # per held-out item, in order: what the paired comparison uses

    def as_dict(self, prefix: str = "") -> dict:
        figures = {"edit_distance": self.edit_distance, "chrf": self.chrf}
        if not prefix:
            figures["replay_loss"] = self.replay_loss
        return {prefix + name: value for name, value in figures.items()}


def capped_reference(tokenizer, text: str, max_new_tokens: int) -> str:
    """The approved text cut to what a draft of max_new_tokens tokens could hold."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_new_tokens else tokenizer.decode(ids[:max_new_tokens], skip_special_tokens=True)


def score(
    ref: ModelRef,
    heldout: list[Example],
    replay: list[Example],
    sampling: Sampling,
    on_item: Callable[[], None] = lambda: None,
) -> Scores:
    backend = LocalBackend()
    tokenizer = model_cache.get(ref).tokenizer
    drafts = []
    for example in heldout:
        output = backend.generate(ref, example.messages, sampling, on_text=lambda _: None, should_stop=lambda: False)
        drafts.append(output.text)
        on_item()
    references = [capped_reference(tokenizer, e.completion, sampling.max_new_tokens) for e in heldout]
    distances = [word_edit_distance(draft, reference) for draft, reference in zip(drafts, references, strict=True)]
    chrfs = [chrf(draft, reference) for draft, reference in zip(drafts, references, strict=True)]
    return Scores(
        edit_distance=sum(distances) / len(distances) if distances else 0.0,
        chrf=sum(chrfs) / len(chrfs) if chrfs else 0.0,
        replay_loss=replay_loss(ref, replay) if replay else None,
        drafts=drafts,
        distances=tuple(distances),
    )


@dataclass(frozen=True)
class PairedGain:
    """How much less the candidate's drafts need changing than the active version's, item by item."""

    items: int
    mean: float
    low: float | None  # 95% confidence interval of the mean gain (Student's t); None below two items
    high: float | None
    p_value: float  # Wilcoxon signed-rank, one-sided: the chance of gains ranked this well if neither were better
    wins: int
    ties: int
    losses: int

    def as_dict(self) -> dict:
        return {
            "items": self.items,
            "mean_gain": self.mean,
            "ci95": None if self.low is None else [self.low, self.high],
            "p_value": self.p_value,
            "test": "wilcoxon signed-rank, one-sided",
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
        }


# A paired difference smaller than this is a tie (the same draft, or the same number of edits).
TIE = 1e-9


def paired_gain(active: Scores, candidate: Scores) -> PairedGain:
    """The paired gains (active − candidate distance per item), their mean and t interval (how large), and the
    Wilcoxon signed-rank test (whether): per-item edit distances are bounded, skewed and often tied, so one odd
    item can swing a mean's interval across zero while the ranks still show a candidate better on most items.
    Ties (equal drafts) are left out of the ranks, as Wilcoxon's own procedure does."""
    gains = [a - c for a, c in zip(active.distances, candidate.distances, strict=True)]
    n = len(gains)
    mean = sum(gains) / n if n else 0.0
    wins = sum(1 for g in gains if g > TIE)
    losses = sum(1 for g in gains if g < -TIE)
    low = high = None
    if n >= 2:
        sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / (n - 1))
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    untied = [g for g in gains if abs(g) > TIE]
    p_value = 1.0
    if untied:
        p_value = float(stats.wilcoxon(untied, alternative="greater").pvalue)
    return PairedGain(n, mean, low, high, p_value, wins, n - wins - losses, losses)


def replay_loss(ref: ModelRef, examples: list[Example], batch_size: int = 4, max_length: int = 768) -> float:
    """Mean completion-token loss of the version on `examples` (each example weighs the same here)."""
    loaded = model_cache.get(ref)
    losses = []
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            chunk = [replace(e, weight=1.0) for e in examples[start : start + batch_size]]
            batch = collate(loaded.tokenizer, chunk, max_length)
            logits, labels = completion_logits(loaded.model, batch, loaded.device)
            losses.append(float(weighted_loss(logits, labels, batch.weights)) * len(chunk))
    return sum(losses) / len(examples)


def decide(
    active: Scores,
    candidate: Scores,
    *,
    margin: float,
    replay_tolerance: float,
    served_active: Scores | None = None,
    served_candidate: Scores | None = None,
    alpha: float = ALPHA,
) -> tuple[bool, list[str]]:
    """Promote? and why, in words for the report. `active` and `candidate` are the deciding drafts (the gate's
    unmatched prompts, finetune_runner.decision_set); `served_*`, when given, the same items with the examples
    retrieval finds, where the candidate must be no worse than the active version by more than `margin`."""
    reasons = []
    gain = paired_gain(active, candidate)
    by_margin = candidate.edit_distance <= active.edit_distance - margin
    confident = gain.p_value < alpha
    better = by_margin and confident
    reasons.append(
        f"edit distance {candidate.edit_distance:.3f} vs {active.edit_distance:.3f}: "
        + ("better by the margin" if by_margin else f"not better by {margin:.3f}")
    )
    interval = "" if gain.low is None else f", 95% CI of the mean [{gain.low:+.3f}, {gain.high:+.3f}]"
    reasons.append(
        f"paired gain {gain.mean:+.3f} on {gain.items} items{interval}, "
        f"{gain.wins} better / {gain.ties} same / {gain.losses} worse, signed-rank p = {gain.p_value:.3f}: "
        + ("confidently better" if confident else f"not confidently better (p ≥ {alpha})")
    )
    served_ok = True
    if served_active is not None and served_candidate is not None:
        served_ok = served_candidate.edit_distance <= served_active.edit_distance + margin
        reasons.append(
            f"with the nearest examples (as served) {served_candidate.edit_distance:.3f} vs "
            f"{served_active.edit_distance:.3f}: " + ("no worse" if served_ok else f"worse by more than {margin:.3f}")
        )
    kept = True
    if active.replay_loss is not None and candidate.replay_loss is not None:
        limit = active.replay_loss * (1 + replay_tolerance)
        kept = candidate.replay_loss <= limit
        reasons.append(
            f"replay loss {candidate.replay_loss:.3f} vs {active.replay_loss:.3f}: "
            + ("no regression" if kept else f"regressed beyond {replay_tolerance:.0%}")
        )
    return better and served_ok and kept, reasons
