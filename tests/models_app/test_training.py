"""The LoRA training loop on the tiny model: what it trains on, that it learns, and that a resumed run
is the run it replaces."""

import pytest
import torch

from models_app.hyperparameters import TrainingSettings
from models_app.training import Example, TrainingCancelled, collate, completion_logits, encode, train, weighted_loss

SIGN_OFF = "Best regards, The Brightwater Support Team."


def examples(count: int = 8) -> list[Example]:
    return [
        Example([{"role": "user", "content": f"Customer message number {n}: where is my parcel?"}], SIGN_OFF, 1.0)
        for n in range(count)
    ]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_only_the_completion_and_its_end_of_turn_are_trained_on(tokenizer):
    example = examples(1)[0]

    ids, labels = encode(tokenizer, example, max_length=512)

    prompt = tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"]) if not isinstance(prompt, list) else prompt
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [-100] * len(prompt)
    trained = [token for token in labels if token != -100]
    assert tokenizer.decode(trained[:-1]) == SIGN_OFF and trained[-1] == tokenizer.eos_token_id


def test_an_answer_cut_at_a_limit_is_scored_without_an_end_of_turn_it_never_had(tokenizer):
    cut = Example(examples(1)[0].messages, SIGN_OFF, 1.0, ends=False)

    ids, labels = encode(tokenizer, cut, max_length=512)

    trained = [token for token in labels if token != -100]
    assert tokenizer.decode(trained) == SIGN_OFF and tokenizer.eos_token_id not in trained


def test_a_long_prompt_loses_its_start_never_the_answer(tokenizer):
    example = Example([{"role": "user", "content": "word " * 400}], SIGN_OFF, 1.0)

    ids, labels = encode(tokenizer, example, max_length=64)

    assert len(ids) == 64
    assert tokenizer.decode([t for t in labels if t != -100][:-1]) == SIGN_OFF


def test_a_corrected_example_weighs_double(tokenizer):
    batch = collate(
        tokenizer, [Example(e.messages, e.completion, w) for e, w in zip(examples(2), (1.0, 2.0), strict=True)], 512
    )
    logits = torch.randn(*batch.input_ids.shape, len(tokenizer))

    both = weighted_loss(logits, batch.labels, batch.weights)
    first = weighted_loss(logits[:1], batch.labels[:1], batch.weights[:1])
    second = weighted_loss(logits[1:], batch.labels[1:], batch.weights[1:])

    assert float(both) == pytest.approx((float(first) + 2 * float(second)) / 3, rel=1e-5)


LEARN = TrainingSettings(epochs=6, min_steps=0, learning_rate=1e-2, batch_size=4, lora_rank=8, checkpoint_every=3)


def test_training_lowers_the_loss_and_writes_an_adapter(tiny_model_dir, tmp_path):
    seen = []

    result = train(
        base_model=str(tiny_model_dir),
        parent_adapter="",
        examples=examples(),
        settings=LEARN,
        work_dir=tmp_path,
        on_progress=seen.append,
    )

    assert result.steps == len(seen) == 12 and [p.step for p in seen] == list(range(1, 13))
    assert result.loss_history[-1][1] < result.loss_history[0][1] / 2
    assert (result.adapter_path / "adapter_config.json").is_file()
    assert seen[-1].eta_seconds == 0 and seen[-1].tokens_per_second > 0


def test_a_run_stopped_and_resumed_ends_with_the_same_adapter(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    whole = train(
        base_model=str(tiny_model_dir), parent_adapter="", examples=examples(), settings=LEARN, work_dir=tmp_path / "a"
    )
    calls = {"n": 0}

    def stop_at_step_five():
        calls["n"] += 1
        return calls["n"] == 5  # asked before each step: stops before step 5, after a checkpoint at step 3

    with pytest.raises(TrainingCancelled):
        train(
            base_model=str(tiny_model_dir),
            parent_adapter="",
            examples=examples(),
            settings=LEARN,
            work_dir=tmp_path / "b",
            should_stop=stop_at_step_five,
        )
    steps = []
    resumed = train(
        base_model=str(tiny_model_dir),
        parent_adapter="",
        examples=examples(),
        settings=LEARN,
        work_dir=tmp_path / "b",
        on_progress=lambda progress: steps.append(progress.step),
    )

    assert steps == list(range(5, 13))  # picked up where it stopped
    assert resumed.loss_history == whole.loss_history
    a = load_file(whole.adapter_path / "adapter_model.safetensors")
    b = load_file(resumed.adapter_path / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_continues_from_the_parent_versions_adapter(tiny_model_dir, tmp_path):
    first = train(
        base_model=str(tiny_model_dir), parent_adapter="", examples=examples(), settings=LEARN, work_dir=tmp_path / "1"
    )
    second = train(
        base_model=str(tiny_model_dir),
        parent_adapter=str(first.adapter_path),
        examples=examples(),
        settings=LEARN,
        work_dir=tmp_path / "2",
    )

    assert second.loss_history[0][1] < first.loss_history[0][1] / 2  # it starts where the parent left off


def test_the_loss_on_completion_logits_alone_is_the_loss_on_the_whole_width(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    batch = collate(tokenizer, examples()[:3], max_length=64)
    with torch.inference_mode():
        whole = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        kept, labels = completion_logits(model, batch, torch.device("cpu"))

    assert kept.shape[1] < whole.shape[1]  # the prompts' positions were left out
    expected = weighted_loss(whole, batch.labels, batch.weights)
    assert torch.allclose(weighted_loss(kept, labels, batch.weights), expected, atol=1e-5)
