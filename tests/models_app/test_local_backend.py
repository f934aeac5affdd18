"""The `local` backend on the tiny model: streamed text equals non-streamed greedy output, log-probs, cancel."""

import pytest
import torch

from models_app.inference import GenerationFailed, Sampling
from models_app.inference.base import ModelRef
from models_app.inference.local import LocalBackend, generation_kwargs, model_cache, pick_device, prompt_inputs

MESSAGES = [{"role": "user", "content": "Where is my parcel? Order 1042."}]


@pytest.fixture
def ref(tiny_model_dir):
    return ModelRef(key="tiny", base_model=str(tiny_model_dir))


def non_streamed(ref: ModelRef, sampling: Sampling) -> str:
    loaded = model_cache.get(ref)
    inputs = prompt_inputs(loaded, MESSAGES)
    with torch.inference_mode():
        out = loaded.model.generate(**inputs, **generation_kwargs(sampling, loaded.tokenizer))
    return loaded.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_streamed_pieces_concatenate_to_the_non_streamed_greedy_output(ref):
    sampling = Sampling(max_new_tokens=60)
    pieces = []

    output = LocalBackend().generate(ref, MESSAGES, sampling, on_text=pieces.append, should_stop=lambda: False)

    assert len(pieces) > 5
    assert "".join(pieces) == output.text == non_streamed(ref, sampling)
    assert not output.cancelled


def test_every_generated_token_has_a_log_probability(ref):
    output = LocalBackend().generate(
        ref, MESSAGES, Sampling(max_new_tokens=30), on_text=lambda _: None, should_stop=lambda: False
    )

    assert len(output.token_logprobs) == 30
    assert all(lp <= 0 for lp in output.token_logprobs)
    assert output.uncertainty == pytest.approx(-sum(output.token_logprobs) / 30)


def test_cancel_stops_after_the_step_that_saw_it(ref):
    steps = []

    def should_stop() -> bool:
        steps.append(1)
        return len(steps) >= 3

    output = LocalBackend().generate(
        ref, MESSAGES, Sampling(max_new_tokens=200), on_text=lambda _: None, should_stop=should_stop
    )

    assert output.cancelled
    assert len(output.token_logprobs) == 3  # the third step asked, and decoding stopped right there


def test_sampling_settings_reach_generate(ref):
    kwargs = generation_kwargs(Sampling(temperature=0.7, top_p=0.9, max_new_tokens=5), model_cache.get(ref).tokenizer)

    assert kwargs["do_sample"] is True and kwargs["temperature"] == 0.7 and kwargs["top_p"] == 0.9


def test_the_cpu_runs_in_float32_when_there_is_no_gpu():
    device, dtype = pick_device()

    assert (device.type, dtype) == (("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32))


def test_a_missing_model_folder_is_a_clear_failure(tmp_path):
    with pytest.raises(GenerationFailed, match="Could not load the model"):
        LocalBackend().generate(
            ModelRef(key="missing", base_model=str(tmp_path / "nothing")),
            MESSAGES,
            Sampling(),
            on_text=lambda _: None,
            should_stop=lambda: False,
        )
