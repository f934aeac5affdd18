"""A tiny causal language model built from a config in about a second: the suite's stand-in for SmolLM2.

Random weights, a byte-level BPE tokenizer trained on a few sentences, and a
ChatML template like SmolLM2's, saved as a standard Hugging Face folder, so
it goes through exactly the code paths the real model does.
"""

from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Hi Dana, thank you for your message about order 1042. Your parcel left our warehouse today.",
    "S: the patient reports a cough for three days. O: temperature 37.9. A: viral infection. P: 1. rest.",
    "Council approves new cycle lane — RIVERTON — The city council approved a cycle lane on Tuesday.",
    "Best regards, The Brightwater Support Team. We are sorry for the delay and will refund the fee.",
    "Ünïcödé text, emoji 🙂 and <script>alert(1)</script> must survive streaming byte for byte.",
]


def build_tiny_model(folder: Path, *, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Larger than the usual 0.02, so that logits can move far enough for fine-tuning tests to see learning.
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # A zero row gives end-of-text a logit of 0, the median of the tiny random logits: greedy decoding
        # (which takes the maximum) practically never ends early, so drafts run to max_new_tokens.
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
