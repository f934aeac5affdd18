"""Word-level diff and normalised edit distance between a draft and its final text.

The distance is the quality signal the whole loop optimises (fewer corrections
per draft), so it lives in one place: Levenshtein over words, divided by the
longer text's word count (0 = unchanged, 1 = nothing kept).
"""

import re

from rapidfuzz.distance import Levenshtein

# Words and the whitespace between them as separate tokens, so the pieces rebuild both texts exactly
# and a word that only gains a neighbour is not shown as changed.
_TOKEN = re.compile(r"\s+|\S+")


def word_edit_distance(draft: str, final: str) -> float:
    draft_words, final_words = draft.split(), final.split()
    if not draft_words and not final_words:
        return 0.0
    return Levenshtein.normalized_distance(draft_words, final_words)


def word_diff(draft: str, final: str) -> list[list[str]]:
    """[["equal"|"delete"|"insert", text], …]; in each changed run the deletion comes before the insertion."""
    old, new = _TOKEN.findall(draft), _TOKEN.findall(final)
    steps: list[tuple[str, str]] = []
    for op in Levenshtein.opcodes(old, new):
        if op.tag == "equal":
            steps.extend(("equal", token) for token in old[op.src_start : op.src_end])
        else:
            steps.extend(("delete", token) for token in old[op.src_start : op.src_end])
            steps.extend(("insert", token) for token in new[op.dest_start : op.dest_end])
    return _join_changed_runs(steps)


def _join_changed_runs(steps: list[tuple[str, str]]) -> list[list[str]]:
    """Merge the steps into runs. A space kept between two changes joins the change, so that
    "is on its way" → "left today" reads as one deletion and one insertion, not a word-by-word zip."""
    ops: list[list[str]] = []
    deleted, inserted = [], []

    def flush() -> None:
        for tag, pieces in (("delete", deleted), ("insert", inserted)):
            if pieces:
                ops.append([tag, "".join(pieces)])
                pieces.clear()

    for index, (tag, text) in enumerate(steps):
        if tag == "delete":
            deleted.append(text)
        elif tag == "insert":
            inserted.append(text)
        elif (deleted or inserted) and not text.strip() and _changes_next(steps, index + 1):
            deleted.append(text)
            inserted.append(text)
        else:
            flush()
            if ops and ops[-1][0] == "equal":
                ops[-1][1] += text
            else:
                ops.append(["equal", text])
    flush()
    return ops


def _changes_next(steps: list[tuple[str, str]], index: int) -> bool:
    return index < len(steps) and steps[index][0] != "equal"
