"""Personal identifiers out of text, before it reaches a training set or a webhook (PRODUCT.md §2, §3, §7).

Domains with `redact_identifiers` (medical_note) pass every text through `redact`, which replaces names,
dates of birth, phone numbers, e-mail and postal addresses, record and insurance numbers with typed
placeholders such as [NAME]. Three sources find them, and their spans are merged:

1. The item's metadata. An item usually names its subject (patient_name, dob, mrn …): those values
   are found wherever the text repeats them, names also by their parts ("Ms Okoye-Hale",
   "Temperance") and a date of birth in its common spellings ("4 August 1979", "04/08/1979",
   "fourth of August, 1979").
2. Patterns with their cue words: e-mail addresses, phone numbers, "MRN …", "member number …",
   dates after "DOB" / "born", street addresses with house number and street type, postcodes.
3. Names without metadata: after a title (Dr, Mrs …) or a cue ("my name is", "Patient:", a
   sign-off), and common first names followed by a capitalised surname.

Recall on the project's synthetic set is measured by bench/redaction.py (docs/redaction.md). It is a
rule-based filter, not a guarantee: a name with no cue and no metadata can slip through.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

PLACEHOLDERS = {
    "name": "[NAME]",
    "date_of_birth": "[DATE_OF_BIRTH]",
    "phone": "[PHONE]",
    "email": "[EMAIL]",
    "address": "[ADDRESS]",
    "record_number": "[RECORD_NUMBER]",
    "insurance_number": "[INSURANCE_NUMBER]",
}


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str


# --- metadata keys: which value is which kind of identifier -----------------------------

_KEY_KINDS = [
    ("email", re.compile(r"e-?mail", re.I)),
    ("phone", re.compile(r"phone|mobile|tel(ephone)?\b|cell|fax", re.I)),
    ("date_of_birth", re.compile(r"dob|birth", re.I)),
    ("insurance_number", re.compile(r"insur|policy|member|subscriber", re.I)),
    ("record_number", re.compile(r"mrn|record|hospital_?(number|no|id)|nhs|patient_?id|chart", re.I)),
    ("address", re.compile(r"address|street|postcode|post_code|zip", re.I)),
    # Not bare "patient": patient_age or patient_weight hold no identifier (and match measurements in the text).
    (
        "name",
        re.compile(r"name|^patient$|clinician|customer$|doctor|physician|nurse|contact|carer|author|signed", re.I),
    ),
]


def _key_kind(key: str) -> str | None:
    for kind, pattern in _KEY_KINDS:
        if pattern.search(key):
            return kind
    return None


# --- vocabulary --------------------------------------------------------------------------

MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
_MONTH = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"  # noqa: E501
_ORDINAL_WORDS = [
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
    "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
    "eighteenth", "nineteenth", "twentieth", "twenty-first", "twenty-second", "twenty-third",
    "twenty-fourth", "twenty-fifth", "twenty-sixth", "twenty-seventh", "twenty-eighth",
    "twenty-ninth", "thirtieth", "thirty-first",
]  # fmt: skip
_ORDINAL_WORD = "|".join(sorted(_ORDINAL_WORDS, key=len, reverse=True))
_DAY = rf"(?:\d{{1,2}}(?:st|nd|rd|th)?|{_ORDINAL_WORD})"
# Dates with day, month and year, as people write them.
_FULL_DATE = (
    rf"(?:\d{{1,2}}[./-]\d{{1,2}}[./-](?:\d{{4}}|\d{{2}})"
    rf"|\d{{4}}-\d{{2}}-\d{{2}}"
    rf"|(?:the\s+)?{_DAY}\s+(?:of\s+)?{_MONTH},?\s+\d{{4}}"
    rf"|{_MONTH}\s+{_DAY},?\s+\d{{4}})"
)
_FULL_DATE_RE = re.compile(_FULL_DATE, re.I)

# Words that look like names at the start of a line or after a cue but are not.
_NOT_NAMES = {
    "I", "I'm", "I've", "I'd", "I'll", "Im", "Yes", "No", "Yeah", "Okay", "OK", "Ok", "Sure", "Thanks", "Thank",
    "Hello", "Hi", "Hey", "Good", "Morning", "Afternoon", "Evening", "Well", "So", "And", "But", "The", "A", "An",
    "My", "Our", "Your", "It", "It's", "That", "That's", "This", "There", "We", "We've", "You", "He", "She",
    "They", "Not", "Just", "Still", "Same", "Much", "Mostly", "About", "Around", "Since", "Twice", "Once",
    "Please", "Sorry", "Fine", "Right", "Oh", "Um", "Er", "Doctor", "Nurse", "Patient", "Clinician", "Team",
    "Support", "Customer", "Service", "Regards", "Best", "Kind", "Warm", "Many", "All", "Everyone", "Dear",
    "Mum", "Dad", "Mother", "Father", "Sister", "Brother", "Wife", "Husband", "Son", "Daughter", "Partner",
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "Today", "Tomorrow",
    "Yesterday", "Tonight", "None", "Nothing", "Nope", "Maybe", "Also", "Then", "Now", "When", "What", "How",
    "Who", "Why", "Where", "Which", "If", "Is", "Are", "Was", "Do", "Does", "Did", "Can", "Could", "Will",
    "Would", "Should", "Have", "Has", "Had", "On", "In", "At", "For", "From", "With", "To", "Of", "By", "As",
    *MONTHS,
}  # fmt: skip

# Common first names from many cultures (synthetic-data friendly). Words that are also ordinary English
# words in sentence position (May, Will, Grace, Hope …) are only taken when capitalised mid-sentence.
FIRST_NAMES = set(
    """
    Aaliyah Aaron Abdul Abigail Adam Ade Adebayo Adeola Aditi Adrian Agnieszka Ahmed Aiko Aisha Akira Alan Alba
    Albert Alejandro Alex Alexander Alexandra Alfie Ali Alice Alicia Amadi Amaka Amal Amara Amelia Amina Amir Amit
    Amy Ana Anders Andre Andrea Andrew Aneurin Angela Anika Anil Anita Ann Anna Anne Annika Anthony Antonio Anya
    Arjun Arlo Arthur Asha Ashok Astrid Aurelio Ava Ayesha Barbara Beatriz Ben Benjamin Bernadette Beth Bilal
    Bjorn Björn Bongani Brian Bridget Bruno Caitlin Callum Camille Carlos Carmen Carol Caroline Catherine Cecilia
    Charles Charlie Charlotte Chen Chidi Chinedu Chioma Chloe Chris Christopher Ciaran Claire Clara Conor Dafydd
    Daisy Dana Daniel Daniela Danielle Darius David Deborah Declan Deepak Diana Diego Dimitri Divya Dmitri
    Dolores Dominic Dora Dorothy Dylan Edward Eilidh Elena Eleanor Eli Elif Elijah Elin Elizabeth Ella Ellen
    Elowen Emeka Emily Emma Emre Eric Erik Esther Ethan Eva Evan Ewa Fatima Fatma Felix Fernando Fiona Florence
    Francesca Francis Freya Gabriel Gareth George Georgia Gintaras Giulia Giuseppe Grace Graham Gustav Hamid
    Hana Hannah Hans Harriet Harry Hassan Hector Helen Helena Henrik Henry Hiroshi Hugo Ibrahim Ifeoma Igor
    Ingrid Irene Isaac Isabel Isabella Ivan Jack Jacob James Jamal Jan Jane Javier Jay Jennifer Jessica Jin
    Joanna Joao Joe John Jonas Jonathan Jorge Jose Joseph Joshua Juan Julia Julian Juliet Jun Kai Kamal Karen
    Karim Karin Kate Katherine Kavya Keisha Kemal Kenji Kevin Khalid Kiran Kofi Kwame Lakshmi Lara Laura Layla
    Lea Leila Leo Leon Liam Lily Lina Linda Lionel Lisa Losa Louis Lucas Lucia Lucy Luis Luka Lukas Maeve
    Magnus Maja Malik Manon Marco Margaret Marguerite Maria Mariam Marie Marina Mark Marta Martin Mary Mateo
    Matteo Matthew Maya Mehmet Mei Mia Michael Miguel Mihai Mila Miriam Mohammed Muhammad Nadia Naomi Nasser
    Natalia Nathan Neha Niamh Nicholas Nicola Nikhil Nina Noah Nora Obinna Oliver Olivia Omar Orla Oscar
    Pablo Paolo Patricia Patrick Paul Paula Pedro Peter Philip Pierre Pooja Priya Rachel Rafael Rahul Raj Rajesh
    Ramon Rashid Rebecca Ren Rhys Ricardo Richard Rita Robert Rohan Rosa Rose Rosalind Ruth Ryan Saanvi Sadia
    Samir Samuel Sandra Sanjay Sara Sarah Sean Sebastian Sergei Shreya Simon Siobhan Sipho Sofia Soren Sophia
    Sophie Stefan Stella Stephen Steven Sunil Susan Tamsin Tariq Tavita Temperance Teresa Thabo Theo Thomas
    Tobias Tobiah Tom Tomas Tomasz Ujjwal Valentina Vanessa Vera Victor Victoria Vikram Vivek Wei William
    Xavier Yara Yasmin Yusuf Zainab Zara Zoe Zofia
    Abena Adaeze Agnes Aidan Alana Alma Amber Anders Andile Annette Ansel Arash Aurora Ayumi Beatrice Bernard
    Blessing Bogdan Boris Bronwen Caleb Carla Cedric Chiara Chinwe Cormac Cyrus Dalia Dara Delphine Desmond
    Dieter Dilnoza Duncan Eamon Edwin Eilis Elsa Emeka Enzo Esme Eszter Farah Farid Fenna Finn Flavia Folasade
    Frida Gideon Gillian Gwen Hafsa Halima Hannes Hedda Hilde Hiroko Hyun Idris Ilse Imogen Ines Ingrid Isla
    Ivana Jasper Joaquin Jolene Josefa Kaito Kalani Keanu Kemi Kerstin Kieran Kirra Lachlan Leilani Lennart
    Liesel Lorcan Lotte Lucía Mads Mairead Malak Mamadou Marek Margit Matilda Mattias Minh Moana Morag Nadim
    Ngaio Nikolai Nilufar Njeri Nkechi Odile Olamide Oluwaseun Ondine Orsolya Osman Padraig Petra Pilar Quentin
    Rania Reza Rhiannon Rosalie Rowan Rukmini Sabine Sakura Selin Seren Sigrid Solveig Suleiman Sunniva Svetlana
    Tadhg Tamar Temitope Thandiwe Tiago Tuva Ulla Usha Valeria Vasco Wanjiru Wilhelmina Yaw Yetunde Yiannis
    Yosef Yuki Zeynep Zuri
    """.split()
)
_NAME_WORD = r"[A-Z][a-zA-Z\u00C0-\u024F'’]+(?:-[A-Za-z][a-zA-Z\u00C0-\u024F'’]+)?"
_TITLE = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Professor|Doctor|Nurse|Sister|Rev)\.?"
_STREET_TYPES = (
    r"Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Close|Way|Court|Ct|Place|Pl|Boulevard|Blvd|Crescent|Cres"
    r"|Terrace|Row|Square|Sq|Gardens|Grove|Hill|Mews|Parade|Walk|Yard|Wharf|Quay|View|Rise|Park|Green"
    r"|Reach|Bank|Heights|Gate|End|Fields|Meadows?|Chase|Croft|Vale|Wynd|Loan|Brae|Embankment|Circus|Highway"
)
_POSTCODE = r"(?:[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}|[A-Z]{2}\s+\d{5}(?:-\d{4})?)\b"
_STREET = rf"\d{{1,5}}[A-Za-z]?\s+(?:{_NAME_WORD}\s+){{1,3}}(?:{_STREET_TYPES})\b\.?"
# House number and street (twice for "Flat 2, 12 Mill Lane" forms), then a town and a postcode if they follow.
_ADDRESS = (
    rf"\b(?:(?:Flat|Apt|Apartment|Unit|Suite)\s+\d+[A-Z]?,?\s+)?{_STREET}(?:[ ]*[,\n][ ]*{_STREET})?"
    rf"(?:[ ]*[,\n][ ]*{_NAME_WORD}(?:[ ]{_NAME_WORD})?(?![ ]+[A-Z][a-z]))?(?:[ ]*[,\n]?[ ]*{_POSTCODE})?"
)

_PATTERNS: list[tuple[str, re.Pattern, int]] = [  # (kind, pattern, group to redact)
    ("email", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), 0),
    ("record_number", re.compile(r"\bMRN\s*[-:#]?\s*\d[\d-]{2,}\d\b", re.I), 0),
    (
        "record_number",
        re.compile(
            r"\b(?:record|hospital|NHS|patient|chart|case)\s+(?:number|no\.?|num|#|ID)\s*(?:is\s*)?[:#]?\s*"
            r"([A-Z]{0,5}[-\s]?\d[\d\s-]{2,}\d)",
            re.I,
        ),
        1,
    ),
    (
        "insurance_number",
        re.compile(
            r"\b(?:insurance|policy|member(?:ship)?|subscriber|plan)\s+(?:number|no\.?|num|#|ID)\s*(?:is\s*)?[:#]?\s*"
            r"([A-Z]{0,5}[-\s]?\d[\dA-Z-]*(?:\s\d[\dA-Z-]*)*[\dA-Z])\b",
            re.I,
        ),
        1,
    ),
    (
        "date_of_birth",
        re.compile(
            rf"\b(?:DOB|D\.O\.B\.?|date of birth|birth ?date|born(?: on)?)\b[\s:,-]*(?:is\s+|was\s+)?({_FULL_DATE})",
            re.I,
        ),
        1,
    ),
    ("address", re.compile(_ADDRESS), 0),
    ("address", re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s+\d[A-Z]{2}\b"), 0),  # a UK postcode on its own
    (
        "phone",
        re.compile(
            r"(?<![\w.-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,5}\)[\s.-]?)?\d{2,6}(?:[\s.-]\d{2,6}){1,4}(?![\w-]|\.\d)"
        ),
        0,
    ),
    ("name", re.compile(rf"\b{_TITLE}\s+({_NAME_WORD}(?:\s+{_NAME_WORD})?)"), 1),
    (
        "name",
        re.compile(
            rf"(?:\b(?:[Mm]y name is|[Nn]ame is|[Nn]ame's|[Tt]his is|[Ii] am|[Ii]'m|[Cc]all me|[Ss]oy|[Pp]atient is"
            rf"|[Ss]igned,?|Regards,|Thanks,|Thank you,|Cheers,|Best,|Sincerely,|Love,|From:"
            rf"|(?:[Ww]ife|[Hh]usband|[Pp]artner|[Ss]on|[Dd]aughter|[Mm]other|[Ff]ather|[Ss]ister|[Bb]rother|[Nn]urse"
            rf"|[Cc]arer|[Ff]riend|[Nn]eighbour|[Cc]olleague),?)\s+)"
            rf"({_NAME_WORD}(?:[ ]{_NAME_WORD}){{0,2}})"
        ),
        1,
    ),
    # Weaker cues (a form label, a speaker tag): two capitalised words, or "Surname, Firstname".
    (
        "name",
        re.compile(
            rf"\b(?:Patient|Pt|Member|Name|Patient name|Customer|Client|Resident)\s*:\s*"
            rf"({_NAME_WORD}(?:[ ]{_NAME_WORD}){{1,2}}|{_NAME_WORD},[ ]{_NAME_WORD})"
        ),
        1,
    ),
    ("name", re.compile(rf"\b({_NAME_WORD}(?:[ ]{_NAME_WORD}|[ ][A-Z]\.)?)[ ]here\b"), 1),  # "Hollis here"
    ("name", re.compile(rf"^({_NAME_WORD}[ ]{_NAME_WORD})[,.]?\s*$", re.M), 1),  # a line that is just a name
]

_PHONE_CUE = re.compile(r"phone|mobile|call|tel|ring|text|number|contact|reach", re.I)
_DATE_SHAPE = re.compile(r"^\d{1,2}[./-]\d{1,2}[./-]\d{2,4}$|^\d{4}-\d{2}-\d{2}$")


def find_identifiers(text: str, *, metadata: dict | None = None) -> list[Span]:
    """The spans `redact` replaces, merged: overlapping spans become one, of the longest one's kind."""
    if not text:
        return []
    spans: list[Span] = []
    spans += _from_metadata(text, metadata or {})
    spans += _from_patterns(text)
    spans += _from_first_names(text)
    spans += _birth_dates(text)
    spans += _names_again(text, spans)
    return _merge(spans)


