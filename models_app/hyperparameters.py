"""Fine-tuning settings: torch-free, so the web process can start a job without loading torch."""

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TrainingSettings:
    # Passes over the data: at least `epochs`, more for a small set until `min_steps` (at most `max_epochs`),
    # so that 40 corrections train as long as 120 would (planned_epochs).
    epochs: int = 2
    min_steps: int = 60
    max_epochs: int = 8
    learning_rate: float = 5e-4  # measured against 2e-4 by bench/learning.py (docs/benchmarks.md)
    batch_size: int = 4
    max_length: int = 768
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    replay_ratio: float = 0.5  # earlier examples mixed in per new example, against forgetting
    # Share of training prompts that carry retrieved approved examples, as served drafts do (models_app/retrieval.py);
    # the rest are plain, so the adapter learns the style itself and not only to copy from examples. Chosen on tuning
    # styles 1 and 3 of bench/learning.py (docs/benchmarks.md): at 0.5 the adapter drafted new kinds of request worse
    # than a bare loop on plain prompts; at 0 it stopped using a near example's answer (the gate refused it); 0.25
    # kept both.
    retrieval_share: float = 0.25
    checkpoint_every: int = 25  # steps
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingSettings":
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        return cls(**known)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def errors(cls, values: dict) -> list[str]:
        """What is wrong with settings a manager sent (unknown names, wrong types, out of range)."""
        problems = [f"unknown setting {name!r}" for name in values if name not in _LIMITS]
        for name, (kind, low, high) in _LIMITS.items():
            if name not in values:
                continue
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                problems.append(f"{name} must be {'a whole number' if kind is int else 'a number'}")
            elif not low <= value <= high:
                problems.append(f"{name} must be from {low} to {high}")
        return problems


# (type, lowest, highest) of each setting a request may give.
_LIMITS = {
    "epochs": (int, 1, 50),
    "min_steps": (int, 0, 100_000),
    "max_epochs": (int, 1, 50),
    "retrieval_share": (float, 0.0, 1.0),
    "learning_rate": (float, 0.0, 1.0),
    "batch_size": (int, 1, 64),
    "max_length": (int, 32, 8192),
    "lora_rank": (int, 1, 256),
    "lora_alpha": (int, 1, 1024),
    "lora_dropout": (float, 0.0, 0.9),
    "replay_ratio": (float, 0.0, 10.0),
    "checkpoint_every": (int, 1, 100_000),
    "seed": (int, 0, 2**31 - 1),
}


def planned_epochs(count: int, settings: TrainingSettings) -> int:
    """Epochs for `count` examples: `epochs`, raised until the run has `min_steps`, never past `max_epochs`
    (nor below `epochs`)."""
    per_epoch = max(1, math.ceil(count / settings.batch_size))
    wanted = max(settings.epochs, math.ceil(settings.min_steps / per_epoch))
    return min(wanted, max(settings.epochs, settings.max_epochs))


def steps_for(count: int, settings: TrainingSettings) -> int:
    return planned_epochs(count, settings) * math.ceil(count / settings.batch_size)
