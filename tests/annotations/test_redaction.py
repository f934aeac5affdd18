"""Redaction of personal identifiers (annotations/redaction.py): each kind, metadata-driven finds, what must
survive, and recall on the project's synthetic evaluation set (bench/redaction.py prints the details)."""

import json
from pathlib import Path

import pytest

from annotations.redaction import PLACEHOLDERS, find_identifiers, redact, redact_metadata
from bench.redaction import EVAL_SET, evaluate

ENCOUNTER = {
    "patient_name": "Aurelio Fanshawe",
    "dob": "1984-03-12",
    "mrn": "MRN-448201",
    "encounter_date": "2026-10-14",
    "clinician": "Dr. Elowen Marsh",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write to dana.okafor@example.org today.", "Write to [EMAIL] today."),
        ("Call me on 07700 900461 after six.", "Call me on [PHONE] after six."),
        ("Her number is +44 20 7946 0958.", "Her number is [PHONE]."),
        ("Record MRN-730512 was updated.", "Record [RECORD_NUMBER] was updated."),
        ("Hospital number 4471 2290 on the wristband.", "Hospital number [RECORD_NUMBER] on the wristband."),
        ("Member number HLM-5520-1184 is active.", "Member number [INSURANCE_NUMBER] is active."),
        ("DOB: 03/04/1961, allergic to penicillin.", "DOB: [DATE_OF_BIRTH], allergic to penicillin."),
        ("She was born on 14 February 1977 in the city.", "She was born on [DATE_OF_BIRTH] in the city."),
        ("Send it to 4 Kestrel Close, Port Maren instead.", "Send it to [ADDRESS] instead."),
        ("Seen by Dr Farrokhzad today.", "Seen by Dr [NAME] today."),
        ("Hello, my name is Tavita Faleolo.", "Hello, my name is [NAME]."),
        ("My husband, Kenji, came too. Hello Kenji.", "My husband, [NAME], came too. Hello [NAME]."),
    ],
)
def test_each_kind_of_identifier_gets_its_typed_placeholder(text, expected):
    assert redact(text) == expected


def test_metadata_names_the_subject_wherever_the_text_repeats_it():
    text = (
        "Aurelio Fanshawe (DOB 12/03/1984, MRN-448201) came in with a cough. Mr Fanshawe is a non-smoker; "
        "Aurelio was born on the twelfth of March, 1984. Seen by Elowen Marsh on 14 October 2026."
    )

    redacted = redact(text, metadata=ENCOUNTER)

    for secret in ("Aurelio", "Fanshawe", "12/03/1984", "448201", "twelfth of March", "Elowen", "Marsh"):
        assert secret not in redacted
    assert "14 October 2026" in redacted  # the visit date is not a date of birth
    assert "cough" in redacted and "non-smoker" in redacted


def test_ordinary_words_drugs_months_and_visit_dates_survive():
    text = "In March the patient started amoxicillin 500 mg; review on Monday 6 November 2026. Temperature 37.2."

    assert redact(text) == text


def test_redacting_twice_changes_nothing_more():
    once = redact("Patient: Marguerite Oyelowo, 15 June 1966. Phone 555-0126.", metadata=ENCOUNTER)

    assert redact(once, metadata=ENCOUNTER) == once
    assert set(PLACEHOLDERS.values()) >= {"[NAME]", "[PHONE]"}


@pytest.mark.parametrize("text", ["", " ", "ÿ" * 10_000, "\x00\ud83d", "12" * 5000, "Dr " * 3000])
def test_odd_input_never_raises(text):
    assert isinstance(redact(text, metadata={"patient_name": "", "dob": "not a date", "phone": 12}), str)


def test_metadata_values_are_replaced_by_their_key_and_free_text_is_redacted():
    metadata = {**ENCOUNTER, "notes": "Call Aurelio on 07700 900461", "visits": [{"phone": 7700900461}], "age": 42}

    redacted = redact_metadata(metadata)

    assert redacted["patient_name"] == "[NAME]" and redacted["dob"] == "[DATE_OF_BIRTH]"
    assert redacted["mrn"] == "[RECORD_NUMBER]" and redacted["clinician"] == "[NAME]"
    assert redacted["notes"] == "Call [NAME] on [PHONE]"
    assert redacted["visits"] == [{"phone": "[PHONE]"}]
    assert (redacted["encounter_date"], redacted["age"]) == ("2026-10-14", 42)


def test_spans_do_not_overlap_and_the_longest_kind_wins():
    spans = find_identifiers("DOB 12/03/1984 and phone 07700 900461.", metadata=ENCOUNTER)

    assert [span.kind for span in spans] == ["date_of_birth", "phone"]
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))


def test_recall_on_the_synthetic_set():
    records = [json.loads(line) for line in Path(EVAL_SET).read_text().splitlines() if line.strip()]

    with_metadata = evaluate(records, with_metadata=True)
    patterns_only = evaluate(records, with_metadata=False)

    assert len(records) >= 80
    assert with_metadata["recall"] >= 0.95, with_metadata["missed"]
    assert patterns_only["recall"] >= 0.85, patterns_only["missed"]
    assert with_metadata["wrongly_redacted"] / with_metadata["non_identifiers"] <= 0.03


def test_nested_metadata_is_judged_by_its_whole_key_and_name_parts_match_only_as_written():
    metadata = {"patient": {"id": 448201, "dob": 19790804}, "patient_age": "54", "patient_name": "Maria Green"}

    assert redact_metadata(metadata) == {
        "patient": {"id": "[RECORD_NUMBER]", "dob": "[DATE_OF_BIRTH]"},
        "patient_age": "54",
        "patient_name": "[NAME]",
    }
    assert redact("Cough with green sputum, seen by Ms Green; BP 154/54.", metadata=metadata) == (
        "Cough with green sputum, seen by Ms [NAME]; BP 154/54."
    )
