"""``kdexport sweep``: a grid over T, beta (and T^2 scaling) x seeds, fair and resumable.

The teacher is trained once (or loaded); the baseline student once per seed; a distilled student
per grid cell and seed, all sharing the teacher's cached logits. Each finished unit is written
atomically under ``OUT/cells/`` so a rerun of the same command skips it; every epoch of the teacher and
of each unit saves its training state, so an interrupted one continues from its last finished epoch.
The best cell's student is then exported and benchmarked exactly like ``distill-export`` (``OUT/best/report.json``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .config import Grid, KDConfig, RunConfig
from .distill.context import Context, Log, quiet
from .distill.sources import (
    TeacherModel,
    build_teacher,
    check_hint,
    check_teacher,
    split_tta,
    teacher_is_trained,
    teacher_logits_for,
    train_teacher,
)
from .distill.students import (
    baseline_cache_dir,
    cached_baseline,
    keep_baseline,
    read_unit,
    train_student,
    unit_record,
)
from .distill.teacher import Distillation, TeacherLogits
from .distill.train import Reporter, evaluate, remove_training_state
from .errors import ConfigError, GateError, KdexportError, StateError
from .files import atomic_write, atomic_write_json, atomic_write_text, read_json
from .models.checkpoint import load_model, save_checkpoint
from .outputs import claim, commit_out_dir, lock_output, prepare_out_dir, release_output, unclaim
from .pipeline import (
    export_entry,
    models_report,
    prepare,
    qat_students,
    quantize_entry,
    report_header,
    runtimes_section,
    target_files,
    teacher_entry,
    time_models,
)
from .report.write import write_report
from .runs import RUN_CONFIG, SETUP_LOCK, commit_run_dir, open_sweep_dir, read_sweep_options

__all__ = ["Grid", "Unit", "cell_key", "mean_std", "merge_sweep", "run_sweep", "shard_units", "sweep_markdown",
           "sweep_units"]


def cell_key(kd: KDConfig) -> str:
    """A cell's name: T, beta, T^2 scaling, and the loss when it is not Hinton's (older sweeps keep their names)."""
    key = f"T{kd.temperature:g}-b{kd.soft_weight:g}-{'t2' if kd.scale_t2 else 'raw'}"
    return key if kd.loss == "kd" else f"{key}-{kd.loss}"


def _cell(loss: str, T: float, b: float, scaled: bool) -> str:
    return cell_key(KDConfig(temperature=T, soft_weight=b, scale_t2=scaled, loss=loss))


def _variants(g: dict) -> list[tuple[str, bool]]:
    """(loss, T^2 scaling) per table: DKD and DIST scale by T^2 themselves, so they get one each."""
    return [(loss, scaled) for loss in g.get("losses", ["kd"])
            for scaled in (g["scale_t2"] if loss == "kd" else g["scale_t2"][:1])]


def _variant_title(loss: str, scaled: bool) -> str:
    return f"{loss}, {'x T^2' if scaled else 'unscaled'}" if loss == "kd" else loss


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


@dataclasses.dataclass(frozen=True)
class Unit:
    """One student of the sweep: the baseline of a seed (``kd`` None) or a cell's student of a seed."""

    name: str
    seed: int
    kd: KDConfig | None

    def file(self, out: Path, suffix: str = ".json") -> Path:
        return out / "cells" / f"{self.name}-s{self.seed}{suffix}"

    def describe(self) -> str:
        if self.kd is None:
            return f"baseline seed={self.seed}"
        kd = self.kd
        return (f"T={kd.temperature:g} beta={kd.soft_weight:g} {'T^2-scaled' if kd.scale_t2 else 'unscaled'} "
                f"loss={kd.loss} seed={self.seed}")


def sweep_units(grid: Grid, base: KDConfig) -> list[Unit]:
    """Every unit of the sweep in a fixed order (baselines, then each cell over the seeds): shard K of N owns the
    units at positions K, K + N, K + 2N, ..."""
    return [*(Unit("baseline", s, None) for s in grid.seeds),
            *(Unit(cell_key(kd), s, kd) for kd in grid.kd_configs(base) for s in grid.seeds)]


