"""Word-level diff and normalised edit distance between a draft and its final text.

The distance is the quality signal the whole loop optimises (fewer corrections
per draft), so it lives in one place: Levenshtein over words, divided by the
longer text's word count (0 = unchanged, 1 = nothing kept).
"""

import re

from rapidfuzz.distance import Levenshtein

# A word with the whitespace that follows it, so the diff's pieces rebuild both texts exactly.
_TOKEN = re.compile(r"\s+|\S+\s*")


def word_edit_distance(draft: str, final: str) -> float:
    draft_words, final_words = draft.split(), final.split()
    if not draft_words and not final_words:
        return 0.0
    return Levenshtein.normalized_distance(draft_words, final_words)


def word_diff(draft: str, final: str) -> list[list[str]]:
    """[["equal"|"delete"|"insert", text], …]; deletions come before insertions."""
    old, new = _TOKEN.findall(draft), _TOKEN.findall(final)
    ops: list[list[str]] = []

    def add(tag: str, tokens: list[str]) -> None:
        if not tokens:
            return
        if ops and ops[-1][0] == tag:
            ops[-1][1] += "".join(tokens)
        else:
            ops.append([tag, "".join(tokens)])

    for op in Levenshtein.opcodes(old, new):
        if op.tag == "equal":
            add("equal", old[op.src_start : op.src_end])
        else:
            add("delete", old[op.src_start : op.src_end])
            add("insert", new[op.dest_start : op.dest_end])
    return ops
