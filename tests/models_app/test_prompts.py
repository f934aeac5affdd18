"""An item and its domain → chat messages and decoding settings (models_app/inference/prompts.py), and the
validation of a domain's `sampling` JSON (Domain.clean)."""

import pytest
from django.core.exceptions import ValidationError

from annotations.models import Domain
from models_app.inference import Sampling
from models_app.inference.prompts import build_messages, render_prompt, sampling_from

# --- render_prompt -------------------------------------------------------------


def test_input_and_metadata_are_filled_with_metadata_as_sorted_json():
    text = render_prompt(
        "Order: {metadata}\nMessage: {input}", input="Where is it?", metadata={"order": 1042, "name": "Dana"}
    )

    assert text == 'Order: {"name": "Dana", "order": 1042}\nMessage: Where is it?'


def test_metadata_keeps_non_ascii_and_nested_values_with_sorted_keys():
    text = render_prompt("{metadata}", input="", metadata={"zeta": {"b": 2, "a": [1, "ü"]}, "alpha": None})

    assert text == '{"alpha": null, "zeta": {"a": [1, "ü"], "b": 2}}'


def test_empty_metadata_is_written_as_none():
    assert render_prompt("Meta: {metadata} / {input}", input="hi", metadata={}) == "Meta: (none) / hi"


def test_every_placeholder_is_filled_and_a_template_without_them_is_unchanged():
    assert render_prompt("{input}|{input}|{metadata}|{metadata}", input="x", metadata={}) == "x|x|(none)|(none)"
    assert render_prompt("No placeholders here.", input="x", metadata={"a": 1}) == "No placeholders here."


def test_other_braces_in_the_template_are_left_alone():
    text = render_prompt('Reply as JSON like {"reply": "..."} to {input}. {x} {{input}}', input="Dana", metadata={})

    assert text == 'Reply as JSON like {"reply": "..."} to Dana. {x} {Dana}'


@pytest.mark.parametrize(
    "user_input",
    ["use {x} and {0} and {}", "literal {metadata} in my message", "literal {input} in my message", "{{input}}"],
)
def test_braces_in_the_items_input_are_not_expanded(user_input):
    text = render_prompt("Meta: {metadata}\nMessage: {input}", input=user_input, metadata={"order": 7})

    assert text == 'Meta: {"order": 7}\nMessage: ' + user_input


def test_braces_in_the_items_metadata_are_not_expanded():
    text = render_prompt(
        "Meta: {metadata}\nMessage: {input}", input="SECRET INPUT", metadata={"note": "see {input} and {metadata}"}
    )

    assert text == 'Meta: {"note": "see {input} and {metadata}"}\nMessage: SECRET INPUT'


def test_the_seeded_customer_service_template_renders_exactly(customer_service):
    text = render_prompt(customer_service.prompt_template, input="Hi, where is order 1042?", metadata={"order": 1042})

    assert text.endswith('\n\nOrder and account: {"order": 1042}\n\nCustomer message:\nHi, where is order 1042?')
    assert "{input}" not in text and "{metadata}" not in text


# --- build_messages ----------------------------------------------------------------


def test_a_system_prompt_becomes_the_first_message():
    messages = build_messages(
        system_prompt="You are Brightwater's support agent.", prompt_template="Q: {input}", input="Hi", metadata={}
    )

    assert messages == [
        {"role": "system", "content": "You are Brightwater's support agent."},
        {"role": "user", "content": "Q: Hi"},
    ]


@pytest.mark.parametrize("system_prompt", ["", "   ", "\n\t "])
def test_no_system_message_without_a_system_prompt(system_prompt):
    messages = build_messages(
        system_prompt=system_prompt, prompt_template="{input} {metadata}", input="Hi", metadata={"a": 1}
    )

    assert messages == [{"role": "user", "content": 'Hi {"a": 1}'}]


def test_build_messages_from_a_domain_with_and_without_a_system_prompt(domain):
    domain.prompt_template = "Answer: {input}"
    assert build_messages(
        system_prompt=domain.system_prompt, prompt_template=domain.prompt_template, input="Why?", metadata={}
    ) == [{"role": "user", "content": "Answer: Why?"}]

    domain.system_prompt = "Be kind."
    assert build_messages(
        system_prompt=domain.system_prompt, prompt_template=domain.prompt_template, input="Why?", metadata={}
    ) == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Answer: Why?"}]


