"""Run a recipe (a config file in benchmarks/recipes/) through the library, exactly as the CLI would,
and write benchmarks/results/<recipe>.json and .md stamped with hardware, versions, date and wall time.

    python benchmarks/run_recipe.py digits-default
    python benchmarks/run_recipe.py mnist-mlp-seed          # data from ../shared/datasets by default
    python benchmarks/run_recipe.py cifar10-resnet50-resnet18-cpu-quick --data-dir /data/cifar10

A recipe is {"kind": "distill" | "sweep" | "teacher", "config": {RunConfig fields}, "grid": {...} (sweep),
"workdir": "runs/recipes/NAME" (sweeps: where cells live, so a rerun resumes and recipes that share
a teacher and cells share a workdir; distill runs: where the run folder is kept, its checkpoints reusable,
and --resume continues it after an interruption; teacher runs: required, where teacher.pt is written)}.
A teacher recipe trains the teacher alone (no students) and measures its test accuracy under each
--teacher-tta mode; its teacher.pt is reusable with --teacher-checkpoint. Recipes are the only home of
hyperparameters for published numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from kdexport.cli import progress_reporter
from kdexport.config import RunConfig
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.pipeline import distill_export, teacher_only
from kdexport.report.write import to_markdown
from kdexport.sweep import Grid, run_sweep, sweep_markdown

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def load_recipe(name: str) -> dict:
    path = HERE / "recipes" / f"{name}.json"
    if not path.exists():
        choices = sorted(p.stem for p in (HERE / "recipes").glob("*.json"))
        raise SystemExit(f"unknown recipe {name!r}; choose one of: {', '.join(choices)}")
    return json.loads(path.read_text())


def recipe_config(recipe: dict, data_dir: str | None, out: str) -> RunConfig:
    d = dict(recipe["config"])
    if data_dir is not None:
        d["data_dir"] = data_dir
    elif d.get("data_dir"):  # recipe paths are relative to the repository root
        d["data_dir"] = str((ROOT / d["data_dir"]).resolve())
    if d.get("teacher_checkpoint"):
        d["teacher_checkpoint"] = str((ROOT / d["teacher_checkpoint"]).resolve())
    d["out"] = out
    return RunConfig.from_dict(d)


def teacher_markdown(r: dict) -> str:
    t = r["teacher"]
    env = r["environment"]
    lines = [f"# Teacher {t['arch']} trained alone", "",
             f"{r['created']}, {env['cpu']} ({env['cpu_cores']} cores, {env['threads']} threads), torch "
             f"{env['torch']}, commit {env['git_commit']}.", "",
             f"{t['epochs']} epochs: {t['train_seconds'] / 60:.1f} min of training (the epochs' wall times summed, "
             f"their test evaluations included); evaluating the test split with each --teacher-tta mode (fp32) took "
             f"the seconds below.", "",
             "| --teacher-tta | test accuracy | seconds |", "|---|---|---|"]
    lines += [f"| {m['tta']} | {m['accuracy'] * 100:.2f}% | {m['seconds']:.1f} |" for m in t["tta"]]
    curve = [f"{h['epoch']}: {h['test_accuracy'] * 100:.2f}%" for h in t["history"] if "test_accuracy" in h]
    lines += ["", f"Test accuracy by epoch (plain model): {', '.join(curve)}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="name of a file in benchmarks/recipes/ (without .json)")
    ap.add_argument("--data-dir", default=None, help="override the recipe's data dir")
    ap.add_argument("--resume", action="store_true",
                    help="distill recipes with a workdir and teacher recipes: continue an interrupted run from its "
                         "last finished epoch")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    results = HERE / "results"
    with progress_reporter() as reporter, tempfile.TemporaryDirectory() as tmp:
        if recipe["kind"] == "sweep":
            cfg = recipe_config(recipe, args.data_dir, str(ROOT / recipe["workdir"]))
            grid = Grid(**{k: tuple(v) for k, v in recipe["grid"].items()})
            report = run_sweep(cfg, grid, reporter=reporter, log=print)
            best = json.loads((Path(cfg.out) / "best" / "report.json").read_text())
            for m in best["models"].values():
                m.pop("history", None)
            report["best"]["report"] = best  # the best cell, exported and benchmarked like distill-export
            best_md = to_markdown(best).split("\n", 2)[2]  # without its title line
            md = sweep_markdown(report) + "\n## Best cell, exported and benchmarked\n\n" + best_md
        elif recipe["kind"] == "teacher":
            out = ROOT / recipe["workdir"]
            cfg = recipe_config(recipe, args.data_dir, str(out))
            report = teacher_only(cfg, out / "teacher.pt", resume=args.resume, reporter=reporter, log=print)
            md = teacher_markdown(report)
        else:
            out = ROOT / recipe["workdir"] if recipe.get("workdir") else Path(tmp) / "run"  # workdir: keep the run
            cfg = recipe_config(recipe, args.data_dir, str(out))
            resume = args.resume and bool(recipe.get("workdir"))
            cfg = dataclasses.replace(cfg, overwrite=not resume, resume=resume)
            report = distill_export(cfg, reporter=reporter, log=print)
            md = to_markdown(report)
    report["recipe"] = {"name": args.recipe, "doc": recipe.get("doc", ""),
                        "command": f"python benchmarks/run_recipe.py {args.recipe}"}
    md = md.replace("![training curves](curves.png)\n", "").replace("![heatmap](heatmap.png)\n", "")
    md = md.replace("[best/report.md](best/report.md)", "the section below")
    md += f"\nReproduce: `python benchmarks/run_recipe.py {args.recipe}`\n"
    atomic_write_json(results / f"{args.recipe}.json", report)
    atomic_write_text(results / f"{args.recipe}.md", md)
    print(f"wrote {results / (args.recipe + '.json')} and .md")


if __name__ == "__main__":
    main()