def shard_units(units: list[Unit], shard: tuple[int, int] | None) -> list[Unit]:
    """The units shard (K, N) trains: positions K, K + N, ... (all of them without shards). Only its own: a shard's
    time limit (a SLURM task's, a CI job's) is sized for its share; a crashed shard's units wait for its rerun."""
    k, n = shard or (0, 1)
    return [u for i, u in enumerate(units) if i % n == k]


def _unit(out: Path, ctx: Context, unit: Unit, source: Callable[[], TeacherLogits] | None,
          reporter: Reporter | None, save: bool, log: Log = quiet) -> dict:
    """Train one student (baseline when ``unit.kd`` is None) unless its result file already exists, or, for a
    baseline, unless the baseline cache holds it (``--baseline-cache``). The caller holds the unit's claim."""
    name, seed, kd = unit.name, unit.seed, unit.kd
    path = unit.file(out)
    if path.exists():
        return read_unit(path)
    ckpt = unit.file(out, ".pt")
    cached = baseline_cache_dir(ctx, seed) if kd is None else None
    rec = cached_baseline(cached)
    if rec is not None:
        if save:
            atomic_write(ckpt, lambda tmp: shutil.copyfile(cached / "model.pt", tmp))
        atomic_write_json(path, rec)
        log(f"{name} s{seed}: reused from the baseline cache ({cached}; --no-baseline-cache trains it again)")
        return rec
    t0 = time.perf_counter()
    state = unit.file(out, ".state.pt")  # per-epoch state: an interrupted unit continues
    if state.exists():
        log(f"{name} s{seed}: continuing from the last epoch an interrupted run saved")
    model, hist = train_student(ctx, seed=seed, distill=Distillation(source(), kd) if kd else None,
                                label=f"{name} s{seed}", reporter=reporter, state_path=state, resume=True)
    acc = evaluate(model, ctx.data, "test", device=ctx.device)["accuracy"]  # where fit left it: the training device
    rec = unit_record(name, seed, kd, acc, time.perf_counter() - t0, hist)
    # checkpoint first: a result file (the cell's, the cache's record) implies its checkpoint exists
    if save:
        save_checkpoint(ckpt, model, ctx.student_spec, role=name, config=ctx.cfg.to_dict(),
                        metrics={"accuracy": acc}, history=hist)
    if cached is not None:
        keep_baseline(cached, ctx, model, rec)
    atomic_write_json(path, rec)
    remove_training_state(state)
    log(f"{name} s{seed}: trained, {acc * 100:.2f}% on the test split ({rec['train_seconds']:.0f} s)")
    return rec


TEACHER_LOCK, MERGE_LOCK = "teacher.lock", "merge.lock"


def _sweep_teacher(ctx: Context, out: Path, teacher: TeacherModel, reporter: Reporter | None,
                   log: Log, train: bool = True) -> tuple[TeacherModel, list[dict]]:
    """The sweep's teacher and its history: trained elsewhere (loaded), read back from ``OUT/teacher.pt``, or
    trained here, once: a shard that finds another training it waits on its lock and reuses it (an interrupted
    one continues from its last epoch). ``train`` off (``--merge``): StateError when it is not there yet."""
    cfg = ctx.cfg
    if teacher_is_trained(cfg):
        return teacher, train_teacher(ctx, teacher, reporter, log)
    tpath = out / "teacher.pt"
    fd = claim(out / TEACHER_LOCK)
    if fd is None:
        if not train:
            raise StateError(f"the sweep's teacher is still being trained in {str(out)!r}: nothing to merge yet")
        log("teacher: another shard is training it; waiting for it to finish")
        fd = claim(out / TEACHER_LOCK, wait=True)
    try:
        if tpath.exists():
            teacher, _, blob = load_model(tpath, expect=ctx.teacher_spec)
            log("teacher: reused from an earlier run of this sweep (or another shard)")
            return teacher, blob["history"]
        if not train:
            raise StateError(f"the sweep in {str(out)!r} has no trained teacher yet: nothing to merge")
        t_state = out / "teacher.state.pt"  # per-epoch state: an interrupted teacher continues
        if t_state.exists():
            log("teacher: continuing from the last epoch an interrupted run saved")
        t_hist = train_teacher(ctx, teacher, reporter, log, state_path=t_state, resume=True)
        save_checkpoint(tpath, teacher, ctx.teacher_spec, role="teacher", config=cfg.to_dict(), history=t_hist)
        remove_training_state(t_state)
        return teacher, t_hist
    finally:
        unclaim(fd)


