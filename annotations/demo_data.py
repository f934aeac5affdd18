"""The synthetic demo cases shipped in annotations/fixtures/demo/*.jsonl.

Each case has an input, metadata, an imperfect draft and a gold reference
output written in the domain's house style. `make demo` seeds the drafts as
items to review; the learning benchmark uses the gold outputs.
All of it is invented: no real person, patient or company.
"""

import json
from dataclasses import dataclass
from pathlib import Path

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures" / "demo"


@dataclass(frozen=True)
class DemoCase:
    domain: str
    external_id: str
    input: str
    metadata: dict
    draft: str
    gold: str
    priority: int = 0


def demo_cases(domain: str | None = None) -> list[DemoCase]:
    cases = []
    for path in sorted(FIXTURES_DIR.glob("*.jsonl")):
        if domain and path.stem != domain:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                cases.append(DemoCase(domain=path.stem, **json.loads(line)))
    return cases
