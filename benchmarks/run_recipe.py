"""Run a recipe (a config file in benchmarks/recipes/) through the library, exactly as the CLI would,
and write benchmarks/results/<recipe>.json and .md stamped with hardware, versions, date and wall time.

    python benchmarks/run_recipe.py digits-default
    python benchmarks/run_recipe.py mnist-mlp-seed          # data from ../shared/datasets by default
    python benchmarks/run_recipe.py cifar10-fast-teacher-mid-muon --seed 3     # one seed of a multi-seed recipe
    python benchmarks/run_recipe.py cifar10-resnet50-resnet18-cpu-quick --data-dir /data/cifar10
    python benchmarks/run_recipe.py digits-default --set train.epochs=1 --workroot /tmp/w --results-dir /tmp/r

A recipe is a kdexport config file (what ``--config`` reads: ``kdexport distill-export --config
benchmarks/recipes/digits-default.json`` runs it too, ``kdexport sweep --config ...`` a sweep's) whose
``recipe`` section says how this script runs it: ``kind`` (distill, sweep or teacher), ``doc``, ``workdir``
(sweeps: where cells live, so a rerun resumes and recipes that share a teacher and cells share a workdir;
distill runs: where the run folder is kept, its checkpoints reusable, and --resume continues it after an
interruption; teacher runs: required, where teacher.pt is written) and, for distill and teacher recipes run
over several seeds, ``seeds``: each seed is its own run, written as NAME.json for the first and NAME-sK.json
(workdir WORKDIR-sK) for seed K; ``NAME-sK`` is also accepted as the recipe's name with ``--seed K``. A sweep's
seeds are its grid's. A teacher recipe trains the teacher alone (no students) and measures its test accuracy
under each --teacher-tta mode; its teacher.pt is reusable with --teacher-checkpoint. Recipes are the only home
of hyperparameters for published numbers; relative data_dir and teacher_checkpoint paths are the repository's.

--set KEY=VALUE changes one option for a quick check (KEY an option name, ``train.epochs`` or ``epochs`` alike;
VALUE is JSON, else a string); such a run is not the recipe's, so it needs --results-dir and --workroot (a
sweep reuses finished cells by name), and the report records the changes. --workroot moves the recipe's
workdir and its relative checkpoint paths under another folder (a fresh one: nothing of an earlier run is
reused or overwritten), as benchmarks/gpu_run.py does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kdexport.allocator import prefer_kept
from kdexport.cli import progress_reporter
from kdexport.config import (
    RECIPE_KEY,
    SWEEP_REPLACES,
    Grid,
    RunConfig,
    from_flat,
    mapping_values,
    read_config_file,
)
from kdexport.errors import KdexportError
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.pipeline import distill_export, teacher_only
from kdexport.report.write import to_markdown
from kdexport.sweep import run_sweep, sweep_markdown

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KINDS = ("distill", "sweep", "teacher")


@dataclass(frozen=True)
class Recipe:
    name: str  # the file's stem
    kind: str  # distill, sweep or teacher
    doc: str
    workdir: str | None
    seeds: tuple[int, ...]  # distill/teacher: the runs (a sweep: its grid's seeds, run in one go)
    values: dict  # the options, flat (field name -> value), as --config reads them

    @property
    def command(self) -> str:
        """The kdexport command whose options the recipe gives."""
        return "sweep" if self.kind == "sweep" else "distill-export"

    @property
    def classes(self):
        return ((RunConfig, SWEEP_REPLACES), (Grid, ())) if self.kind == "sweep" else ((RunConfig, ()),)

    def result_name(self, seed: int) -> str:
        """NAME for the first seed, NAME-sK for seed K (the per-seed files written before recipes had seeds)."""
        return self.name if self.kind == "sweep" or seed == self.seeds[0] else f"{self.name}-s{seed}"

    def workdir_for(self, seed: int) -> str | None:
        if self.workdir is None or self.kind == "sweep" or seed == self.seeds[0]:
            return self.workdir
        return f"{self.workdir}-s{seed}"


def resolve_name(name: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME-sK`` (seed K of recipe NAME, where NAME-sK is no file of its own)."""
    if not (HERE / "recipes" / f"{name}.json").exists() and (m := re.fullmatch(r"(.+)-s(\d+)", name)):
        if (HERE / "recipes" / f"{m.group(1)}.json").exists():
            return m.group(1), int(m.group(2))
    return name, None


def load_recipe(name: str) -> Recipe:
    path = HERE / "recipes" / f"{name}.json"
    if not path.exists():
        choices = sorted(p.stem for p in (HERE / "recipes").glob("*.json"))
        raise SystemExit(f"unknown recipe {name!r}; choose one of: {', '.join(choices)}")
    raw = read_config_file(str(path))
    meta = raw.pop(RECIPE_KEY, None)
    if not isinstance(meta, dict) or meta.get("kind") not in KINDS:
        raise SystemExit(f"{path}: the recipe section must give kind ({', '.join(KINDS)})")
    kind = meta["kind"]
    classes = ((RunConfig, SWEEP_REPLACES), (Grid, ())) if kind == "sweep" else ((RunConfig, ()),)
    values = mapping_values(raw, classes, "sweep" if kind == "sweep" else "distill-export", f"recipe {name}")
    seeds = tuple(values.get("seeds", Grid().seeds)) if kind == "sweep" else tuple(
        meta.get("seeds") or [values.get("seed", 0)])
    return Recipe(name, kind, meta.get("doc", ""), meta.get("workdir"), seeds, values)