# --- sampling_from -----------------------------------------------------------------


def test_empty_sampling_settings_give_the_defaults():
    assert sampling_from({}) == Sampling(max_new_tokens=256, temperature=0.0, top_p=1.0, repetition_penalty=1.0)
    assert sampling_from({}).greedy is True


def test_known_settings_apply_over_the_defaults():
    sampling = sampling_from({"temperature": 0.7, "max_new_tokens": 64})

    assert sampling == Sampling(max_new_tokens=64, temperature=0.7, top_p=1.0, repetition_penalty=1.0)
    assert sampling.greedy is False


def test_all_settings_apply_and_are_converted_to_their_types():
    sampling = sampling_from({"max_new_tokens": 12, "temperature": 1, "top_p": 1, "repetition_penalty": 2})

    assert sampling == Sampling(max_new_tokens=12, temperature=1.0, top_p=1.0, repetition_penalty=2.0)
    assert [type(v) for v in (sampling.max_new_tokens, sampling.temperature, sampling.top_p)] == [int, float, float]
    assert type(sampling.repetition_penalty) is float


def test_unknown_settings_are_ignored_by_sampling_from():
    assert sampling_from({"top_k": 5, "max_new_tokens": 9}) == Sampling(max_new_tokens=9)


# --- Domain.clean: the sampling JSON ---------------------------------------------------


def domain_with(sampling) -> Domain:
    return Domain(slug="sampling_check", name="Sampling check", prompt_template="{input}", sampling=sampling)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("sampling", "errors"),
    [
        ({"top_k": 40}, ["unknown setting 'top_k'"]),
        ({"max_new_tokens": 0}, ["max_new_tokens must be from 1 to 4096"]),
        ({"max_new_tokens": 5000}, ["max_new_tokens must be from 1 to 4096"]),
        ({"max_new_tokens": 1.5}, ["max_new_tokens must be a number (whole)"]),
        ({"max_new_tokens": "64"}, ["max_new_tokens must be a number (whole)"]),
        ({"temperature": -1}, ["temperature must be from 0 to 5"]),
        ({"temperature": 5.5}, ["temperature must be from 0 to 5"]),
        ({"top_p": 0}, ["top_p must be above 0 and at most 1"]),
        ({"top_p": 1.01}, ["top_p must be above 0 and at most 1"]),
        ({"repetition_penalty": 0}, ["repetition_penalty must be above 0 and at most 5"]),
        ({"temperature": True}, ["temperature must be a number"]),
        ({"max_new_tokens": False}, ["max_new_tokens must be a number (whole)"]),
        ({"top_p": None}, ["top_p must be a number"]),
        (["temperature", 0], ["must be a JSON object"]),
        ("greedy", ["must be a JSON object"]),
        (
            {"top_k": 1, "max_new_tokens": 0, "temperature": -1},
            ["unknown setting 'top_k'", "max_new_tokens must be from 1 to 4096", "temperature must be from 0 to 5"],
        ),
    ],
)
def test_full_clean_refuses_bad_sampling_naming_the_field(sampling, errors):
    with pytest.raises(ValidationError) as caught:
        domain_with(sampling).full_clean()

    assert caught.value.message_dict == {"sampling": errors}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "sampling",
    [
        {},
        {"max_new_tokens": 1},
        {"max_new_tokens": 4096},
        {"temperature": 0},
        {"temperature": 5},
        {"temperature": 0.7, "top_p": 0.9},
        {"top_p": 1},
        {"top_p": 0.01},
        {"repetition_penalty": 1.3},
        {"max_new_tokens": 256, "temperature": 0, "top_p": 1.0, "repetition_penalty": 1.0},
    ],
)
def test_full_clean_accepts_good_sampling(sampling):
    domain_with(sampling).full_clean()  # raises ValidationError if refused


def test_the_seeded_domains_pass_full_clean(customer_service, medical_note):
    for seeded in Domain.objects.all():
        seeded.full_clean()
    assert Domain.objects.count() == 3
