#!/usr/bin/env python
"""Fine-tuning throughput benchmark (PRODUCT.md §8, "fine-tuning").

    .venv/bin/python bench/finetune.py [--model PATH] [--steps N] [--batch-size B] [--repeats R] [--json PATH]

Target: the product's training tokens/s ≥ 0.9 × a bare PyTorch loop over the same batches, in the same run.

Both loops train the same model (the converted SmolLM2-135M-Instruct folder by default, float32 on the CPU,
or whatever `pick_device` gives), with the same LoRA configuration (TrainingSettings: rank, alpha, dropout,
all linear layers), the same seed, the same learning rate and the same token batches:

* Examples: 64 built from the synthetic demo cases (annotations/fixtures/demo/customer_service.jsonl): the
  messages exactly as the product builds them (models_app.inference.prompts.build_messages with the
  customer_service domain's prompt template as seeded by annotations/migrations/0002, no system prompt),
  the gold reply as the completion, weight 2 (a corrected draft). The 36 cases are cycled to fill the
  list; a run of N steps trains on N × B of them, one epoch.
* Product: `models_app.training.train(...)` as a fine-tune job calls it, with default settings (checkpoint
  every `checkpoint_every` steps, the final adapter saved). Its tokens/s is the figure it reports through
  `on_progress` at the last step (completion tokens since the loop started, the first step included);
  the bench's own clock (first `should_stop` call → last `on_progress`) is printed beside it.
* Bare loop, written here: its own tokenisation (chat template + completion + end of turn, prompt masked),
  every batch tokenised before the clock starts, then forward, plain mean cross-entropy over the
  completion tokens, backward, AdamW step, zero_grad. No scheduler, no clipping, no checkpoints, no
  callbacks. Its batches are checked to be token-for-token those the product's `collate` builds for the
  same plan (`batches_for_epoch`, seed and epoch 0).

Order: one warm-up run of each (2 steps, not counted), then bare, product, bare, product, … (R pairs); each
run loads the model afresh, as a job does, outside its clock. Ratios are of the medians.
Checkpoint cost: `_save_checkpoint` (adapter + AdamW state + scheduler + RNG) is timed on its own after the
runs and amortised over `checkpoint_every` steps, and the final adapter save is timed in every product run
(train() returning − its last on_progress).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._machine import git_state, loadavg, machine_info, torch_info  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sora_web.settings.local")

import django  # noqa: E402

django.setup()

import torch  # noqa: E402

from annotations.demo_data import demo_cases  # noqa: E402
from models_app import training  # noqa: E402
from models_app.hyperparameters import TrainingSettings  # noqa: E402
from models_app.inference.local import pick_device  # noqa: E402
from models_app.inference.prompts import build_messages  # noqa: E402

TARGET_RATIO = 0.9
DOMAIN = "customer_service"
EXAMPLES = 64
CORRECTED_WEIGHT = 2.0  # models_app.datasets.EDITED_WEIGHT: every demo gold differs from its draft
WARMUP_STEPS = 2


# =============================================================================
# Set-up: machine, model, examples
# =============================================================================


def default_model() -> str:
    from models_app.services import default_model_folder

    return str(default_model_folder())


def domain_prompt() -> tuple[str, str]:
    """(system prompt, prompt template) of the domain as the product seeds it."""
    seed = importlib.import_module("annotations.migrations.0002_seed_domains_and_roles")
    fields = next(d for d in seed.DOMAINS if d["slug"] == DOMAIN)
    return fields.get("system_prompt", ""), fields["prompt_template"]


def build_examples(count: int) -> list[training.Example]:
    system_prompt, template = domain_prompt()
    cases = demo_cases(DOMAIN)
    examples = []
    for i in range(count):
        case = cases[i % len(cases)]
        messages = build_messages(
            system_prompt=system_prompt, prompt_template=template, input=case.input, metadata=case.metadata
        )
        examples.append(training.Example(messages, case.gold, CORRECTED_WEIGHT))
    return examples


def run_examples(examples: list[training.Example], steps: int, batch_size: int) -> list[training.Example]:
    """The N × B examples one run trains on (one epoch of N steps); the list is cycled when N × B exceeds it."""
    return [examples[i % len(examples)] for i in range(steps * batch_size)]


# =============================================================================
# The bare loop
# =============================================================================


def bare_encode(tokenizer, example: training.Example) -> tuple[list[int], list[int]]:
    prompt = tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(prompt, list):
        prompt = list(prompt["input_ids"])
    completion = tokenizer(example.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + completion, [-100] * len(prompt) + completion


def bare_batches(tokenizer, plan: list[list[training.Example]]) -> list[tuple[torch.Tensor, ...]]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for batch in plan:
        rows = [bare_encode(tokenizer, example) for example in batch]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
        out.append((input_ids, mask, labels, int((labels != -100).sum())))
    return out


def bare_model(model_path: str, settings: TrainingSettings, device: torch.device):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(settings.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, local_files_only=True)
    config = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config).to(device)


def bare_run(
    model_path: str, settings: TrainingSettings, batches, device: torch.device, save_to: Path | None = None
) -> dict:
    """Load (not timed), then train over `batches`; returns tokens, seconds, tokens/s and the losses. With
    `save_to`, the adapter is saved there (bench/learning.py drafts with it)."""
    model = bare_model(model_path, settings, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else training._NoAutocast()
    model.train()
    losses, tokens = [], 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    started, cpu_started = time.perf_counter(), time.process_time()
    for input_ids, mask, labels, count in batches:
        with autocast:
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        labels = labels.to(device)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1, :].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        tokens += count
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    result = {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "cpu_share": cpu / (seconds * torch.get_num_threads()),
        "loadavg_after": loadavg(),
        "losses": [round(float(x), 4) for x in losses],
    }
    if save_to is not None:
        model.save_pretrained(save_to)
    del model, optimizer
    return result


# =============================================================================
# The product
# =============================================================================


def product_run(model_path: str, settings: TrainingSettings, examples: list[training.Example], tokens: int) -> dict:
    """models_app.training.train in a fresh work directory; its own tokens/s and the bench's clock."""
    progress: list[tuple[float, float, training.Progress]] = []
    stop_calls: list[tuple[float, float]] = []

    def on_progress(p: training.Progress) -> None:
        progress.append((time.perf_counter(), time.process_time(), p))

    def should_stop() -> bool:
        stop_calls.append((time.perf_counter(), time.process_time()))
        return False

    with tempfile.TemporaryDirectory(prefix="sora_bench_ft_") as work:
        called = time.perf_counter()
        result = training.train(
            base_model=model_path,
            parent_adapter="",
            examples=examples,
            settings=settings,
            work_dir=Path(work),
            on_progress=on_progress,
            should_stop=should_stop,
        )
        returned = time.perf_counter()
        saved_checkpoint = (Path(work) / "checkpoint").exists()
    last_time, last_cpu, last = progress[-1]
    loop_started, cpu_started = stop_calls[0]
    # Between a step's on_progress and the next step's should_stop: the checkpoint save, when there is one.
    gaps = [stop_calls[i][0] - progress[i - 1][0] for i in range(1, len(stop_calls))]
    return {
        "steps": result.steps,
        "reported_tokens_per_s": last.tokens_per_second,
        "final_result_tokens_per_s": result.tokens_per_second,
        "bench_clock_s": last_time - loop_started,
        "bench_tokens_per_s": tokens / (last_time - loop_started),
        "cpu_share": (last_cpu - cpu_started) / ((last_time - loop_started) * torch.get_num_threads()),
        "loadavg_after": loadavg(),
        "load_s": loop_started - called,
        "final_adapter_save_s": returned - last_time,
        "between_steps_max_s": max(gaps) if gaps else 0.0,
        "checkpoint_left": saved_checkpoint,
        "losses": [round(p.loss, 4) for _, _, p in progress],
        "device": result.device,
    }


