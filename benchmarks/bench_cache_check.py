"""What does checking a cache entry before use cost? (issue 47: a digest recorded when written, checked when read,
and non-finite values refused.)

For float32 tables the size of kdexport's teacher caches, written by the one cache path
(``kdexport.files.write_cache_entry``), this times ``trusted_cache_entry`` (SHA-256 of the file against the digest
written with it) and the finite-values check, against what the entry saves: computing the table again. The
digits logit table is 1,442 x 10; CIFAR-10's `shift2-flip` view table 50 x 50,000 x 10 (100 MB); the last row a
1 GB table (an ImageNet-size logit table). Each is timed ``--rounds`` times with a cold and a warm page cache
where the OS lets us drop it (root on Linux), medians reported.

    python benchmarks/bench_cache_check.py [--rounds 5]

Writes benchmarks/results/bench_cache_check.json and .md (or --out).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from kdexport.envinfo import result_stamp, stamp_markdown
from kdexport.files import atomic_write_json, atomic_write_text, trusted_cache_entry, write_cache_entry

HERE = Path(__file__).resolve().parent
TABLES = {"digits logit table (1,442 x 10)": (1442, 10),
          "CIFAR-10 view table (50 x 50,000 x 10)": (50, 50_000, 10),
          "1 GB table (25,000,000 x 10)": (25_000_000, 10)}
# what rebuilding costs instead, from committed results: the CIFAR-10 view table of a flip-TTA'd fastcifar teacher
REBUILD_S = {"CIFAR-10 view table (50 x 50,000 x 10)": 13.6 * 60}  # bench_kd_cost_views.json (AMX Xeon, bf16)


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_cache_check"))
    args = ap.parse_args()
    stamp = result_stamp("benchmarks/bench_cache_check.py")
    rows = {}
    with tempfile.TemporaryDirectory(dir=HERE.parent) as tmp:
        for name, shape in TABLES.items():
            path = Path(tmp) / "table.npy"
            table = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
            def save(tmp: str, table: np.ndarray = table) -> None:
                with open(tmp, "wb") as f:  # a file object: np.save would add .npy to a bare name
                    np.save(f, table)

            write_cache_entry(path, save, "bench")
            del table
            times: dict[str, list[float]] = {"digest_warm": [], "finite_warm": [], "digest_cold": []}
            for _ in range(args.rounds):
                if drop_page_cache():
                    t0 = time.perf_counter()
                    assert trusted_cache_entry(path, "bench") is not None
                    times["digest_cold"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert trusted_cache_entry(path, "bench") is not None
                times["digest_warm"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert bool(np.isfinite(np.load(path, mmap_mode="r")).all())
                times["finite_warm"].append(time.perf_counter() - t0)
            rows[name] = {"bytes": path.stat().st_size,
                          **{f"{k}_s": statistics.median(v) for k, v in times.items() if v},
                          "rebuild_s": REBUILD_S.get(name)}
            print(name, rows[name], flush=True)
            path.unlink()
    result = {**stamp, "rounds": args.rounds, "tables": rows}
    md = ["# What checking a cache entry costs", "", stamp_markdown(stamp), "",
          f"SHA-256 of the whole file against the digest written with it, and the finite-values check; medians of "
          f"{args.rounds} rounds, seconds. Cold: the page cache dropped first.", "",
          "| table | MB | digest, warm | digest, cold | finite check | rebuilding it instead |",
          "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        cold = f"{r['digest_cold_s']:.3f}" if "digest_cold_s" in r else "-"
        rebuild = f"{r['rebuild_s']:.0f} s" if r["rebuild_s"] else "-"
        md.append(f"| {name} | {r['bytes'] / 2**20:,.1f} | {r['digest_warm_s']:.3f} | {cold} | "
                  f"{r['finite_warm_s']:.3f} | {rebuild} |")
    atomic_write_json(Path(args.out).with_suffix(".json"), result)
    atomic_write_text(Path(args.out).with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