def run_sweep(cfg: RunConfig, grid: Grid, *, shard: tuple[int, int] | None = None, reporter: Reporter | None = None,
              log: Log = quiet) -> dict | None:
    """Run the sweep (``shard`` (K, N): share K of N of its units). Returns the merged result when this process
    wrote it (it found every unit done once its own were), else None."""
    t_start = time.perf_counter()
    if shard is not None and cfg.student == "auto":
        raise ConfigError("--student auto chooses by the latency it measures on each machine, so shards could train "
                          "different students: choose it first (kdexport select) and pass it to every shard")
    ctx = prepare(cfg, log)
    teacher = build_teacher(ctx)
    check_hint(ctx, teacher)
    out, final = open_sweep_dir(cfg, grid, shard, log)
    teacher, t_hist = _sweep_teacher(ctx, out, teacher, reporter, log)
    if isinstance(teacher, torch.nn.Module):
        teacher = teacher.to(ctx.device).eval()
    teacher_acc = check_teacher(ctx, teacher, log)
    logits: list[TeacherLogits] = []

    def source() -> TeacherLogits:  # computed when this process first trains a distilled unit
        if not logits:
            logits.append(teacher_logits_for(ctx, teacher, log))
        return logits[0]

    units = sweep_units(grid, cfg.kd)
    first = grid.seeds[0]
    where = f"shard {shard[0]}/{shard[1]}: " if shard else ""
    trained = 0
    position = {u: i for i, u in enumerate(units, 1)}
    for unit in shard_units(units, shard):
        if unit.file(out).exists():
            continue
        fd = claim(unit.file(out, ".lock"))
        if fd is None:  # another process is training it (the same shard started twice)
            log(f"{where}{unit.name} s{unit.seed}: another process is training it")
            continue
        try:
            if unit.file(out).exists():  # finished while we waited for the lock
                continue
            log(f"{where}unit {position[unit]}/{len(units)}: {unit.describe()}")
            _unit(out, ctx, unit, source, reporter, unit.seed == first, log)
            trained += 1
        finally:
            unclaim(fd)
    missing = [u for u in units if not u.file(out).exists()]
    if missing:
        log(f"{where}done; {len(missing)} of {len(units)} units are not finished yet (other shards', or a stopped "
            f"shard's: rerun it): the shard that finishes last writes sweep.json (kdexport sweep --merge --out "
            f"{final} writes what is done at any time)")
        release_output(final)
        return None
    if shard and not trained and _complete(out):
        log(f"{where}every unit was already done and merged: {final / 'sweep.md'}")
        release_output(final)
        return read_json(out / "sweep.json", "sweep result", f"run kdexport sweep --merge --out {final}")
    return _merge(ctx, grid, out, final, teacher, teacher_acc, t_hist, units, t_start, log,
                  merged_by=f"shard {shard[0]}/{shard[1]}" if shard else None)


def _complete(out: Path) -> bool:
    try:
        return (out / "sweep.json").exists() and bool(read_json(out / "sweep.json", "sweep result", "").get("complete"))
    except KdexportError:
        return False


def merge_sweep(folder: str | None, *, reporter: Reporter | None = None, log: Log = quiet) -> dict | None:
    """``kdexport sweep --merge --out DIR``: sweep.json, sweep.md and the heatmap from the units finished so far
    (a partial result lists the missing ones) and, when all are, best/. Returns the result, or None when another
    process is writing it."""
    if not folder:
        raise ConfigError("--merge needs --out: the folder of the sweep to merge")
    t_start = time.perf_counter()
    cfg, grid = read_sweep_options(Path(folder))
    log(f"merging the sweep in {folder} with the options recorded in its {RUN_CONFIG}")
    final = Path(folder)
    lock_output(final, shared=True)
    ctx = prepare(cfg, log)
    teacher, t_hist = _sweep_teacher(ctx, final, build_teacher(ctx), reporter, log, train=False)
    if isinstance(teacher, torch.nn.Module):
        teacher = teacher.to(ctx.device).eval()
    teacher_acc = check_teacher(ctx, teacher, log)
    return _merge(ctx, grid, final, final, teacher, teacher_acc, t_hist, sweep_units(grid, cfg.kd), t_start, log,
                  merged_by="--merge")