def redact(text: str, *, metadata: dict | None = None) -> str:
    """`text` with every identifier found replaced by its placeholder."""
    pieces, last = [], 0
    for span in find_identifiers(text, metadata=metadata):
        pieces += [text[last : span.start], PLACEHOLDERS[span.kind]]
        last = span.end
    return "".join(pieces) + text[last:]


def redact_metadata(metadata: dict) -> dict:
    """The same keys; every value under an identifying key (judged by its whole path, "patient_dob")
    replaced, other text redacted like any text."""
    return _redact_value(metadata, metadata, "")


def _redact_value(value, metadata: dict, path: str):
    if isinstance(value, dict):
        return {
            key: _redact_value(inner, metadata, f"{path}_{key}" if path else str(key)) for key, inner in value.items()
        }
    if isinstance(value, list):
        return [_redact_value(inner, metadata, path) for inner in value]
    kind = _key_kind(path) if path else None
    if kind and value is not None and not isinstance(value, bool) and str(value).strip():
        return PLACEHOLDERS[kind]
    if isinstance(value, str):
        return redact(value, metadata=metadata)
    return value


# --- sources -----------------------------------------------------------------------------


def _from_metadata(text: str, metadata: dict) -> list[Span]:
    spans = []
    for key, value in _flatten(metadata):
        kind = _key_kind(key)
        if kind is None or value is None or isinstance(value, (bool, float)):
            continue
        if kind == "name" and not isinstance(value, str):
            continue  # a number under a name key names nobody
        value = str(value).strip()
        if not value:
            continue
        for needle in _renderings(kind, value):
            # A single name part only as written ("Green", not "green sputum"); the whole name in any case.
            single_part = kind == "name" and " " not in needle
            spans += _find_all(text, needle, kind, ignore_case=not single_part)
        if kind in ("phone", "record_number", "insurance_number"):
            spans += _same_digits(text, value, kind)
    return spans


