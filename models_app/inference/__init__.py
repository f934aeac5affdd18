"""Generation backends behind one small interface (base.Backend).

`local` runs transformers in the worker process; `openai` streams from any
OpenAI-compatible server (vLLM, SGLang, `transformers serve`).
"""

from django.conf import settings

from .base import Backend, GenerationFailed, GenerationOutput, Sampling


def get_backend() -> Backend:
    name = settings.SORA_INFERENCE_BACKEND
    if name == "local":
        from .local import LocalBackend

        return LocalBackend()
    if name == "openai":
        from .openai_compat import OpenAIBackend

        return OpenAIBackend(
            base_url=settings.SORA_OPENAI_BASE_URL,
            api_key=settings.SORA_OPENAI_API_KEY,
            model=settings.SORA_OPENAI_MODEL,
        )
    raise GenerationFailed(f"Unknown SORA_INFERENCE_BACKEND {name!r}; use 'local' or 'openai'.")


__all__ = ["Backend", "GenerationFailed", "GenerationOutput", "Sampling", "get_backend"]
