from annotations.diffing import word_diff, word_edit_distance


def test_distance_is_zero_for_equal_texts_and_one_for_disjoint():
    assert word_edit_distance("same words here", "same  words\nhere") == 0.0
    assert word_edit_distance("alpha beta", "gamma delta") == 1.0
    assert word_edit_distance("", "") == 0.0


def test_distance_counts_words_over_the_longer_text():
    assert word_edit_distance("the cat sat", "the dog sat down") == 0.5


def test_diff_pieces_rebuild_both_texts():
    draft, final = "Hi there,\nyour order ships Monday.", "Hi Dana,\nyour order BW-1 ships on Tuesday."

    ops = word_diff(draft, final)

    assert "".join(text for op, text in ops if op != "insert") == draft
    assert "".join(text for op, text in ops if op != "delete") == final
    assert ["insert", "BW-1 "] in ops


def test_a_changed_run_reads_as_one_deletion_then_one_insertion():
    assert word_diff("Hello, your parcel is on its way.", "Hello, your parcel left our depot today.") == [
        ["equal", "Hello, your parcel "],
        ["delete", "is on its way."],
        ["insert", "left our depot today."],
    ]


def test_a_word_that_only_gains_a_neighbour_or_a_line_break_is_not_shown_as_changed():
    assert word_diff("Draft 0.", "Draft 0. Sorry for the wait!") == [
        ["equal", "Draft 0."],
        ["insert", " Sorry for the wait!"],
    ]
    assert word_diff("Kind regards, the team", "Kind regards,\nthe Brightwater team") == [
        ["equal", "Kind regards,"],
        ["delete", " "],
        ["insert", "\n"],
        ["equal", "the "],
        ["insert", "Brightwater "],
        ["equal", "team"],
    ]