def _flatten(metadata, prefix: str = "") -> Iterable[tuple[str, object]]:
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            yield from _flatten(value, f"{prefix}{key}_")
    elif isinstance(metadata, list):
        for value in metadata:
            yield from _flatten(value, prefix)
    else:
        yield prefix.rstrip("_"), metadata


def _renderings(kind: str, value: str) -> list[str]:
    if kind == "name":
        parts = [part for part in re.split(r"\s+", re.sub(rf"^{_TITLE}\s+", "", value)) if part]
        names = [value, " ".join(parts), *parts]
        names += [piece for part in parts for piece in part.split("-") if "-" in part]
        return [name for name in dict.fromkeys(names) if len(name) >= 2 and name not in _NOT_NAMES]
    if kind == "date_of_birth":
        born = _parse_date(value)
        return [value, *(_date_spellings(born) if born else [])]
    if kind == "address":
        parts = [part.strip() for part in value.split(",")]
        return [value, *(part for part in parts if re.search(r"\d", part) and len(part) > 3)]
    return [value]


def _find_all(text: str, needle: str, kind: str, ignore_case: bool) -> list[Span]:
    flags = re.I if ignore_case else 0
    pattern = re.compile(rf"(?<![\w]){re.escape(needle)}(?![\w])", flags)
    return [Span(match.start(), match.end(), kind) for match in pattern.finditer(text)]