def _merge(ctx: Context, grid: Grid, out: Path, final: Path, teacher: TeacherModel, teacher_acc: float,
           t_hist: list[dict], units: list[Unit], t_start: float, log: Log, merged_by: str | None) -> dict | None:
    """sweep.json, sweep.md, the heatmap from every finished unit, and best/ once all are; under ``merge.lock`` so
    that two shards finishing together write it once."""
    fd = claim(out / MERGE_LOCK)
    if fd is None:
        log("another process is writing the merged result now")
        release_output(final)
        return None
    try:
        records = {(u.name, u.seed): read_unit(u.file(out)) for u in units if u.file(out).exists()}
        missing = [u for u in units if (u.name, u.seed) not in records]
        first = grid.seeds[0]
        base_runs = [records["baseline", s] for s in grid.seeds if ("baseline", s) in records]
        cells: dict[str, dict] = {}
        for kd in grid.kd_configs(ctx.cfg.kd):
            key = cell_key(kd)
            seeds = [s for s in grid.seeds if (key, s) in records]
            if seeds:
                accs = [records[key, s]["accuracy"] for s in seeds]
                m, sd = mean_std(accs)
                cells[key] = {"kd": dataclasses.asdict(kd), "accuracies": accs, "mean": m, "std": sd, "seeds": seeds}
        if not base_runs or not cells:
            raise StateError(f"the sweep in {str(final)!r} has no finished baseline and cell yet "
                             f"({len(records)} of {len(units)} units done): nothing to merge")
        base_m, base_sd = mean_std([r["accuracy"] for r in base_runs])
        best_key = max(cells, key=lambda k: cells[k]["mean"])
        result = {
            **report_header(ctx, final),
            "grid": grid.to_dict(),
            "complete": not missing,
            **({"missing_units": [f"{u.name}-s{u.seed}" for u in missing]} if missing else {}),
            **({"merged_by": merged_by} if merged_by else {}),
            "teacher": {"arch": ctx.cfg.teacher, "accuracy": teacher_acc, "tta": ctx.cfg.teacher_tta,
                        "history": t_hist},
            "baseline": {"arch": ctx.cfg.student, "mean": base_m, "std": base_sd,
                         "accuracies": [r["accuracy"] for r in base_runs],
                         "seeds": [s for s in grid.seeds if ("baseline", s) in records]},
            "cells": cells,
            "histories": {f"{name}-s{seed}": u.get("history", []) for (name, seed), u in records.items()},
            "best": {"cell": best_key, **cells[best_key], "kd_gain_points": (cells[best_key]["mean"] - base_m) * 100},
        }
        t_secs = sum(h["seconds"] for h in t_hist)
        if missing:
            log(f"partial merge: {len(missing)} of {len(units)} units missing ({', '.join(result['missing_units'])}); "
                "best/ is exported once every unit is done")
            result["best"]["report"] = None
        else:
            log(f"best cell {best_key}: exporting and benchmarking its seed-{first} student")
            result["best"]["report"] = "best/report.json"
            # training seconds as measured, including units finished earlier or elsewhere, and the teacher's epochs
            _export_best(ctx, out, teacher, teacher_acc, t_hist, cells[best_key]["kd"], first, log,
                         seconds=(t_secs if t_hist else None, records["baseline", first]["train_seconds"],
                                  records[best_key, first]["train_seconds"]))
        result["wall_seconds"] = time.perf_counter() - t_start
        result["train_seconds_total"] = t_secs + sum(u["train_seconds"] for u in records.values())
        atomic_write_json(out / "sweep.json", result)
        atomic_write_text(out / "sweep.md", sweep_markdown(result))
        plot_heatmap(result, out / "heatmap.png")
        if not missing:  # nothing is left to claim: whoever still holds one re-checks and finds the work done
            for lock in [*out.glob("cells/*.lock"), out / TEACHER_LOCK, out / SETUP_LOCK, out / MERGE_LOCK]:
                lock.unlink(missing_ok=True)
    finally:
        unclaim(fd)
    if out != final:  # --overwrite: the finished sweep replaces the old folder now
        commit_out_dir(out, final)
    else:
        release_output(final)
    return result