def apply_overrides(recipe: Recipe, sets: list[str]) -> Recipe:
    """The recipe with each ``KEY=VALUE`` of ``sets`` applied (see the module doc); a copy, the file is untouched."""
    values = dict(recipe.values)
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        path = key.split(".")
        if path[0] == "grid":
            if recipe.kind != "sweep":
                raise SystemExit(f"--set {key}: this recipe is a {recipe.kind} run, not a sweep")
            path = path[1:]
        node: dict = {}
        tree = node
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        values.update(mapping_values(tree, recipe.classes, recipe.command, "--set"))
    return dataclasses.replace(recipe, values=values)


def recipe_config(recipe: Recipe, data_dir: str | None, out: str, workroot: Path = ROOT,
                  seed: int | None = None) -> tuple[RunConfig, Grid | None]:
    """The run's config (and a sweep's grid), its relative paths resolved, ``seed`` set (distill, teacher)."""
    values = dict(recipe.values)
    if data_dir is not None:
        values["data_dir"] = data_dir
    elif values.get("data_dir"):  # recipe paths are relative to the repository root
        values["data_dir"] = str((ROOT / values["data_dir"]).resolve())
    if values.get("teacher_checkpoint"):  # made by another recipe, under the same workroot
        values["teacher_checkpoint"] = str((workroot / values["teacher_checkpoint"]).resolve())
    values["out"] = out
    if recipe.kind == "sweep":
        return from_flat(RunConfig, values, SWEEP_REPLACES), from_flat(Grid, values)
    if seed is not None:
        values["seed"] = seed
    return from_flat(RunConfig, values), None


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
        results: Path = HERE / "results", sets: tuple[str, ...] = (), seed: int | None = None) -> list[Path]:
    """Run recipe ``name`` (every seed of a distill or teacher recipe, or ``seed``); write ``results/<name>.json``
    and ``.md`` per run (NAME-sK for the other seeds); return the JSON paths."""
    name, alias_seed = resolve_name(name)
    recipe = apply_overrides(load_recipe(name), list(sets))
    seed = alias_seed if seed is None else seed
    if seed is not None and recipe.kind == "sweep":
        raise SystemExit(f"--seed: recipe {name} is a sweep; its seeds are its grid's (--set seeds=[...])")
    if seed is not None and seed not in recipe.seeds:
        raise SystemExit(f"--seed {seed}: recipe {name} declares seeds {list(recipe.seeds)}")
    return [_run_one(recipe, s, data_dir, resume, workroot, results, sets)
            for s in ((seed,) if seed is not None else recipe.seeds if recipe.kind != "sweep" else (None,))]


def _run_one(recipe: Recipe, seed: int | None, data_dir: str | None, resume: bool, workroot: Path, results: Path,
             sets: tuple[str, ...]) -> Path:
    result = recipe.result_name(seed) if seed is not None else recipe.name
    workdir = recipe.workdir_for(seed) if seed is not None else recipe.workdir
    work = workroot / workdir if workdir else None
    with progress_reporter() as reporter, tempfile.TemporaryDirectory() as tmp:
        if recipe.kind == "sweep":
            cfg, grid = recipe_config(recipe, data_dir, str(work), workroot)
            report = run_sweep(cfg, grid, reporter=reporter, log=print)
            best = json.loads((Path(cfg.out) / "best" / "report.json").read_text())
            for m in best["models"].values():
                m.pop("history", None)
            report["best"]["report"] = best  # the best cell, exported and benchmarked like distill-export
            best_md = to_markdown(best).split("\n", 2)[2]  # without its title line
            md = sweep_markdown(report) + "\n## Best cell, exported and benchmarked\n\n" + best_md
        elif recipe.kind == "teacher":
            cfg, _ = recipe_config(recipe, data_dir, str(work), workroot, seed)
            report = teacher_only(cfg, work / "teacher.pt", resume=resume, reporter=reporter, log=print)
            md = teacher_markdown(report)
        else:
            out = work or Path(tmp) / "run"  # workdir: keep the run
            cfg, _ = recipe_config(recipe, data_dir, str(out), workroot, seed)
            resume = resume and work is not None
            cfg = dataclasses.replace(cfg, overwrite=not resume, resume=resume)
            report = distill_export(cfg, reporter=reporter, log=print)
            md = to_markdown(report)
    multi = recipe.kind != "sweep" and len(recipe.seeds) > 1
    command = " ".join(["python benchmarks/run_recipe.py", recipe.name, *([f"--seed {seed}"] if multi else []),
                        *(f"--set {shlex.quote(s)}" for s in sets),
                        *(["--workroot DIR --results-dir DIR"] if sets else [])])
    report["recipe"] = {"name": recipe.name, "doc": recipe.doc, "command": command}
    if multi:
        report["recipe"]["seed"] = seed
    if sets:
        report["recipe"]["overrides"] = list(sets)
    md = md.replace("![training curves](curves.png)\n", "").replace("![heatmap](heatmap.png)\n", "")
    md = md.replace("[best/report.md](best/report.md)", "the section below")
    if sets:
        md += f"\nNot the recipe as committed: changed with {', '.join(f'`--set {s}`' for s in sets)}.\n"
    md += f"\nReproduce: `{command}`\n"
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results / f"{result}.json", report)
    atomic_write_text(results / f"{result}.md", md)
    print(f"wrote {results / (result + '.json')} and .md")
    return results / f"{result}.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="name of a file in benchmarks/recipes/ (without .json), or NAME-sK for its seed K")
    ap.add_argument("--seed", type=int, default=None,
                    help="distill and teacher recipes with several seeds: run only this one (default: each in turn)")
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
            args.results_dir or HERE / "results", tuple(args.sets), args.seed)
    except KdexportError as e:  # a bad --set or recipe field, missing data, a failed run: one line, as the CLI says it
        raise SystemExit(f"run_recipe.py {args.recipe}: {e}") from None

if __name__ == "__main__":
    prefer_kept()  # as the CLI does: see kdexport/allocator.py
    main()
