"""The domain's repetition settings count the draft's own tokens, never the prompt's.

A prompt that shows approved examples (models_app/retrieval.py) repeats their greeting and sign-off; transformers'
own processors would count those and forbid the draft to write them again.
"""

import json
import shutil

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

from models_app.inference import Sampling
from models_app.inference.base import ModelRef
from models_app.inference.local import LocalBackend, _DraftOnlyNoRepeat, model_cache, repetition_processors
from models_app.inference.prompts import sampling_errors

VOCAB = 12


def flat_scores() -> torch.FloatTensor:
    return torch.ones((1, VOCAB))


def ids(*tokens: int) -> torch.LongTensor:
    return torch.tensor([tokens])


def bigrams(tokens: list[int]) -> list[tuple[int, int]]:
    return list(zip(tokens, tokens[1:], strict=False))


# --- no n-gram twice, within the draft -------------------------------------------------


def test_a_bigram_of_the_prompt_may_be_written_in_the_draft():
    # Prompt 5 6 7 (holds the bigram 5 6), draft so far: 5. May 6 come next?
    prompt_then_draft = ids(5, 6, 7, 5)

    ours = _DraftOnlyNoRepeat(2, prompt_length=3)(prompt_then_draft, flat_scores())
    theirs = NoRepeatNGramLogitsProcessor(2)(prompt_then_draft, flat_scores())

    assert torch.isfinite(ours).all()  # nothing is forbidden: 5 6 is only in the prompt
    assert theirs[0, 6] == -torch.inf  # transformers' own processor would forbid it


def test_a_bigram_the_draft_already_wrote_is_forbidden():
    # Prompt 1 2, draft 5 6 8 5: 6 after 5 would repeat the draft's own 5 6.
    scores = _DraftOnlyNoRepeat(2, prompt_length=2)(ids(1, 2, 5, 6, 8, 5), flat_scores())

    assert scores[0, 6] == -torch.inf
    assert torch.isfinite(torch.cat([scores[0, :6], scores[0, 7:]])).all()


def test_nothing_is_forbidden_before_the_draft_holds_an_n_gram():
    processor = _DraftOnlyNoRepeat(3, prompt_length=4)

    for draft in [(), (1,), (1, 2)]:
        assert torch.equal(processor(ids(1, 2, 1, 2, *draft), flat_scores()), flat_scores()), draft


@pytest.fixture
def ref(tiny_model_dir):
    return ModelRef(key="tiny-repetition", base_model=str(tiny_model_dir))


@pytest.fixture
def write_draft(ref, monkeypatch):
    """Writes a draft through the local backend and returns its token ids (the draft part of what generate()
    returned)."""
    loaded = model_cache.get(ref)
    generate, written = loaded.model.generate, []

    def recording(**kwargs):
        out = generate(**kwargs)
        written.append(out[0, kwargs["input_ids"].shape[-1] :].tolist())
        return out

    monkeypatch.setattr(loaded.model, "generate", recording)
    messages = [{"role": "user", "content": "Best regards, Best regards, Best regards. Write a reply."}]

    def write(sampling: Sampling) -> list[int]:
        LocalBackend().generate(ref, messages, sampling, on_text=lambda _: None, should_stop=lambda: False)
        return written[-1]

    return write


def test_a_draft_with_no_repeat_ngram_size_two_repeats_no_bigram_of_its_own(write_draft):
    plain = write_draft(Sampling(max_new_tokens=60))
    limited = write_draft(Sampling(max_new_tokens=60, no_repeat_ngram_size=2))

    assert len(bigrams(plain)) > len(set(bigrams(plain)))  # the tiny model repeats itself when let
    assert len(limited) == 60
    assert len(bigrams(limited)) == len(set(bigrams(limited)))


# --- the repetition penalty, on the draft's tokens ----------------------------------------------


def test_the_repetition_penalty_applies_to_the_drafts_tokens_only():
    (processor,) = repetition_processors(Sampling(repetition_penalty=2.0), prompt_length=3)
    scores = torch.tensor([[1.0] * 6 + [-1.0] * 6])

    penalised = processor(ids(1, 2, 7, 3, 8), scores.clone())  # prompt 1 2 7, draft 3 8

    assert isinstance(processor, RepetitionPenaltyLogitsProcessor)
    assert penalised[0, 3] == 0.5 and penalised[0, 8] == -2.0  # the draft's own tokens are less likely
    assert penalised[0, 1] == penalised[0, 2] == 1.0 and penalised[0, 7] == -1.0  # the prompt's are not
    assert torch.equal(processor(ids(1, 2, 7), scores.clone()), scores)  # nothing written yet: nothing penalised


def test_repetition_processors_follow_the_settings():
    assert repetition_processors(Sampling(), prompt_length=10) == []
    both = repetition_processors(Sampling(repetition_penalty=1.3, no_repeat_ngram_size=4), prompt_length=10)
    assert [type(p) for p in both] == [RepetitionPenaltyLogitsProcessor, _DraftOnlyNoRepeat]
    assert (both[1].inner.ngram_size, both[1].prompt_length) == (4, 10)


# --- the setting's range ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4, 20])
def test_no_repeat_ngram_size_from_0_to_20_is_accepted(size):
    assert sampling_errors({"no_repeat_ngram_size": size}) == []


@pytest.mark.parametrize(
    ("size", "error"),
    [
        (21, "no_repeat_ngram_size must be from 0 (off) to 20"),
        (-1, "no_repeat_ngram_size must be from 0 (off) to 20"),
        (2.5, "no_repeat_ngram_size must be a number (whole)"),
        (True, "no_repeat_ngram_size must be a number (whole)"),
        ("3", "no_repeat_ngram_size must be a number (whole)"),
    ],
)
def test_no_repeat_ngram_size_outside_the_range_or_not_whole_is_refused(size, error):
    assert sampling_errors({"no_repeat_ngram_size": size}) == [error]


def test_a_model_folders_own_repetition_settings_do_not_reach_the_draft(tiny_model_dir, tmp_path):
    """transformers would apply a generation_config.json's repetition settings over the prompt too; the domain's
    settings are the only ones (counted on the draft's tokens)."""
    folder = tmp_path / "opinionated-model"
    shutil.copytree(tiny_model_dir, folder)
    config_path = folder / "generation_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config_path.write_text(json.dumps({**config, "no_repeat_ngram_size": 2, "repetition_penalty": 1.5}))
    messages = [{"role": "user", "content": "Best regards, Best regards, Best regards. Write a reply."}]

    def draft(base_model) -> str:
        ref = ModelRef(key=f"repetition-{base_model}", base_model=str(base_model))
        sampling = Sampling(max_new_tokens=60)
        return LocalBackend().generate(ref, messages, sampling, on_text=lambda _: None, should_stop=lambda: False).text

    assert draft(folder) == draft(tiny_model_dir)