def _export_best(ctx: Context, out: Path, teacher: TeacherModel, teacher_acc: float, t_hist: list[dict],
                 kd_dict: dict, seed: int, log: Log, seconds: tuple[float | None, float, float]) -> None:
    """Export and benchmark the best cell's seed-``seed`` student beside its baseline and the teacher;
    ``seconds``: the training seconds of teacher (None: not known), baseline and student."""
    kd = KDConfig(**kd_dict)
    final, staging = prepare_out_dir(out / "best", overwrite=True)
    try:
        baseline, _, b_blob = load_model(out / "cells" / f"baseline-s{seed}.pt", expect=ctx.student_spec)
        student, _, s_blob = load_model(out / "cells" / f"{cell_key(kd)}-s{seed}.pt", expect=ctx.student_spec)
        t_secs, b_secs, s_secs = seconds
        teacher_acc, tta = split_tta(ctx, teacher, teacher_acc)
        models = {
            "teacher": teacher_entry(ctx, teacher, staging, accuracy=teacher_acc, history=t_hist, log=log,
                                     train_seconds=t_secs),
            "baseline": export_entry(ctx, baseline, ctx.student_spec, "baseline", staging,
                                     history=b_blob["history"], log=log, train_seconds=b_secs),
            "student": export_entry(ctx, student, ctx.student_spec, "student", staging, kd=kd,
                                    history=s_blob["history"], log=log, train_seconds=s_secs),
        }
        cfg = dataclasses.replace(ctx.cfg, kd=kd, train=dataclasses.replace(ctx.cfg.train, seed=seed))
        best_ctx = dataclasses.replace(ctx, cfg=cfg)
        if cfg.quantize != "none":  # the best cell's student ships as distill-export would ship it
            with tempfile.TemporaryDirectory(dir=staging) as tmp:
                qat = (qat_students(best_ctx, student, Distillation(teacher_logits_for(best_ctx, teacher, log), kd),
                                    Path(tmp), lambda role: None, None, log) if cfg.quantize == "qat" else None)
                try:
                    models["student_int8"] = quantize_entry(best_ctx, models["student"], staging, log, qat=qat)
                except GateError as e:  # best/report.json says why; the sweep's result stands
                    models["student_int8_rejected"] = {"error": str(e)}
                    log(f"warning: best/: {e}")
        files = target_files(best_ctx, student, models, staging, log)
        timing = time_models(best_ctx, staging, models, teacher=teacher, eager={"student": student}, files=files,
                             log=log)
        extra = {"teacher_tta": tta} if tta else {}
        if files:
            extra["runtimes"] = runtimes_section(best_ctx, models, files, timing)
        write_report(models_report(best_ctx, final, models, timing, **extra), staging)
        commit_run_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _pct(m: float, s: float, seeds: int = 2) -> str:
    """A cell in %: mean ± sample std over seeds; one seed has no spread to show."""
    return f"{m * 100:.2f}" if seeds == 1 else f"{m * 100:.2f} ± {s * 100:.2f}"


def _tta_note(teacher: dict) -> str:
    """How the students saw the teacher whose accuracy the sweep reports, when ``--teacher-tta`` was on."""
    mode = teacher.get("tta", "none")
    return "" if mode == "none" else (f" with `--teacher-tta {mode}`, as the students saw it (the exported teacher in "
                                      "best/report.md is the network alone)")


