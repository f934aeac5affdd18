"""What every benchmark records beside its figures: the machine, the commit, the load. Shared by bench/*.py."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine_info() -> dict:
    """Cores, CPU model, memory, Python and OS."""
    model = platform.processor() or ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass  # no lscpu: platform.processor() stands
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError):
        pass  # not a POSIX sysconf: memory stays unknown
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def torch_info() -> dict:
    """The training stack and the device the product would pick (CUDA bf16 autocast, or CPU float32)."""
    import peft
    import torch
    import transformers

    from models_app.inference.local import pick_device

    device, dtype = pick_device()
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": device.type,
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "dtype": "bfloat16 autocast" if device.type == "cuda" else str(dtype).replace("torch.", ""),
    }


def git_state() -> dict:
    """The commit measured, and any file that differed from it."""

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False).stdout
        except OSError:
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=all").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or "?", "uncommitted": changed}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
