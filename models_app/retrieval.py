"""Learning from the first correction: a domain's approved corrections as examples in the next prompts.

Before any fine-tune has run, a draft already follows what reviewers approved: the k approved
(input, final text) pairs most like the new input go into its prompt as earlier turns of the chat
(prompts.with_shots). The same retrieval writes the drafts the evaluation gate compares, for the
active version and the candidate alike, so a fine-tune must beat "the base model with examples".

- The pool is the domain's training examples (models_app/datasets.py): redacted where the domain
  redacts, so an identifier never reaches another item's prompt. Only texts a person wrote or
  changed are examples; a model draft approved unchanged shows the model only what it already does.
- Ranking is BM25 (the `bm25s` library) over the prompt's user message. The index of a domain is
  rebuilt when its examples change (one cheap aggregate per draft tells), so an approval changes
  the very next prompt; the newest POOL_SIZE examples are indexed, since a house style drifts.
- torch-free: the web process may import it.
"""

import random
import threading
from dataclasses import dataclass

import bm25s
import numpy as np
from django.db.models import Count, Max

from .inference.prompts import build_messages, with_shots

POOL_SIZE = 5000
# An example's input and approved text are each cut here: a very long one would crowd the new input out of the prompt.
MAX_SHOT_CHARS = 1500
# Unmatched examples are drawn from outside an input's k × UNMATCHED_SKIP nearest (Retriever.unmatched).
UNMATCHED_SKIP = 4


@dataclass(frozen=True)
class Shot:
    example_id: int
    messages: list[dict]
    completion: str

    @property
    def query_text(self) -> str:
        return user_text(self.messages)


def user_text(messages: list[dict]) -> str:
    """What an example is found by: its (last) user message, the rendered input and metadata."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


class Retriever:
    """BM25 over a fixed list of shots."""

    def __init__(self, shots: list[Shot]) -> None:
        self.shots = [s for s in shots if s.completion.strip()]
        self._index = None
        if self.shots:
            self._index = bm25s.BM25()
            self._index.index(_tokenize([s.query_text for s in self.shots]), show_progress=False)

    def top(self, messages: list[dict], k: int, exclude: frozenset[int] = frozenset()) -> list[Shot]:
        """The k shots most like `messages`' user message (the best first), none of `exclude`. A shot that shares
        no word with the input still fills a place when there are not k better ones: it shows the house style
        (greeting, sign-off, tone) all the same."""
        if k <= 0 or self._index is None:
            return []
        wanted = min(len(self.shots), k + len(exclude))
        if wanted == 0:
            return []
        ids, scores = self._index.retrieve(_tokenize([user_text(messages)]), k=wanted, show_progress=False)
        found = []
        for index, score in zip(ids[0], scores[0], strict=True):
            shot = self.shots[int(index)]
            if shot.example_id in exclude or not np.isfinite(score):
                continue
            found.append(shot)
            if len(found) == k:
                break
        return found

    def unmatched(self, messages: list[dict], k: int, seed: str, exclude: frozenset[int] = frozenset()) -> list[Shot]:
        """k shots drawn at random (from `seed`) from outside the k × UNMATCHED_SKIP most like `messages`, none of
        `exclude`: examples of the house style that do not answer this input, as a new kind of request meets them."""
        if k <= 0:
            return []
        left_out = exclude | {shot.example_id for shot in self.top(messages, k * UNMATCHED_SKIP, exclude=exclude)}
        others = [shot for shot in self.shots if shot.example_id not in left_out]
        return random.Random(seed).sample(others, min(k, len(others)))


def _tokenize(texts: list[str]):
    return bm25s.tokenize(texts, lower=True, stopwords="en", show_progress=False)


def teaching_examples(domain_id: int):
    """The domain's examples that may be shown as examples: texts a person wrote or changed (weight > 0),
    redacted where the domain redacts (datasets.usable_examples)."""
    from .datasets import usable_examples

    return usable_examples(domain_id=domain_id).filter(weight__gt=0)


def shots_from(rows) -> list[Shot]:
    return [Shot(row.pk, _cut_inputs(row.messages), row.completion[:MAX_SHOT_CHARS]) for row in rows]


def _cut_inputs(messages: list[dict]) -> list[dict]:
    return [{**m, "content": m["content"][:MAX_SHOT_CHARS]} if m["role"] == "user" else m for m in messages]


class _DomainIndexes:
    """One Retriever per domain per process, rebuilt when the domain's examples change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: dict[int, tuple[tuple, Retriever]] = {}

    def get(self, domain_id: int) -> Retriever:
        examples = teaching_examples(domain_id)
        signature = tuple(examples.aggregate(count=Count("id"), newest=Max("id"), at=Max("created_at")).values())
        with self._lock:
            cached = self._built.get(domain_id)
            if cached is not None and cached[0] == signature:
                return cached[1]
        newest = examples.order_by("-id")[:POOL_SIZE]
        retriever = Retriever(shots_from(newest))
        with self._lock:
            self._built[domain_id] = (signature, retriever)
        return retriever

    def clear(self) -> None:
        with self._lock:
            self._built.clear()


domain_indexes = _DomainIndexes()


def shots_for(*, domain_id: int, messages: list[dict], k: int) -> list[Shot]:
    """The k approved examples of the domain most like this prompt (a draft's few-shot examples)."""
    if k <= 0:
        return []
    return domain_indexes.get(domain_id).top(messages, k)


def prompt_for_item(*, item) -> list[dict]:
    """The messages a draft of `item` is written from: the domain's prompt around the item, after the
    domain's `retrieval_examples` most similar approved examples."""
    domain = item.domain
    messages = build_messages(
        system_prompt=domain.system_prompt,
        prompt_template=domain.prompt_template,
        input=item.input,
        metadata=item.metadata,
    )
    shots = shots_for(domain_id=domain.pk, messages=messages, k=domain.retrieval_examples)
    return with_shots(messages, [(shot.messages, shot.completion) for shot in shots])
