from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class GenerationFailed(Exception):
    """The backend could not generate; the message is shown to people."""


@dataclass(frozen=True)
class Sampling:
    """Decoding settings. temperature 0 means greedy (deterministic) decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    # Both count the draft's own tokens only, not the prompt's: a prompt that shows approved examples
    # (models_app/retrieval.py) must not forbid the model to reuse their greeting and sign-off.
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0  # 0: off; n: no n-gram twice in one draft

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class GenerationOutput:
    text: str
    token_logprobs: list[float] = field(default_factory=list)
    cancelled: bool = False

    @property
    def uncertainty(self) -> float | None:
        """Mean negative log-probability per token: 0 for a model sure of every token, higher when it hesitated."""
        if not self.token_logprobs:
            return None
        return -sum(self.token_logprobs) / len(self.token_logprobs)


@dataclass(frozen=True)
class ModelRef:
    """What to load: a local Hugging Face folder and, optionally, a LoRA adapter over it."""

    key: str  # cache key, e.g. the ModelVersion's primary key and name
    base_model: str
    adapter_path: str = ""
    name: str = ""  # the version's name: how an OpenAI-compatible server (vLLM --lora-modules) knows an adapter


def storable_text(piece: str) -> str:
    """A decoded piece as it may be stored: a NUL (a small model's stray byte token, or a server's) becomes
    U+FFFD, since PostgreSQL's text and jsonb refuse NUL."""
    return piece.replace("\x00", "\ufffd")


class Backend(Protocol):
    def generate(
        self,
        model: ModelRef,
        messages: list[dict],
        sampling: Sampling,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
    ) -> GenerationOutput:
        """Generate a reply to chat `messages`, calling `on_text` with each new piece of text as it is decoded.

        The pieces concatenate to the returned text, each passed through storable_text. `should_stop` is asked between
        decoding steps; when it says yes the backend stops and returns what it has,
        with cancelled=True. Raises GenerationFailed for errors people should see.
        """
        ...
