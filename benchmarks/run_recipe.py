"""Run a recipe (a config file in benchmarks/recipes/) through the same pipeline as the CLI and
write benchmarks/results/<recipe>.json and .md, stamped with hardware, versions, date and wall time.

    python benchmarks/run_recipe.py digits-default
    python benchmarks/run_recipe.py mnist-seed --data-dir ../shared/datasets
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from kdexport.cli import RichReporter, make_progress
from kdexport.config import RunConfig
from kdexport.io import atomic_write_json, atomic_write_text
from kdexport.pipeline import distill_export
from kdexport.report import to_markdown

HERE = Path(__file__).resolve().parent


def load_recipe(name: str, data_dir: str | None) -> RunConfig:
    path = HERE / "recipes" / f"{name}.json"
    d = json.loads(path.read_text())
    d.pop("_doc", None)
    if data_dir is not None:
        d["data_dir"] = data_dir
    elif d.get("data_dir"):  # recipe paths are relative to the repository root
        d["data_dir"] = str((HERE.parent / d["data_dir"]).resolve())
    return RunConfig.from_dict(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="name of a file in benchmarks/recipes/ (without .json)")
    ap.add_argument("--data-dir", default=None, help="override the recipe's data dir")
    ap.add_argument("--keep", type=Path, default=None, help="also keep the full run folder here")
    args = ap.parse_args()
    cfg = load_recipe(args.recipe, args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        import dataclasses

        cfg = dataclasses.replace(cfg, out=str(Path(tmp) / "run"), overwrite=True)
        with make_progress() as progress:
            report = distill_export(cfg, reporter=RichReporter(progress), log=print)
        if args.keep:
            shutil.copytree(Path(tmp) / "run", args.keep, dirs_exist_ok=True)
    report["recipe"] = args.recipe
    report["command"] = f"python benchmarks/run_recipe.py {args.recipe}"
    results = HERE / "results"
    atomic_write_json(results / f"{args.recipe}.json", report)
    md = to_markdown(report).replace("![training curves](curves.png)\n", "")
    atomic_write_text(results / f"{args.recipe}.md", md)
    print(f"wrote {results / (args.recipe + '.json')}")


if __name__ == "__main__":
    main()
