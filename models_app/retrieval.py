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
- Which of the k nearest a version is shown depends on the version (shot_floor): a base version all
  of them, a fine-tuned one only those near enough to the input (Retriever.nearness). The gate's
  prompts follow the same rule (finetune_runner.decision_set), so that it compares what is served.
- torch-free: the web process may import it.
"""

import math
import random
import threading
from collections import Counter
from dataclasses import dataclass

import bm25s
import numpy as np
from django.conf import settings
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
        texts = [s.query_text for s in self.shots]
        if self.shots:
            self._index = bm25s.BM25()
            self._index.index(_tokenize(texts), show_progress=False)
        # Term counts for nearness(): the index's own scores depend on the pool and cannot be compared across inputs.
        self._terms = {s.example_id: Counter(w) for s, w in zip(self.shots, _words(texts), strict=True)}
        self._doc_freq = Counter(term for terms in self._terms.values() for term in terms)
        self._total_length = sum(terms.total() for terms in self._terms.values())

    def nearness(self, messages: list[dict], shots: list[Shot]) -> list[float]:
        """How near each shot is to `messages`' user message, from 0 (no word shared) to about 1 (the same words):
        its BM25 score for that message over the score the message would get against itself, both counted in the
        pool with the message added to it. BM25's own score grows with the input's length and rare words, so
        "3.6" is a near example for one input and a far one for another; this ratio is not (on bench/learning.py's
        tuning style 1, examples of the input's own kind scored 0.21–0.56, of other kinds 0.07–0.21)."""
        query = Counter(_words([user_text(messages)])[0])
        own = self._bm25(query, query, query)
        if own <= 0:
            return [0.0 for _ in shots]
        return [self._bm25(query, self._terms.get(shot.example_id, Counter()), query) / own for shot in shots]

    def _bm25(self, query: Counter, document: Counter, added: Counter) -> float:
        """bm25s's Lucene BM25 (k1 1.5, b 0.75) of `document` for `query`, in the pool plus the document `added`;
        a query word counts as often as it occurs, as in bm25s.BM25.retrieve."""
        k1, b = 1.5, 0.75
        docs = len(self._terms) + 1
        average_length = (self._total_length + added.total()) / docs
        length_norm = k1 * (1 - b + b * document.total() / average_length)
        score = 0.0
        for term, times in query.items():
            tf = document.get(term, 0)
            if tf:
                df = self._doc_freq.get(term, 0) + (1 if term in added else 0)
                idf = math.log(1 + (docs - df + 0.5) / (df + 0.5))
                score += times * idf * tf / (tf + length_norm)
        return score

    def near(self, messages: list[dict], shots: list[Shot], floor: float) -> list[Shot]:
        """Those of `shots` whose nearness to `messages` is at least `floor` (all of them when it is 0)."""
        if floor <= 0:
            return list(shots)
        return [shot for shot, score in zip(shots, self.nearness(messages, shots), strict=True) if score >= floor]

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


def _words(texts: list[str]) -> list[list[str]]:
    """The words _tokenize indexes each text by."""
    if not texts:
        return []
    return bm25s.tokenize(texts, lower=True, stopwords="en", show_progress=False, return_ids=False)


def shot_floor(version) -> float:
    """How near (Retriever.nearness) an example must be to an input to be shown to `version` with it.

    A base version is shown the k nearest whatever they are: they are where it gets the house style from
    (greeting, sign-off, facts). A fine-tuned version writes the house style already and copies what its
    examples answer: shown the nearest examples for a kind of request it never saw, which are of other kinds,
    it answers those (docs/benchmarks.md, "what retrieval does to a fine-tuned model"). It is shown only the
    examples at least SORA_RETRIEVAL_FINETUNED_FLOOR near."""
    return settings.SORA_RETRIEVAL_FINETUNED_FLOOR if version.adapter_path else 0.0


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


def shots_for(*, domain_id: int, messages: list[dict], k: int, floor: float = 0.0) -> list[Shot]:
    """Of the k approved examples of the domain most like this prompt, those at least `floor` near
    (a draft's few-shot examples)."""
    if k <= 0:
        return []
    retriever = domain_indexes.get(domain_id)
    return retriever.near(messages, retriever.top(messages, k), floor)


def prompt_for_item(*, item, version) -> list[dict]:
    """The messages `version` drafts `item` from: the domain's prompt around the item, after those of the
    domain's `retrieval_examples` most similar approved examples that the version is shown (shot_floor)."""
    domain = item.domain
    messages = build_messages(
        system_prompt=domain.system_prompt,
        prompt_template=domain.prompt_template,
        input=item.input,
        metadata=item.metadata,
    )
    shots = shots_for(domain_id=domain.pk, messages=messages, k=domain.retrieval_examples, floor=shot_floor(version))
    return with_shots(messages, [(shot.messages, shot.completion) for shot in shots])