def time_checkpoint(model_path: str, settings: TrainingSettings, batches, device: torch.device) -> dict:
    """The product's _save_checkpoint on a model and AdamW that have taken one step (so the state is full)."""
    model = bare_model(model_path, settings, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    input_ids, mask, labels, _ = batches[0]
    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
    training.weighted_loss(logits, labels.to(device), torch.ones(len(labels))).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    times, size = [], 0
    with tempfile.TemporaryDirectory(prefix="sora_bench_ckpt_") as work:
        path = Path(work) / "checkpoint"
        for _ in range(3):
            started = time.perf_counter()
            training._save_checkpoint(path, model, optimizer, scheduler, 1, [[1, 0.0]])
            times.append(time.perf_counter() - started)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"seconds": statistics.median(times), "runs": times, "bytes": size, "trainable_params": trainable}


# =============================================================================
# Main
# =============================================================================


def check_identical(tokenizer, plan, batches, max_length: int) -> bool:
    """The bare loop's tensors equal what the product's collate builds for the same plan."""
    for group, (input_ids, mask, labels, count) in zip(plan, batches, strict=True):
        product = training.collate(tokenizer, group, max_length)
        if not (
            torch.equal(product.input_ids, input_ids)
            and torch.equal(product.attention_mask, mask)
            and torch.equal(product.labels, labels)
            and product.tokens == count
        ):
            return False
    return True


def fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a Hugging Face model folder (default: the converted SmolLM2 folder)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per run (default 8)")
    parser.add_argument("--batch-size", type=int, default=TrainingSettings().batch_size, help="(default: product's)")
    parser.add_argument("--repeats", type=int, default=4, help="bare/product pairs, alternating (default 4)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if args.steps < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--steps, --batch-size and --repeats must be ≥ 1")
    model_path = args.model or default_model()
    if not (Path(model_path) / "config.json").is_file():
        parser.error(f"no model folder at {model_path}: run `.venv/bin/python manage.py prepare_model` first")

    from django.conf import settings as django_settings
    from transformers import AutoTokenizer

    # What a fine-tune job gets: the defaults, SORA_FINETUNE_DEFAULTS over them, one epoch of N × B examples.
    product_settings = TrainingSettings.from_dict(
        {**django_settings.SORA_FINETUNE_DEFAULTS, "batch_size": args.batch_size, "epochs": 1, "min_steps": 0}
    )
    device, _ = pick_device()
    results: dict = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": {**machine_info(), **torch_info()},
        "git": git_state(),
        "loadavg": {"start": loadavg()},
        "model": model_path,
        "settings": product_settings.as_dict(),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
    }
    pool = build_examples(EXAMPLES)
    examples = run_examples(pool, args.steps, args.batch_size)
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    plan = training.batches_for_epoch(examples, product_settings, 0)  # exactly the plan train() makes
    assert len(plan) == args.steps
    started = time.perf_counter()
    batches = bare_batches(tokenizer, plan)
    results["bare_tokenise_s"] = time.perf_counter() - started
    started = time.perf_counter()
    results["identical_batches"] = check_identical(tokenizer, plan, batches, product_settings.max_length)
    results["product_collate_s"] = time.perf_counter() - started
    results["tokens_per_run"] = sum(b[3] for b in batches)
    results["sequence_tokens_per_run"] = sum(int(b[1].sum()) for b in batches)
    results["padded_width"] = [int(b[0].shape[1]) for b in batches]
    print(
        f"model {model_path} on {device.type}; {args.steps} steps × batch {args.batch_size}; "
        f"{results['tokens_per_run']} completion tokens per run; identical batches: {results['identical_batches']}",
        file=sys.stderr,
    )

    # Warm-up: one short run of each, not counted.
    warm_examples = run_examples(pool, WARMUP_STEPS, args.batch_size)
    warm_plan = training.batches_for_epoch(warm_examples, product_settings, 0)
    print("warm-up …", file=sys.stderr)
    bare_run(model_path, product_settings, bare_batches(tokenizer, warm_plan), device)
    product_run(model_path, product_settings, warm_examples, 0)

    bare, product = [], []
    for r in range(args.repeats):
        print(f"round {r + 1}/{args.repeats}: bare …", file=sys.stderr)
        bare.append(bare_run(model_path, product_settings, batches, device))
        print(f"  bare {fmt(bare[-1]['tokens_per_s'])} tok/s; product …", file=sys.stderr)
        product.append(product_run(model_path, product_settings, examples, results["tokens_per_run"]))
        print(f"  product {fmt(product[-1]['reported_tokens_per_s'])} tok/s", file=sys.stderr)
    results["bare"], results["product"] = bare, product
    results["checkpoint"] = time_checkpoint(model_path, product_settings, batches, device)
    results["loadavg"]["end"] = loadavg()
    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    summarise(results, product_settings)
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nJSON written to {args.json}", file=sys.stderr)
    return 0


def summarise(results: dict, settings: TrainingSettings) -> None:
    bare_rate = statistics.median(r["tokens_per_s"] for r in results["bare"])
    product_rate = statistics.median(r["reported_tokens_per_s"] for r in results["product"])
    bench_rate = statistics.median(r["bench_tokens_per_s"] for r in results["product"])
    bare_step = statistics.median(r["seconds"] / results["steps"] for r in results["bare"])
    ckpt = results["checkpoint"]["seconds"]
    every = settings.checkpoint_every
    save = statistics.median(r["final_adapter_save_s"] for r in results["product"])
    results["summary"] = {
        "bare_tokens_per_s": bare_rate,
        "product_tokens_per_s": product_rate,
        "product_bench_clock_tokens_per_s": bench_rate,
        "ratio": product_rate / bare_rate,
        "pair_ratios": [
            p["reported_tokens_per_s"] / b["tokens_per_s"]
            for b, p in zip(results["bare"], results["product"], strict=True)
        ],
        "bench_clock_ratio": bench_rate / bare_rate,
        "target": TARGET_RATIO,
        "met": product_rate / bare_rate >= TARGET_RATIO,
        "bare_step_s": bare_step,
        "checkpoint_s": ckpt,
        "checkpoint_every": every,
        "checkpoints_in_a_run": math.ceil(results["steps"] / every) - 1,
        "checkpoint_share": ckpt / (every * bare_step + ckpt),
        "final_adapter_save_s": save,
        "final_save_share_of_run": save / (results["steps"] * bare_step + save),
    }


