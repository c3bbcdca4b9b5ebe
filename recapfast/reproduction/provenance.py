"""Provenance of a reproduction: the git commit, the machine and the command line that made it."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path


def git_commit() -> dict:
    here = Path(__file__).resolve().parents[2]   # the repository root (recapfast/reporting/ is two below)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return {"commit": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def machine_info(device: str) -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device), "gpu": None}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        from recapfast import ops

        info["backend"] = ops.active_backend()
    except (ImportError, RuntimeError):
        info["backend"] = os.environ.get("RECAPFAST_BACKEND", "auto")
    return info



def cli_command() -> str | None:
    """The `recapfast reproduce ...` command line when running under the CLI, else None."""
    import shlex

    if len(sys.argv) > 1 and "reproduce" in sys.argv[1:] and \
            os.path.basename(sys.argv[0]) in ("recapfast", "__main__.py"):
        return "recapfast " + shlex.join(sys.argv[1:])
    return None

