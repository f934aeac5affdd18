"""An item and its domain → chat messages and decoding settings."""

import json
import re

from .base import Sampling

_PLACEHOLDER = re.compile(r"\{(input|metadata)\}")
_SAMPLING_FIELDS = {
    "max_new_tokens": int,
    "temperature": float,
    "top_p": float,
    "repetition_penalty": float,
    "no_repeat_ngram_size": int,
}


def render_prompt(template: str, *, input: str, metadata: dict) -> str:
    """Fill {input} and {metadata}. Plain replacement, not str.format: an item's text may hold braces."""
    values = {
        "input": input,
        "metadata": json.dumps(metadata, ensure_ascii=False, sort_keys=True) if metadata else "(none)",
    }
    # One pass: text put in for one placeholder is never searched for the other.
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def build_messages(*, system_prompt: str, prompt_template: str, input: str, metadata: dict) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    messages.append({"role": "user", "content": render_prompt(prompt_template, input=input, metadata=metadata)})
    return messages


def with_shots(messages: list[dict], shots: list[tuple[list[dict], str]]) -> list[dict]:
    """`messages` with approved examples before the last user turn, as earlier turns of the chat:
    each shot is (its prompt's messages, the approved text). Its own system message is dropped
    (the prompt keeps one); the most similar shot comes last, nearest the new input."""
    if not shots:
        return list(messages)
    head = list(messages[:-1])
    turns = []
    for shot_messages, approved in reversed(shots):
        turns += [m for m in shot_messages if m["role"] != "system"]
        turns.append({"role": "assistant", "content": approved})
    return [*head, *turns, messages[-1]]


def sampling_from(settings: dict) -> Sampling:
    """The domain's `sampling` JSON over the defaults; Domain.clean() has already refused bad values."""
    known = {name: kind(settings[name]) for name, kind in _SAMPLING_FIELDS.items() if name in settings}
    return Sampling(**known)


def sampling_errors(settings: object) -> list[str]:
    if not isinstance(settings, dict):
        return ["must be a JSON object"]
    errors = [f"unknown setting {name!r}" for name in settings if name not in _SAMPLING_FIELDS]
    for name, kind in _SAMPLING_FIELDS.items():
        if name not in settings:
            continue
        value = settings[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (kind is int and not isinstance(value, int))
        ):
            errors.append(f"{name} must be a number" + (" (whole)" if kind is int else ""))
        elif name == "max_new_tokens" and not 1 <= value <= 4096:
            errors.append("max_new_tokens must be from 1 to 4096")
        elif name == "temperature" and not 0 <= value <= 5:
            errors.append("temperature must be from 0 to 5")
        elif name == "top_p" and not 0 < value <= 1:
            errors.append("top_p must be above 0 and at most 1")
        elif name == "repetition_penalty" and not 0 < value <= 5:
            errors.append("repetition_penalty must be above 0 and at most 5")
        elif name == "no_repeat_ngram_size" and not 0 <= value <= 20:
            errors.append("no_repeat_ngram_size must be from 0 (off) to 20")
    return errors