def sweep_markdown(r: dict) -> str:
    g = r["grid"]
    n = len(g["seeds"])
    seeds = (f"one seed ({g['seeds'][0]}): every cell is the test accuracy (%) of one run" if n == 1 else
             f"{n} seeds ({', '.join(map(str, g['seeds']))}); every cell is mean ± sample std of test accuracy (%) "
             "over seeds")
    lines = [f"# kdexport sweep: {r['config']['teacher']} -> {r['config']['student']} on {r['dataset']['name']}",
             "", f"Created {r['created']}; {seeds}; {r['config']['train']['epochs']} epochs for baseline and "
             "every student (same seeds, data order and schedule).", "",
             f"- Teacher ({r['teacher']['arch']}): {r['teacher']['accuracy'] * 100:.2f}%{_tta_note(r['teacher'])}",
             f"- Baseline student ({r['baseline']['arch']}, no KD): "
             f"{_pct(r['baseline']['mean'], r['baseline']['std'], n)}",
             f"- Best cell: {r['best']['cell']}: {_pct(r['best']['mean'], r['best']['std'], n)} "
             f"(KD gain {r['best']['kd_gain_points']:+.2f} points); "
             + ("exported and benchmarked in [best/report.md](best/report.md)" if r["best"].get("report") else
                "exported once every unit is done"), ""]
    if not r.get("complete", True):
        missing = r.get("missing_units", [])
        lines[2:2] = [f"**Partial result: {len(missing)} unit(s) not finished yet** ({', '.join(missing)}); a cell "
                      "over fewer seeds than the grid's says how many, and `pending` has none yet. "
                      "`kdexport sweep --merge` writes it again.", ""]

    def shown(key: str) -> str:
        c = r["cells"].get(key)
        if c is None:
            return "pending"
        k = len(c.get("seeds", g["seeds"]))
        return _pct(c["mean"], c["std"], k) + ("" if k == n else f" ({k} of {n} seeds)")

    for loss, scaled in _variants(g):
        lines += [f"### Soft loss {_variant_title(loss, scaled)}", "",
                  "| beta \\ T | " + " | ".join(f"T = {T:g}" for T in g["temperatures"]) + " |",
                  "|---|" + "---|" * len(g["temperatures"])]
        for b in g["soft_weights"]:
            row = [shown(_cell(loss, T, b, scaled)) for T in g["temperatures"]]
            lines.append(f"| beta = {b:g} | " + " | ".join(row) + " |")
        lines.append("")
    lines += _clip_lines(r)
    env = r["environment"]
    by = f", merged by {r['merged_by']}" if r.get("merged_by") else ""
    lines += [f"Training time of everything above {r.get('train_seconds_total', 0):.0f} s; this run's wall time "
              f"{r.get('wall_seconds', 0):.0f} s{by} (finished cells are reused on a rerun), on {env['cpu']} "
              f"({env['cpu_cores']} cores), "
              f"torch {env['torch']}, onnxruntime {env['onnxruntime']}.", "", "![heatmap](heatmap.png)", ""]
    return "\n".join(lines)


def _clip_lines(r: dict) -> list[str]:
    """With --clip-grad-norm: each unit's gradient norm before clipping and how many steps the bound cut."""
    bound = r["config"]["train"].get("clip_grad_norm", 0)
    rows = [(unit, [h for h in hist if "grad_norm_max" in h]) for unit, hist in r.get("histories", {}).items()]
    rows = [(unit, hs) for unit, hs in rows if hs]
    if not bound or not rows:
        return []
    lines = [f"### Gradient norm before clipping (--clip-grad-norm {bound:g})", "",
             "| unit | median of the epochs' medians | largest | steps clipped |", "|---|---|---|---|"]
    for unit, hs in rows:
        lines.append(f"| {unit} | {statistics.median(h['grad_norm_median'] for h in hs):.3g} | "
                     f"{max(h['grad_norm_max'] for h in hs):.3g} | {sum(h['clipped_steps'] for h in hs)} |")
    return lines + [""]


def plot_heatmap(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    g = r["grid"]
    variants = _variants(g)
    fig, axes = plt.subplots(1, len(variants), figsize=(1.6 + 1.3 * len(g["temperatures"]) * len(variants),
                                                         1.4 + 0.6 * len(g["soft_weights"])), squeeze=False)
    base = r["baseline"]["mean"]
    for ax, (loss, scaled) in zip(axes[0], variants):
        grid = np.array([[r["cells"].get(_cell(loss, T, b, scaled), {}).get("mean", np.nan) for T in g["temperatures"]]
                         for b in g["soft_weights"]])  # NaN: a cell no seed has finished yet (a partial merge)
        gain = (grid - base) * 100
        lim = max(float(np.nanmax(np.abs(gain))) if np.isfinite(gain).any() else 0.0, 1e-6)
        im = ax.imshow(gain, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for i, j in itertools.product(range(grid.shape[0]), range(grid.shape[1])):
            ax.text(j, i, "pending" if np.isnan(grid[i, j]) else f"{grid[i, j] * 100:.2f}", ha="center",
                    va="center", fontsize=8)
        ax.set_xticks(range(len(g["temperatures"])), [f"{T:g}" for T in g["temperatures"]])
        ax.set_yticks(range(len(g["soft_weights"])), [f"{b:g}" for b in g["soft_weights"]])
        ax.set(xlabel="T", ylabel="beta", title=f"accuracy % ({_variant_title(loss, scaled)})")
        fig.colorbar(im, ax=ax, label="KD gain vs baseline (points)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