def shares(runs: list[dict]) -> str:
    return ", ".join(f"{r['cpu_share']:.2f}" for r in runs)


def render(results: dict) -> str:
    m, s = results["machine"], results["summary"]
    lines = [
        f"Fine-tuning throughput benchmark — {m['cores']} cores, {m['cpu']}, {m['mem_gib']} GiB, "
        f"Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), transformers "
        f"{m['transformers']}, peft {m['peft']}; device {m['device']} {m['dtype']}"
        + (f" ({m['gpu']})" if m["gpu"] else ""),
        f"date: {results['started']} → {results['finished']}; commit {results['git']['commit']}"
        + (f" (+{len(results['git']['uncommitted'])} uncommitted paths)" if results["git"]["uncommitted"] else ""),
        f"command: {results['command']}",
        f"load average at start {results['loadavg']['start']}, at end {results['loadavg']['end']}",
        f"model: {results['model']}; LoRA r={results['settings']['lora_rank']} α={results['settings']['lora_alpha']} "
        f"dropout {results['settings']['lora_dropout']} all-linear; lr {results['settings']['learning_rate']}; "
        f"seed {results['settings']['seed']}",
        f"batches: {results['steps']} steps × {results['batch_size']} examples (demo customer_service cases, cycled), "
        f"{results['tokens_per_run']:,} completion tokens ({results['sequence_tokens_per_run']:,} with the prompts) "
        f"per run, padded widths {min(results['padded_width'])}–{max(results['padded_width'])}; "
        f"bare batches identical to the product's collate: {'yes' if results['identical_batches'] else 'NO'}",
        f"order: warm-up (bare, product; {WARMUP_STEPS} steps each), then bare, product × {results['repeats']}; "
        "model loaded afresh per run, outside the clock",
        "",
        "| loop | tokens/s per run | median tokens/s | × bare |",
        "| --- | --- | --- | --- |",
        f"| bare PyTorch + peft (baseline) | {', '.join(fmt(r['tokens_per_s']) for r in results['bare'])} "
        f"| {fmt(s['bare_tokens_per_s'])} | 1.00× |",
        f"| product `training.train`, as reported by on_progress | "
        f"{', '.join(fmt(r['reported_tokens_per_s']) for r in results['product'])} "
        f"| **{fmt(s['product_tokens_per_s'])}** | **{s['ratio']:.3f}×** |",
        f"| product, bench clock (first should_stop → last on_progress) | "
        f"{', '.join(fmt(r['bench_tokens_per_s']) for r in results['product'])} "
        f"| {fmt(s['product_bench_clock_tokens_per_s'])} | {s['bench_clock_ratio']:.3f}× |",
        "",
        f"ratio per pair (bare run i, then product run i): "
        f"{', '.join(f'{x:.3f}' for x in s['pair_ratios'])}; median {statistics.median(s['pair_ratios']):.3f}×",
        f"CPU share per run (process CPU time / (wall × {m['torch_threads']} threads); a run that another "
        f"process competed with shows a lower share than its neighbours): bare {shares(results['bare'])}; "
        f"product {shares(results['product'])}",
        f"step time (bare, median): {s['bare_step_s']:.2f} s; tokenising all batches: "
        f"bare {results['bare_tokenise_s']:.2f} s "
        f"(before its clock), product collate {results['product_collate_s']:.2f} s (inside its loop, "
        f"{results['product_collate_s'] / (s['bare_step_s'] * results['steps']):.2%} of a run)",
        f"product per run: model load {statistics.median(r['load_s'] for r in results['product']):.2f} s, "
        f"final adapter save {s['final_adapter_save_s']:.2f} s (after the last on_progress: not in its tokens/s; "
        f"{s['final_save_share_of_run']:.2%} of this run's wall time)",
        f"checkpoint (`_save_checkpoint`: adapter + AdamW state, {results['checkpoint']['bytes'] / 2**20:.1f} MiB, "
        f"{results['checkpoint']['trainable_params']:,} trainable parameters): {s['checkpoint_s']:.2f} s; every "
        f"{s['checkpoint_every']} steps that is {s['checkpoint_share']:.2%} of training time; "
        f"{s['checkpoints_in_a_run']} written in this {results['steps']}-step run",
        f"losses, first run: bare (token mean) {results['bare'][0]['losses'][:4]} …; product (weighted example "
        f"mean) {results['product'][0]['losses'][:4]} …",
        "",
        f"Target (PRODUCT.md §8): product tokens/s ≥ {TARGET_RATIO} × bare loop — "
        f"{'[met]' if s['met'] else '[NOT met]'} {s['ratio']:.3f}×",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
