"""Recall of the redaction (annotations/redaction.py) on the project's synthetic evaluation set.

An identifier counts as found when every character of every occurrence of it lies inside a redacted
span. Each record runs twice: with its metadata (as items carry it) and without (patterns alone).
A non-identifier (a drug, a month, a product) counts as wrongly redacted when any of it is.

    .venv/bin/python bench/redaction.py [--json PATH]
"""

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotations.redaction import find_identifiers  # noqa: E402

EVAL_SET = ROOT / "annotations" / "fixtures" / "redaction_eval.jsonl"


def covered(text: str, spans) -> set[int]:
    return {index for span in spans for index in range(span.start, span.end)}


def occurrences(text: str, needle: str) -> list[int]:
    found, start = [], 0
    while (index := text.find(needle, start)) >= 0:
        found.append(index)
        start = index + 1
    return found


def evaluate(records: list[dict], *, with_metadata: bool) -> dict:
    found, total, wrong, kept_total, missed = Counter(), Counter(), 0, 0, []
    for record in records:
        text = record["text"]
        hit = covered(text, find_identifiers(text, metadata=record.get("metadata") if with_metadata else None))
        for identifier in record["identifiers"]:
            places = occurrences(text, identifier["text"])
            ok = bool(places) and all(i in hit for p in places for i in range(p, p + len(identifier["text"])))
            total[identifier["kind"]] += 1
            found[identifier["kind"]] += ok
            if not ok:
                missed.append(identifier)
        for phrase in record.get("non_identifiers", []):
            kept_total += 1
            wrong += any(i in hit for p in occurrences(text, phrase) for i in range(p, p + len(phrase)))
    return {
        "recall": sum(found.values()) / sum(total.values()),
        "by_kind": {kind: {"found": found[kind], "total": total[kind]} for kind in sorted(total)},
        "wrongly_redacted": wrong,
        "non_identifiers": kept_total,
        "missed": missed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    records = [json.loads(line) for line in EVAL_SET.read_text().splitlines() if line.strip()]
    results = {
        mode: evaluate(records, with_metadata=mode == "with metadata") for mode in ("with metadata", "patterns only")
    }
    started = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        for record in records:
            find_identifiers(record["text"], metadata=record.get("metadata"))
    rate = rounds * len(records) / (time.perf_counter() - started)

    print(f"{len(records)} synthetic records, {sum(len(r['identifiers']) for r in records)} identifiers")
    print(f"{'kind':<18}{'with metadata':>16}{'patterns only':>16}")
    for kind in results["with metadata"]["by_kind"]:
        cells = [results[mode]["by_kind"][kind] for mode in results]
        print(f"{kind:<18}" + "".join(f"{c['found']:>9}/{c['total']:<6}" for c in cells))
    for mode, result in results.items():
        share = result["wrongly_redacted"] / result["non_identifiers"]
        print(
            f"{mode}: recall {result['recall']:.3f}; non-identifiers redacted {result['wrongly_redacted']}"
            f"/{result['non_identifiers']} ({share:.1%})"
        )
    print(f"throughput: {rate:.0f} texts/s (with metadata)")
    if args.json:
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "records": len(records),
            "texts_per_second": rate,
            **results,
        }
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
