"""Word-level diff and normalised edit distance between a draft and its final text.

The distance is the quality signal the whole loop optimises (fewer corrections
per draft), so it lives in one place: Levenshtein over words, divided by the
longer text's word count (0 = unchanged, 1 = nothing kept).
"""

import re

from rapidfuzz.distance import Indel, Levenshtein

# A word with the whitespace after it (and any whitespace that opens the text), so the pieces rebuild
# both texts exactly. Tokens are aligned on their words alone: a word that only gained a neighbour or a
# line break is not shown as changed, only the whitespace is.
# Whitespace spelled out (what str.isspace() accepts), because static/js/worddiff.js must split the same way
# and JavaScript's \s is a slightly different set.
_SPACE = "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_TOKEN = re.compile(f"[{_SPACE}]+|[^{_SPACE}]+[{_SPACE}]*")
_WORD_AND_SPACE = re.compile(f"([^{_SPACE}]*)([{_SPACE}]*)")


def word_edit_distance(draft: str, final: str) -> float:
    draft_words, final_words = draft.split(), final.split()
    if not draft_words and not final_words:
        return 0.0
    return Levenshtein.normalized_distance(draft_words, final_words)


def word_diff(draft: str, final: str) -> list[list[str]]:
    """[["equal"|"delete"|"insert", text], …]; in each changed run the deletion comes before the insertion."""
    old, new = _TOKEN.findall(draft), _TOKEN.findall(final)
    steps: list[tuple[str, str]] = []
    # Indel: the longest common subsequence of the words (insertions and deletions, no substitutions).
    for op in Indel.opcodes([_word(token) for token in old], [_word(token) for token in new]):
        if op.tag == "equal":
            for before, after in zip(old[op.src_start : op.src_end], new[op.dest_start : op.dest_end], strict=True):
                steps.extend(_same_word(before, after))
        else:
            steps.extend(("delete", token) for token in old[op.src_start : op.src_end])
            steps.extend(("insert", token) for token in new[op.dest_start : op.dest_end])
    return _join_changed_runs(steps)


def _word(token: str) -> str:
    """A token's word: "" for a run of whitespace (only the text's opening one is a token of its own)."""
    return _WORD_AND_SPACE.match(token).group(1)


def _same_word(before: str, after: str) -> list[tuple[str, str]]:
    """One word in both texts: equal, and its following whitespace too unless that changed."""
    word, space_before = _WORD_AND_SPACE.fullmatch(before).groups()
    space_after = after[len(word) :]
    if space_before == space_after:
        return [("equal", before)]
    steps = [("equal", word), ("delete", space_before), ("insert", space_after)]
    return [(tag, text) for tag, text in steps if text]


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
        elif (deleted or inserted) and not _word(text) and _changes_next(steps, index + 1):
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
