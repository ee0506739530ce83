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
import time
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
from .files import atomic_write, atomic_write_json, atomic_write_text
from .models.checkpoint import load_model, save_checkpoint
from .outputs import commit_out_dir, prepare_out_dir, release_output
from .pipeline import export_entry, models_report, prepare, report_header, teacher_entry, time_models
from .report.write import write_report
from .runs import commit_run_dir, open_sweep_dir, write_run_config

__all__ = ["Grid", "cell_key", "mean_std", "run_sweep", "sweep_markdown"]


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


def _unit(out: Path, ctx: Context, name: str, seed: int, kd: KDConfig | None, source: TeacherLogits | None,
          reporter: Reporter | None, save: bool, log: Log = quiet) -> dict:
    """Train one student (baseline when kd is None) unless its result file already exists, or, for a baseline,
    unless the baseline cache holds it (``--baseline-cache``)."""
    path = out / "cells" / f"{name}-s{seed}.json"
    if path.exists():
        return read_unit(path)
    ckpt = out / "cells" / f"{name}-s{seed}.pt"
    cached = baseline_cache_dir(ctx, seed) if kd is None else None
    rec = cached_baseline(cached)
    if rec is not None:
        if save:
            atomic_write(ckpt, lambda tmp: shutil.copyfile(cached / "model.pt", tmp))
        atomic_write_json(path, rec)
        log(f"{name} s{seed}: reused from the baseline cache ({cached}; --no-baseline-cache trains it again)")
        return rec
    t0 = time.perf_counter()
    state = out / "cells" / f"{name}-s{seed}.state.pt"  # per-epoch state: an interrupted unit continues
    model, hist = train_student(ctx, seed=seed, distill=Distillation(source, kd) if kd else None,
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
    return rec


def run_sweep(cfg: RunConfig, grid: Grid, *, reporter: Reporter | None = None, log: Log = quiet) -> dict:
    t_start = time.perf_counter()
    ctx = prepare(cfg, log)
    teacher = build_teacher(ctx)
    check_hint(ctx, teacher)
    out, final = open_sweep_dir(cfg, log)
    tpath = out / "teacher.pt"
    if teacher_is_trained(cfg):
        t_hist = train_teacher(ctx, teacher, reporter, log)
    elif tpath.exists():
        teacher, _, blob = load_model(tpath, expect=ctx.teacher_spec)
        t_hist = blob["history"]
        log("teacher: reused from an earlier run of this sweep")
    else:
        t_state = out / "teacher.state.pt"  # per-epoch state: an interrupted teacher continues
        t_hist = train_teacher(ctx, teacher, reporter, log, state_path=t_state, resume=True)
        save_checkpoint(tpath, teacher, ctx.teacher_spec, role="teacher", config=cfg.to_dict(),
                        history=t_hist)
        remove_training_state(t_state)
    if isinstance(teacher, torch.nn.Module):
        teacher = teacher.to(ctx.device).eval()
    teacher_acc = check_teacher(ctx, teacher, log)
    source = teacher_logits_for(ctx, teacher, log)
    kds = grid.kd_configs(cfg.kd)
    first = grid.seeds[0]
    baselines = {s: _unit(out, ctx, "baseline", s, None, None, reporter, s == first, log) for s in grid.seeds}
    cells: dict[str, dict] = {}
    units = {("baseline", s): baselines[s] for s in grid.seeds}  # every unit's record, as run or read back
    total = len(kds) * len(grid.seeds)
    done = 0
    for kd in kds:
        key = cell_key(kd)
        runs = []
        for s in grid.seeds:
            done += 1
            log(f"cell {done}/{total}: T={kd.temperature:g} beta={kd.soft_weight:g} "
                f"{'T^2-scaled' if kd.scale_t2 else 'unscaled'} loss={kd.loss} seed={s}")
            units[key, s] = _unit(out, ctx, key, s, kd, source, reporter, s == first)
            runs.append(units[key, s])
        accs = [r["accuracy"] for r in runs]
        m, sd = mean_std(accs)
        cells[key] = {"kd": dataclasses.asdict(kd), "accuracies": accs, "mean": m, "std": sd,
                      "seeds": list(grid.seeds)}
    base_m, base_sd = mean_std([baselines[s]["accuracy"] for s in grid.seeds])
    best_key = max(cells, key=lambda k: cells[k]["mean"])
    result = {
        **report_header(ctx, final),
        "grid": grid.to_dict(),
        "teacher": {"arch": cfg.teacher, "accuracy": teacher_acc, "tta": cfg.teacher_tta, "history": t_hist},
        "baseline": {"arch": cfg.student, "mean": base_m, "std": base_sd,
                     "accuracies": [baselines[s]["accuracy"] for s in grid.seeds]},
        "cells": cells,
        "histories": {f"{name}-s{seed}": u.get("history", []) for (name, seed), u in units.items()},
        "best": {"cell": best_key, **cells[best_key], "kd_gain_points": (cells[best_key]["mean"] - base_m) * 100},
    }
    log(f"best cell {best_key}: exporting and benchmarking its seed-{first} student")
    result["best"]["report"] = "best/report.json"
    # training seconds as measured, including units finished by earlier (resumed) runs and the teacher's epochs
    t_secs = sum(h["seconds"] for h in t_hist)
    _export_best(ctx, out, teacher, teacher_acc, t_hist, cells[best_key]["kd"], first, log,
                 seconds=(t_secs if t_hist else None, units["baseline", first]["train_seconds"],
                          units[best_key, first]["train_seconds"]))
    result["wall_seconds"] = time.perf_counter() - t_start
    result["train_seconds_total"] = t_secs + sum(u["train_seconds"] for u in units.values())
    atomic_write_json(out / "sweep.json", result)
    write_run_config(out, cfg, grid)
    atomic_write_text(out / "sweep.md", sweep_markdown(result))
    plot_heatmap(result, out / "heatmap.png")
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
        timing = time_models(ctx, staging, models, teacher=teacher, eager={"student": student}, log=log)
        cfg = dataclasses.replace(ctx.cfg, kd=kd, train=dataclasses.replace(ctx.cfg.train, seed=seed))
        extra = {"teacher_tta": tta} if tta else {}
        write_report(models_report(dataclasses.replace(ctx, cfg=cfg), final, models, timing, **extra), staging)
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
             f"(KD gain {r['best']['kd_gain_points']:+.2f} points); exported and benchmarked in "
             f"[best/report.md](best/report.md)", ""]
    for loss, scaled in _variants(g):
        lines += [f"### Soft loss {_variant_title(loss, scaled)}", "",
                  "| beta \\ T | " + " | ".join(f"T = {T:g}" for T in g["temperatures"]) + " |",
                  "|---|" + "---|" * len(g["temperatures"])]
        for b in g["soft_weights"]:
            row = [_pct(r["cells"][k]["mean"], r["cells"][k]["std"], n) for k in
                   (_cell(loss, T, b, scaled) for T in g["temperatures"])]
            lines.append(f"| beta = {b:g} | " + " | ".join(row) + " |")
        lines.append("")
    lines += _clip_lines(r)
    env = r["environment"]
    lines += [f"Training time of everything above {r.get('train_seconds_total', 0):.0f} s; this run's wall time "
              f"{r.get('wall_seconds', 0):.0f} s (finished cells are reused on a rerun), on {env['cpu']} "
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
        grid = np.array([[r["cells"][_cell(loss, T, b, scaled)]["mean"] for T in g["temperatures"]]
                         for b in g["soft_weights"]])
        gain = (grid - base) * 100
        lim = max(abs(gain).max(), 1e-6)
        im = ax.imshow(gain, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for i, j in itertools.product(range(grid.shape[0]), range(grid.shape[1])):
            ax.text(j, i, f"{grid[i, j] * 100:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(g["temperatures"])), [f"{T:g}" for T in g["temperatures"]])
        ax.set_yticks(range(len(g["soft_weights"])), [f"{b:g}" for b in g["soft_weights"]])
        ax.set(xlabel="T", ylabel="beta", title=f"accuracy % ({_variant_title(loss, scaled)})")
        fig.colorbar(im, ax=ax, label="KD gain vs baseline (points)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
