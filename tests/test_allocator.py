"""kdexport.allocator: freed big tensors stay mapped for reuse (CPU training's page faults), opt-out, stamp."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from kdexport import allocator
from kdexport.envinfo import environment

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

# A fresh process does what a training loop does with one activation: allocate and touch a 256 MB tensor, free it,
# again and again, counting each cycle's minor page faults (the kernel mapping and zero-filling a page on first
# touch). The median over the last eight of sixteen cycles: the heap grows a few times (up to six seen, in a process
# that has allocated little before) until a freed chunk fits glibc's aligned allocation, then kept memory is reused
# fault-free, while glibc's default maps and faults it anew every cycle.
_PROBE = """
import json, resource, statistics, sys
import torch
from kdexport.allocator import keep_freed_memory
state = keep_freed_memory() if sys.argv[1] == "keep" else "untouched"
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
per_cycle = []
for cycle in range(16):
    before = faults()
    x = torch.ones(64 * 2**20); del x
    per_cycle.append(faults() - before)
print(json.dumps({"state": state, "faults": statistics.median(per_cycle[8:])}))
"""


def _probe(mode: str, env_value: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != allocator.ENV}
    if env_value is not None:
        env[allocator.ENV] = env_value
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_kept_memory_is_reused_without_page_faults():
    pages = 256 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    system = _probe("none")
    kept = _probe("keep")
    assert kept["state"] == "kept"
    # glibc's default: the second tensor is a fresh mmap, every page (or huge page) faults again
    assert system["faults"] > pages // 600
    # kept: the freed heap memory is handed out again, already mapped
    assert kept["faults"] * 20 < system["faults"], (kept, system)


@glibc_only
def test_opt_out_leaves_the_defaults():
    opted_out = _probe("keep", "system")
    assert opted_out["state"] == "system"
    assert opted_out["faults"] > 256 * 2**20 // os.sysconf("SC_PAGE_SIZE") // 600


def test_a_bad_value_warns_and_changes_nothing(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "tcmalloc")
    monkeypatch.setattr(allocator, "_state", "system")
    with pytest.warns(UserWarning, match="KDEXPORT_MALLOC='tcmalloc' is neither 'kept' nor 'system'"):
        assert allocator.keep_freed_memory() == "system"


def test_the_environment_stamp_says_which_malloc_was_in_force(monkeypatch):
    monkeypatch.setattr(allocator, "_state", "kept")
    assert environment(1)["malloc"] == "kept"
    monkeypatch.setattr(allocator, "_state", "system")
    monkeypatch.setattr(allocator, "_preferred", False)
    assert environment(1)["malloc"] == "system"


@glibc_only
def test_a_stamp_written_before_the_data_loads_states_the_policy(monkeypatch):
    monkeypatch.setattr(allocator, "_state", "system")
    monkeypatch.setattr(allocator, "_preferred", True)
    monkeypatch.delenv(allocator.ENV, raising=False)
    assert environment(1)["malloc"] == "kept for data in memory"
    monkeypatch.setenv(allocator.ENV, "system")
    assert environment(1)["malloc"] == "system"


def test_the_cli_asks_for_kept_memory_before_any_command_runs(monkeypatch):
    import warnings

    from kdexport import cli

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() sets it: undone after the test
    calls = []
    monkeypatch.setattr(cli, "prefer_kept", lambda: calls.append("malloc"))
    monkeypatch.setattr(cli, "app", lambda prog_name: calls.append(prog_name))
    cli.main()
    assert calls == ["malloc", "kdexport"]


def test_settle_keeps_memory_only_for_data_in_memory_and_only_when_asked(monkeypatch):
    applied = []
    def keep():
        applied.append(1)
        allocator._state = "kept"  # restored after the test: monkeypatched below

    monkeypatch.setattr(allocator, "keep_freed_memory", keep)
    monkeypatch.setattr(allocator, "_preferred", False)
    monkeypatch.setattr(allocator, "_state", "system")
    assert allocator.settle(streamed=False) == "system" and applied == []  # the library alone: untouched
    allocator.prefer_kept()
    assert allocator.settle(streamed=True) == "kept for data in memory" and applied == []  # stream: untouched
    assert allocator.settle(streamed=False) == "kept" and applied == [1]
