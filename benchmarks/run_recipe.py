"""Run a recipe (a config file in benchmarks/recipes/) through the library, exactly as the CLI would,
and write benchmarks/results/<recipe>.json and .md stamped with hardware, versions, date and wall time.

    python benchmarks/run_recipe.py digits-default
    python benchmarks/run_recipe.py mnist-mlp-seed          # data from ../shared/datasets by default
    python benchmarks/run_recipe.py cifar10-resnet50-resnet18-cpu-quick --data-dir /data/cifar10
    python benchmarks/run_recipe.py digits-default --set train.epochs=1 --workroot /tmp/w --results-dir /tmp/r

--set KEY=VALUE changes one recipe field for a quick check (KEY is a dotted path into "config", or "grid.NAME";
VALUE is JSON, else a string); such a run is not the recipe's, so it needs --results-dir and --workroot (a
sweep reuses finished cells by name), and the report records the changes. --workroot moves the recipe's
workdir and its relative checkpoint paths under another folder (a fresh one: nothing of an earlier run is
reused or overwritten), as benchmarks/gpu_run.py does.

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
import shlex
import tempfile
from pathlib import Path

from kdexport.allocator import prefer_kept
from kdexport.cli import progress_reporter
from kdexport.config import RunConfig
from kdexport.errors import KdexportError
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


def apply_overrides(recipe: dict, sets: list[str]) -> dict:
    """The recipe with each ``KEY=VALUE`` of ``sets`` applied (see the module doc); a copy, the file is untouched."""
    recipe = json.loads(json.dumps(recipe))
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        path = key.split(".")
        node = recipe if path[0] == "grid" else recipe["config"]
        if path[0] == "grid" and "grid" not in recipe:
            raise SystemExit(f"--set {key}: this recipe is a {recipe['kind']} run, not a sweep")
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return recipe


def recipe_config(recipe: dict, data_dir: str | None, out: str, workroot: Path = ROOT) -> RunConfig:
    d = dict(recipe["config"])
    if data_dir is not None:
        d["data_dir"] = data_dir
    elif d.get("data_dir"):  # recipe paths are relative to the repository root
        d["data_dir"] = str((ROOT / d["data_dir"]).resolve())
    if d.get("teacher_checkpoint"):  # made by another recipe, under the same workroot
        d["teacher_checkpoint"] = str((workroot / d["teacher_checkpoint"]).resolve())
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


def run(name: str, data_dir: str | None = None, resume: bool = False, workroot: Path = ROOT,
        results: Path = HERE / "results", sets: tuple[str, ...] = ()) -> Path:
    """Run recipe ``name``; write ``results/<name>.json`` and ``.md``; return the JSON's path."""
    recipe = apply_overrides(load_recipe(name), list(sets))
    work = workroot / recipe["workdir"] if recipe.get("workdir") else None
    with progress_reporter() as reporter, tempfile.TemporaryDirectory() as tmp:
        if recipe["kind"] == "sweep":
            cfg = recipe_config(recipe, data_dir, str(work), workroot)
            grid = Grid(**{k: tuple(v) for k, v in recipe["grid"].items()})
            report = run_sweep(cfg, grid, reporter=reporter, log=print)
            best = json.loads((Path(cfg.out) / "best" / "report.json").read_text())
            for m in best["models"].values():
                m.pop("history", None)
            report["best"]["report"] = best  # the best cell, exported and benchmarked like distill-export
            best_md = to_markdown(best).split("\n", 2)[2]  # without its title line
            md = sweep_markdown(report) + "\n## Best cell, exported and benchmarked\n\n" + best_md
        elif recipe["kind"] == "teacher":
            cfg = recipe_config(recipe, data_dir, str(work), workroot)
            report = teacher_only(cfg, work / "teacher.pt", resume=resume, reporter=reporter, log=print)
            md = teacher_markdown(report)
        else:
            out = work or Path(tmp) / "run"  # workdir: keep the run
            cfg = recipe_config(recipe, data_dir, str(out), workroot)
            resume = resume and work is not None
            cfg = dataclasses.replace(cfg, overwrite=not resume, resume=resume)
            report = distill_export(cfg, reporter=reporter, log=print)
            md = to_markdown(report)
    command = " ".join(["python benchmarks/run_recipe.py", name, *(f"--set {shlex.quote(s)}" for s in sets),
                        *(["--workroot DIR --results-dir DIR"] if sets else [])])
    report["recipe"] = {"name": name, "doc": recipe.get("doc", ""), "command": command}
    if sets:
        report["recipe"]["overrides"] = list(sets)
    md = md.replace("![training curves](curves.png)\n", "").replace("![heatmap](heatmap.png)\n", "")
    md = md.replace("[best/report.md](best/report.md)", "the section below")
    if sets:
        md += f"\nNot the recipe as committed: changed with {', '.join(f'`--set {s}`' for s in sets)}.\n"
    md += f"\nReproduce: `{command}`\n"
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results / f"{name}.json", report)
    atomic_write_text(results / f"{name}.md", md)
    print(f"wrote {results / (name + '.json')} and .md")
    return results / f"{name}.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="name of a file in benchmarks/recipes/ (without .json)")
    ap.add_argument("--data-dir", default=None, help="override the recipe's data dir")
    ap.add_argument("--resume", action="store_true",
                    help="distill recipes with a workdir and teacher recipes: continue an interrupted run from its "
                         "last finished epoch")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="change one recipe field (repeatable; needs --results-dir and --workroot)")
    ap.add_argument("--workroot", type=Path, default=ROOT,
                    help="folder under which the recipe's workdir and checkpoint paths live (default: the repository)")
    ap.add_argument("--results-dir", type=Path, default=None,
                    help="where to write NAME.json and NAME.md (default: benchmarks/results)")
    args = ap.parse_args()
    if args.sets and (args.results_dir is None or args.workroot.resolve() == ROOT):
        raise SystemExit("--set changes the recipe: give --results-dir and --workroot too, so that the run neither "
                         "replaces the committed results nor reuses (or overwrites) the recipe's runs/ folder")
    try:
        run(args.recipe, args.data_dir, args.resume, args.workroot.resolve(),
            args.results_dir or HERE / "results", tuple(args.sets))
    except KdexportError as e:  # a bad --set or recipe field, missing data, a failed run: one line, as the CLI says it
        raise SystemExit(f"run_recipe.py {args.recipe}: {e}") from None

if __name__ == "__main__":
    prefer_kept()  # as the CLI does: see kdexport/allocator.py
    main()