def _same_digits(text: str, value: str, kind: str) -> list[Span]:
    """A number written with other separators ("07700 900461" as "07700-900461", "MRN 448201" as "448201")."""
    digits = re.sub(r"\D", "", value)
    if len(digits) < 5:
        return []
    spans = []
    for match in re.finditer(r"\+?\d[\d\s().-]*\d", text):
        if re.sub(r"\D", "", match.group()) in (digits, digits.lstrip("0")) or (
            digits.endswith(re.sub(r"\D", "", match.group())) and len(re.sub(r"\D", "", match.group())) >= 6
        ):
            spans.append(Span(match.start(), match.end(), kind))
    return spans


def _from_patterns(text: str) -> list[Span]:
    spans = []
    for kind, pattern, group in _PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span(group)
            found = match.group(group)
            if kind == "name" and not _plausible_name(found):
                continue
            if kind == "phone" and not _plausible_phone(text, start, found):
                continue
            spans.append(Span(start, end, kind))
    return spans


def _plausible_name(found: str) -> bool:
    words = found.split()
    return bool(words) and words[0] not in _NOT_NAMES and all(word not in MONTHS for word in words)


def _plausible_phone(text: str, start: int, found: str) -> bool:
    digits = re.sub(r"\D", "", found)
    if not 7 <= len(digits) <= 15 or _DATE_SHAPE.match(found.strip()):
        return False
    if found.strip().startswith("+") or re.match(r"^\(?0", found.strip()) or re.match(r"^\d{3}-\d{4}$", found):
        return True
    return bool(_PHONE_CUE.search(text[max(0, start - 40) : start]))


