"""The `local` backend: transformers in the worker process.

The device is chosen when a model is first loaded — CUDA with bfloat16 when a
GPU is there, the CPU in float32 otherwise — never at import, so a Celery
parent process that forks its workers has not touched CUDA. Loaded models are
cached per process by model version; a LoRA adapter is applied with peft.
"""

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from .base import GenerationFailed, GenerationOutput, ModelRef, Sampling, storable_text

logger = logging.getLogger(__name__)

# Versions kept loaded per process; a new one pushes out the least recently used.
MAX_LOADED = 2


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device


def pick_device() -> tuple[torch.device, torch.dtype]:
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


class _ModelCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()

    def get(self, ref: ModelRef) -> Loaded:
        with self._lock:
            if ref.key in self._loaded:
                self._loaded.move_to_end(ref.key)
                return self._loaded[ref.key]
            loaded = load(ref)
            self._loaded[ref.key] = loaded
            while len(self._loaded) > MAX_LOADED:
                self._loaded.popitem(last=False)
            return loaded

    def clear(self) -> None:
        """Unload every model (tests free memory with it)."""
        with self._lock:
            self._loaded.clear()


model_cache = _ModelCache()


def load(ref: ModelRef) -> Loaded:
    device, dtype = pick_device()
    logger.info("loading %s (adapter %r) on %s in %s", ref.base_model, ref.adapter_path, device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.base_model, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(ref.base_model, dtype=dtype, local_files_only=True)
        if ref.adapter_path:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, ref.adapter_path, local_files_only=True)
            model = model.merge_and_unload()  # one matmul per layer again: adapters cost nothing at generation time
    except (OSError, ValueError) as exc:
        raise GenerationFailed(f"Could not load the model {ref.base_model!r}: {exc}") from exc
    model.to(device).eval()
    return Loaded(model=model, tokenizer=tokenizer, device=device)


class _PieceStreamer(TextStreamer):
    """Hands each decoded piece of text to a callback instead of printing it.

    TextStreamer holds back text until a word is complete, so a multi-byte
    character split over two tokens is never sent half-made.
    """

    def __init__(self, tokenizer, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._on_text(text)


class _LastLogprobs(LogitsProcessor):
    """Keeps the log-softmax of the step's scores.

    transformers runs processors passed to generate() before its temperature and
    top-p warpers: with greedy decoding these are the scores the token was chosen
    from; with sampling, the model's distribution before warping (a fair measure
    of how sure the model was, which is what `uncertainty` is for).
    """

    def __init__(self) -> None:
        self.logprobs: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.logprobs = torch.log_softmax(scores[0].float(), dim=-1)
        return scores


class _StepWatcher(StoppingCriteria):
    """Runs after every decoding step: records the chosen token's log-probability and asks whether to stop.

    `input_ids` already ends with the token chosen from the scores _LastLogprobs
    kept, so a token's log-probability costs one log_softmax per step.
    """

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop
        self.step_logprobs = _LastLogprobs()
        self.logprobs: list[float] = []
        self.cancelled = False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.step_logprobs.logprobs is not None:
            self.logprobs.append(float(self.step_logprobs.logprobs[input_ids[0, -1]]))
        if not self.cancelled and self.should_stop():
            self.cancelled = True
        return torch.full((input_ids.shape[0],), self.cancelled, dtype=torch.bool, device=input_ids.device)


class _DraftOnlyNoRepeat(LogitsProcessor):
    """No n-gram twice within the draft. transformers' own processor also counts the prompt, which would
    forbid the greeting and sign-off that the prompt's approved examples show."""

    def __init__(self, size: int, prompt_length: int) -> None:
        self.inner = NoRepeatNGramLogitsProcessor(size)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.inner(input_ids[:, self.prompt_length :], scores)


def repetition_processors(sampling: Sampling, prompt_length: int) -> list[LogitsProcessor]:
    """The domain's repetition settings, applied to the draft's own tokens (Sampling says why)."""
    processors: list[LogitsProcessor] = []
    if sampling.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty, prompt_length))
    if sampling.no_repeat_ngram_size > 0:
        processors.append(_DraftOnlyNoRepeat(sampling.no_repeat_ngram_size, prompt_length))
    return processors


def generation_kwargs(sampling: Sampling, tokenizer) -> dict:
    """generate()'s decoding arguments; the repetition settings go in as processors (repetition_processors)."""
    kwargs = {
        "max_new_tokens": sampling.max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        # Off in generate() itself, whatever a model folder's generation_config.json says: transformers' own
        # processors count the prompt, so they would forbid the examples' greeting and sign-off.
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
    }
    if sampling.greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=None)
    return kwargs


def prompt_inputs(loaded: Loaded, messages: list[dict]) -> dict:
    return loaded.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(loaded.device)


class LocalBackend:
    def generate(
        self,
        model: ModelRef,
        messages: list[dict],
        sampling: Sampling,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
    ) -> GenerationOutput:
        loaded = model_cache.get(model)
        inputs = prompt_inputs(loaded, messages)
        watcher = _StepWatcher(should_stop)
        pieces: list[str] = []

        def collect(text: str) -> None:
            text = storable_text(text)
            pieces.append(text)
            on_text(text)

        with torch.inference_mode():
            loaded.model.generate(
                **inputs,
                streamer=_PieceStreamer(loaded.tokenizer, collect),
                logits_processor=LogitsProcessorList(
                    [*repetition_processors(sampling, inputs["input_ids"].shape[-1]), watcher.step_logprobs]
                ),
                stopping_criteria=StoppingCriteriaList([watcher]),
                **generation_kwargs(sampling, loaded.tokenizer),
            )
        return GenerationOutput(text="".join(pieces), token_logprobs=watcher.logprobs, cancelled=watcher.cancelled)
