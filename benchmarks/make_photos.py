"""Generate a large ImageFolder of JPEG "photos" for the streaming benchmark (never committed).

Each image is 256-400 px on each side (random aspect), smooth random structure (a coarse random field
upsampled bicubically, plus noise) tinted per class so that a model can learn something; JPEG quality 85.
Deterministic: image i of a split depends only on (seed, split, i).

    python benchmarks/make_photos.py --out /tmp/photos100k --train 100000 --val 2000 --classes 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _one(args: tuple[str, int, int, int, int]) -> int:
    from PIL import Image

    out, split_id, i, classes, seed = args
    rng = np.random.default_rng([seed, split_id, i])
    c = i % classes
    w, h = (int(v) for v in rng.integers(256, 401, 2))
    coarse = rng.integers(0, 256, (max(2, h // 48), max(2, w // 48), 3), dtype=np.uint8)
    tint = np.array([(37 * c) % 256, (91 * c + 60) % 256, (151 * c + 120) % 256], np.uint8)
    coarse = ((coarse.astype(np.uint16) + tint) // 2).astype(np.uint8)
    im = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    a = np.asarray(im, np.int16) + rng.integers(-12, 13, (h, w, 1), dtype=np.int16)
    path = Path(out) / f"c{c:02d}" / f"{i:07d}.jpg"
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=85)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", type=int, default=100_000)
    ap.add_argument("--val", type=int, default=2_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    total = 0
    for split_id, (split, n) in enumerate((("train", args.train), ("val", args.val))):
        root = Path(args.out) / split
        for c in range(args.classes):
            (root / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
        todo = [(str(root), split_id, i, args.classes, args.seed) for i in range(n)
                if not (root / f"c{i % args.classes:02d}" / f"{i:07d}.jpg").exists()]
        with ProcessPoolExecutor(args.jobs) as pool:
            for k, size in enumerate(pool.map(_one, todo, chunksize=256), 1):
                total += size
                if k % 10_000 == 0:
                    print(f"{split}: {k:,}/{len(todo):,} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print(f"wrote {args.train + args.val:,} images ({total / 2**30:.2f} GiB new) to {args.out} in "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
