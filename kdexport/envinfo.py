"""Versions and hardware, stamped into every checkpoint, report and benchmark result."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path


def package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The CPU features that decide what pays here: VNNI/AMX-INT8 for INT8 models, AVX512-BF16/AMX-BF16 for bf16 autocast.
CPU_FLAGS = ("amx_bf16", "amx_int8", "avx2", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx512f", "avx_vnni", "fma")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """Which of :data:`CPU_FLAGS` this CPU has (empty where ``cpuinfo`` is unreadable, e.g. not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in CPU_FLAGS if f in flags)
    except OSError:
        pass
    return []


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@functools.cache
def git_commit(root: Path | None = None) -> str | None:
    """The kdexport source's git commit (with '+dirty' when the package or benchmarks have uncommitted
    changes), when run from a checkout. $KDEXPORT_GIT_COMMIT, when set, wins: whoever copied the code elsewhere
    (the GPU machine) says what they copied, and a copy's .git may be a stale one. Read once per process: a long
    run started before a commit is stamped with the code it started from (``prepare`` reads it at the start of
    every run)."""
    import subprocess

    given = os.environ.get("KDEXPORT_GIT_COMMIT")
    if given:
        return given
    root = root or Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "kdexport", "benchmarks/*.py", "benchmarks/recipes"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


@functools.cache
def code_fingerprint() -> str:
    """sha256 of kdexport's own source files (names and bytes): a cached result that other code made is not
    reused."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(f"{p.relative_to(root).as_posix()}|{p.stat().st_size}|".encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def environment(threads: int | None = None) -> dict:
    import torch

    from .allocator import state as malloc_state
    from .version import __version__

    return {
        "kdexport": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": package_version("torchvision"),
        "onnx": package_version("onnx"),
        "onnxruntime": package_version("onnxruntime"),
        "numpy": package_version("numpy"),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cpu_cores": usable_cores(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "malloc": malloc_state(),
    }


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def result_stamp(script: str, threads: int | None = None) -> dict:
    """The keys every benchmark result starts with: when, on what, and the full command that reran it."""
    return {"created": now_iso(), "environment": environment(threads),
            "command": shlex.join(["python", script, *sys.argv[1:]])}


def stamp_markdown(stamp: dict) -> str:
    """The line a benchmark's Markdown opens with: when, on what, with which versions, and how to rerun it."""
    env = stamp["environment"]
    return (f"{stamp['created']}, {env['cpu']} ({env['cpu_cores']} cores, {env['threads']} threads), torch "
            f"{env['torch']}, onnxruntime {env['onnxruntime']}, commit {env['git_commit']}. "
            f"Reproduce: `{stamp['command']}`.")


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable, else physical pages); None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_memory(nbytes: float, what: str, advice: str = "") -> None:
    """Refuse (ConfigError, exit 2) before allocating ``nbytes`` that cannot fit in available memory."""
    from .errors import ConfigError

    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise ConfigError(f"{what} needs about {nbytes / 2**30:,.1f} GiB, more than the {avail / 2**30:,.1f} GiB "
                          f"of memory available{'; ' + advice if advice else ''}")