def _names_again(text: str, spans: list[Span]) -> list[Span]:
    """A name found once is redacted wherever else it appears ("Hello Kenji" after "my husband, Kenji"),
    with an initial written before a surname ("L. Marchetti")."""
    words = set()
    for span in spans:
        if span.kind == "name":
            words.update(w for w in re.findall(_NAME_WORD, text[span.start : span.end]) if len(w) > 2)
    words -= _NOT_NAMES
    found = []
    for word in words:
        for match in re.finditer(rf"(?<![\w])(?:[A-Z]\.\s?)?{re.escape(word)}(?![\w])", text):
            found.append(Span(match.start(), match.end(), "name"))
    return found


def _from_first_names(text: str) -> list[Span]:
    """A known first name written as a name (capitalised, not at a sentence start unless a surname follows),
    and the capitalised surname after it."""
    spans = []
    for match in re.finditer(rf"\b({_NAME_WORD})(?:[ ]({_NAME_WORD}|[A-Z]\.))?", text):
        first, surname = match.group(1), match.group(2)
        if first not in FIRST_NAMES:
            continue
        at_sentence_start = re.search(r"(?:^|[.!?:]\s*|\n\s*)$", text[: match.start()]) is not None
        has_surname = surname is not None and surname not in _NOT_NAMES and surname not in MONTHS
        if first.lower() in _ALSO_WORDS and at_sentence_start and not has_surname:
            continue
        end = match.end(2) if has_surname else match.end(1)
        spans.append(Span(match.start(1), end, "name"))
    return spans


