"""The `openai` backend: any OpenAI-compatible server (vLLM, SGLang, `transformers serve`), streamed over SSE.

The server serves one model (SORA_OPENAI_MODEL); a version's LoRA adapter is
asked for by the version's name when it has one, which is how vLLM serves
adapters loaded with --lora-modules name=path.
"""

import json
from collections.abc import Callable, Iterator

import httpx

from .base import GenerationFailed, GenerationOutput, ModelRef, Sampling, storable_text

TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=10.0, pool=5.0)


def sse_data(lines: Iterator[str]) -> Iterator[dict]:
    """The JSON payloads of a `text/event-stream`, until `data: [DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # comments, event names, keep-alives, blank separators
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except json.JSONDecodeError as exc:
            raise GenerationFailed(f"The inference server sent malformed JSON: {data[:200]!r}") from exc


class OpenAIBackend:
    def __init__(self, *, base_url: str, api_key: str, model: str) -> None:
        if not base_url:
            raise GenerationFailed("SORA_OPENAI_BASE_URL is not set.")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.model = model

    def generate(
        self,
        model: ModelRef,
        messages: list[dict],
        sampling: Sampling,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
    ) -> GenerationOutput:
        body = {
            "model": (model.name or model.key) if model.adapter_path else (self.model or model.base_model),
            "messages": messages,
            "stream": True,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "logprobs": True,
        }
        if sampling.repetition_penalty != 1.0:
            # vLLM / SGLang extension; unlike the local backend, these servers count the prompt's tokens too.
            body["repetition_penalty"] = sampling.repetition_penalty
        # no_repeat_ngram_size has no counterpart in the OpenAI API or its vLLM / SGLang extensions: not sent.
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        pieces: list[str] = []
        logprobs: list[float] = []
        try:
            with httpx.stream(
                "POST", f"{self.base_url}/chat/completions", json=body, headers=headers, timeout=TIMEOUT
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise GenerationFailed(
                        f"The inference server answered {response.status_code}: {response.text[:300]}"
                    )
                for event in sse_data(response.iter_lines()):
                    if event.get("error"):  # vLLM / SGLang report a failure mid-stream this way, then [DONE]
                        error = event["error"]
                        detail = error.get("message") if isinstance(error, dict) else error
                        raise GenerationFailed(f"The inference server failed mid-stream: {str(detail)[:300]}")
                    for choice in event.get("choices") or []:
                        text = storable_text((choice.get("delta") or {}).get("content") or "")
                        if text:
                            pieces.append(text)
                            on_text(text)
                        for token in (choice.get("logprobs") or {}).get("content") or []:
                            if isinstance(token.get("logprob"), int | float):
                                logprobs.append(float(token["logprob"]))
                    if should_stop():
                        return GenerationOutput(text="".join(pieces), token_logprobs=logprobs, cancelled=True)
        except httpx.HTTPError as exc:
            raise GenerationFailed(f"The inference server at {self.base_url} failed: {exc}") from exc
        return GenerationOutput(text="".join(pieces), token_logprobs=logprobs)