# First names that are also ordinary words: only taken as names where a word would not be capitalised.
_ALSO_WORDS = {"grace", "rose", "mark", "will", "may", "hope", "faith", "joy", "bill", "pat", "jay", "ray", "rita"}


def _birth_dates(text: str) -> list[Span]:
    """Full dates with a year long past (≤ 2012) in a text that speaks of birth or age are dates of birth;
    a visit or an order date is recent."""
    if not re.search(r"birth|born|DOB|D\.O\.B|\bage\b|years old", text, re.I):
        return []
    spans = []
    for match in _FULL_DATE_RE.finditer(text):
        year = re.search(r"(\d{4})\s*$", match.group()) or re.search(r"^(\d{4})", match.group())
        if year and 1900 <= int(year.group(1)) <= 2012:
            spans.append(Span(match.start(), match.end(), "date_of_birth"))
    return spans


# --- dates ---------------------------------------------------------------------------------


def _parse_date(value: str) -> date | None:
    for pattern, order in ((r"(\d{4})-(\d{1,2})-(\d{1,2})", "ymd"), (r"(\d{1,2})[./](\d{1,2})[./](\d{4})", "dmy")):
        match = re.fullmatch(pattern, value.strip())
        if match:
            numbers = dict(zip(order, map(int, match.groups()), strict=True))
            try:
                return date(numbers["y"], numbers["m"], numbers["d"])
            except ValueError:
                return None
    return None


def _date_spellings(born: date) -> list[str]:
    day, month, year = born.day, born.month, born.year
    name = MONTHS[month - 1]
    short = name[:3]
    suffix = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    word = _ORDINAL_WORDS[day - 1]
    spellings = [
        f"{day:02d}/{month:02d}/{year}", f"{day}/{month}/{year}", f"{month:02d}/{day:02d}/{year}",
        f"{month}/{day}/{year}", f"{day:02d}.{month:02d}.{year}", f"{day}.{month}.{year}",
        f"{day:02d}-{month:02d}-{year}", f"{year}-{month:02d}-{day:02d}", f"{day:02d}/{month:02d}/{year % 100:02d}",
    ]  # fmt: skip
    for day_text in (str(day), f"{day}{suffix}", word, word.capitalize(), f"the {word}", f"the {day}{suffix}"):
        for month_text in (name, short):
            spellings += [
                f"{day_text} {month_text} {year}",
                f"{day_text} of {month_text} {year}",
                f"{day_text} of {month_text}, {year}",
                f"{day_text} {month_text}, {year}",
                f"{month_text} {day_text}, {year}",
                f"{month_text} {day_text} {year}",
            ]
    return spellings


# --- merging ---------------------------------------------------------------------------------


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[tuple[int, int, str, int]] = []  # start, end, kind, length of the span that gave the kind
    for span in sorted(spans, key=lambda s: (s.start, -(s.end - s.start))):
        length = span.end - span.start
        if merged and span.start < merged[-1][1]:
            start, end, kind, kind_length = merged[-1]
            if length > kind_length:
                kind, kind_length = span.kind, length
            merged[-1] = (start, max(end, span.end), kind, kind_length)
        else:
            merged.append((span.start, span.end, span.kind, length))
    return [Span(start, end, kind) for start, end, kind, _ in merged]
