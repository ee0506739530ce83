"""report.json (the contract), report.md and training-curve PNGs."""

from __future__ import annotations

from pathlib import Path

from ..files import atomic_write, atomic_write_json, atomic_write_text
from .entry import ModelEntry, model_entries

REPORT_VERSION = 1
ROLE_TITLES = {"teacher": "teacher", "baseline": "baseline (no KD)", "pseudo_label": "pseudo-label (teacher top-1)",
               "student": "distilled student", "student_int8": "distilled student INT8"}


SHIPPED = ("student", "student_int8")  # the entries a run ships; a degenerate one heads the report


def unfit(report: dict) -> list[str]:
    """One line per shipped model that is no classifier on the test split (collapsed onto one class, or no better
    than always answering the most common one): what report.md and the CLI put first, not under a KD gain."""
    entries = model_entries(report)
    return [f"the {ROLE_TITLES.get(role, role)} is {e.predictions['flag']}" for role, e in entries.items()
            if role in SHIPPED and e.predictions and e.predictions.get("flag")]


def drop_text(points: float) -> str:
    """An INT8 file's accuracy change against FP32 as a reader takes it: "drop 0.28 points", "gain 0.28 points"."""
    return f"gain {-points:.2f} points" if points < 0 else f"drop {points:.2f} points"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt_count(n: int | None) -> str:
    if n is None:  # not known (an ONNX teacher's FLOPs)
        return "-"
    if n >= 1e9:
        return f"{n / 1e9:.2f}G"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _big_batch(entries: dict[str, ModelEntry]) -> int:
    return max(b for e in entries.values() for b in e.batch_sizes())


def _latency(m: ModelEntry, batch: int) -> str:
    """A p50 in ms with the [min, max] of its round p50s where the report has them."""
    lat = m.latency(batch) or {}
    spread = lat.get("spread")
    return f"{lat['p50']:.3f} ({spread[0]:.3f}-{spread[1]:.3f})" if spread else f"{lat['p50']:.3f}"


def summary_columns(report: dict) -> list[str]:
    big = _big_batch(model_entries(report))
    return ["model", "arch", "acc (ONNX)", "acc (torch)", "params", "FLOPs", "ONNX size",
            "p50 ms @1", f"p50 ms @{big}", f"img/s @{big}", "speed-up", "compression"]


def summary_table(report: dict) -> list[dict[str, str]]:
    """The headline table, one row per benchmarked model keyed by :func:`summary_columns`; shared by
    report.md and the CLI's console table."""
    entries = {k: e for k, e in model_entries(report).items() if e.benchmarked}
    teacher = entries.get("teacher")
    big = _big_batch(entries)
    speedups = report.get("timing", {}).get("speedups", {})
    rows = []
    for role, m in entries.items():
        lat1 = m.p50(1)
        sp = speedups.get(f"{role}_vs_teacher_batch_1")
        speed = (f"{sp['median']:.1f}x ({sp['spread'][0]:.1f}-{sp['spread'][1]:.1f})" if sp
                 else "1.0x" if role == "teacher" else f"{teacher.p50(1) / lat1:.1f}x" if teacher else "-")
        row = [ROLE_TITLES.get(role, role), m.arch, f"{m.accuracy_onnx * 100:.2f}%",
               f"{m.accuracy_torch * 100:.2f}%" if m.accuracy_torch is not None else "-",
               _fmt_count(m.params), _fmt_count(m.flops), _fmt_bytes(m.onnx_bytes), _latency(m, 1),
               _latency(m, big), f"{m.throughput_per_s:.0f}", speed,
               f"{teacher.onnx_bytes / m.onnx_bytes:.1f}x" if teacher else "-"]
        rows.append(dict(zip(summary_columns(report), row)))
    return rows


def to_markdown(report: dict) -> str:
    env, ds, cfg = report["environment"], report["dataset"], report["config"]
    head = summary_columns(report)
    student = model_entries(report).get("student")
    lines = [f"# kdexport report: {cfg['teacher']} -> {student.arch if student else cfg['student']} on {ds['name']}",
             "",
             f"Created {report['created']} by kdexport {report['kdexport_version']}"
             + (f" in {report['wall_seconds']:.0f} s" if report.get("wall_seconds") is not None else "")
             + f". Dataset: {ds['train_size']} train / "
             f"{ds['test_size']} test images, input {ds['input_shape']}, {ds['num_classes']} classes.", ""]
    lines += [f"> **Not fit to ship: {line}.**" for line in unfit(report)]
    lines += [""] if unfit(report) else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.values()) + " |" for r in summary_table(report)]
    entries = model_entries(report)
    flags = [f"- **Warning: {role} {e.predictions['flag']}.**" for role, e in entries.items()
             if e.predictions and e.predictions.get("flag") and role not in SHIPPED]
    if flags:
        lines += ["", *flags]
    kd = cfg["kd"]
    gain = (f"**KD gain: {report['kd_gain_points']:+.2f} points** (distilled student minus baseline, ONNX accuracy; "
            f"same seed, data order and {cfg['train']['epochs']} epochs each)." if report["kd_gain_points"] is not None
            else "**No KD gain to report:** no training image has a label, so there is no baseline; compare the "
                 "pseudo-label student, or a run with labels.")
    lines += ["", f"{gain} T = {kd['temperature']}, beta = {kd['soft_weight']}, T^2 scaling "
              f"{'on' if kd['scale_t2'] else 'off'}, soft loss {kd['soft_loss']}.", ""]
    lines += labels_lines(report, entries)
    tta = report.get("teacher_tta")
    if tta:
        lines += [f"The students learned from the teacher with `--teacher-tta {tta['mode']}`: "
                  f"{tta['accuracy'] * 100:.2f}% on the test split; the table's teacher row is the network alone, "
                  "as exported.", ""]
    if report.get("baseline_reused"):
        lines += [f"The baseline was reused from the baseline cache (`{report['baseline_reused']}`): trained "
                  "earlier with the same student, data, training options, seed, kdexport code, torch, CPU and "
                  "threads; its train seconds are that run's (`--no-baseline-cache` trains it again).", ""]
    st = entries.get("student")
    if st is not None and st.eager_p50(1) is not None:
        e1, o1 = st.eager_p50(1), st.p50(1)
        lines += [f"Student at batch 1: onnxruntime p50 {o1:.3f} ms vs PyTorch eager {e1:.3f} ms "
                  f"({e1 / o1:.2f}x).", ""]
    timing = report.get("timing")
    how = (f"every model timed in {timing['rounds']} rounds that go round-robin over all of them; a p50 is the median "
           "of its rounds' p50s, with their [min, max] in brackets, and a speed-up the median of the per-round ratios"
           if timing else "median (p50) of timed runs after warm-up")
    lines += [f"Latency: {how}; onnxruntime CPU execution provider, "
              f"{env['threads']} threads, on {env['cpu']} ({env['cpu_cores']} cores). "
              "Accuracy is top-1 on the test split.", ""]
    lines += [f"**Warning: {w}.**" for w in (timing or {}).get("warnings", [])]
    lines += [""] if (timing or {}).get("warnings") else []
    lines += ["| model | parity max abs diff (allowed) | top-1 agreement | p90 ms @1 | p99 ms @1 | train s |",
              "|---|---|---|---|---|---|"]
    for role, m in entries.items():
        if m.parity is None:
            continue
        lat = m.latency(1)
        tol = m.parity.get("tolerance")
        allowed = f" ({tol:.2e})" if isinstance(tol, (int, float)) else ""
        lines.append(f"| {role} | {m.parity['max_abs_diff']:.2e}{allowed} | {m.parity['top1_agreement']:.4f} "
                     f"| {lat['p90']:.3f} | {lat['p99']:.3f} | "
                     + (f"{m.train_seconds:.1f} |" if m.train_seconds is not None else "n/a |"))
    int8 = entries.get("student_int8")
    q = int8.quantization if int8 else None
    if q:
        cal = f", {q['calibration']} calibration" if q.get("calibration") else ""
        if (q.get("equalization") or {}).get("streams"):
            cal += f", {q['equalization']['streams']} residual streams equalized"
        if (q.get("fallback") or {}).get("fp32_nodes"):
            cal += f", {len(q['fallback']['fp32_nodes'])} nodes kept in FP32 by --fallback auto"
        lines += ["", f"INT8 ({q['mode']}{cal}): accuracy {q['accuracy_int8'] * 100:.2f}% vs FP32 "
                  f"{q['accuracy_fp32'] * 100:.2f}% ({drop_text(q['accuracy_drop_points'])}), size "
                  f"{q['size_ratio_vs_fp32'] * 100:.0f}% of FP32, "
                  f"{q['speedup_vs_fp32_batch_1']:.2f}x FP32 speed at batch 1"
                  + (" ({:.2f}-{:.2f} over the rounds)".format(*q["speedup_vs_fp32_batch_1_spread"])
                     if q.get("speedup_vs_fp32_batch_1_spread") else "")
                  + ("; **slower than FP32 on this machine**" if q["speedup_vs_fp32_batch_1"] < 1 else "") + "."]
        lines += qat_lines(q)
        if q.get("diagnosis"):
            from ..export.diagnose import diagnosis_lines

            lines += ["", "Why INT8 differs from FP32:", *diagnosis_lines(q["diagnosis"])]
    budget = report.get("budget")
    if budget:
        sel = budget.get("selection")
        chosen = (f" `--student auto` measured {len(sel['candidates'])} candidates and chose {sel['chosen']}, the "
                  f"most FLOPs within the budget less its {sel['margin']:.0%} margin (kdexport select's table is in "
                  "report.json)." if sel else "")
        lines += ["", f"Budget: {budget['file']} timed again after training: {budget['p50_ms']:.3f} ms p50, "
                  f"{budget['p90_ms']:.3f} ms p90, {budget['onnx_bytes']:,} bytes: "
                  f"**{'met' if budget['met'] else 'MISSED'}**.{chosen}"]
    rej = report["models"].get("student_int8_rejected")
    if rej:
        lines += ["", f"INT8 model rejected: {rej['error']}"]
    lines += runtime_lines(report)
    lines += ["", f"Versions: Python {env['python']}, torch {env['torch']}, torchvision "
              f"{env['torchvision']}, onnx {env['onnx']}, onnxruntime {env['onnxruntime']}.", "",
              "![training curves](curves.png)", ""]
    return "\n".join(lines)


def qat_lines(q: dict) -> list[str]:
    """``--quantize qat``: the fine-tune, its parity against the fake-quantized student, and what the teacher added
    (the same fine-tune on the labels alone, quantized the same way)."""
    qat = q.get("qat")
    if not qat:
        return []
    p = qat["parity"]
    line = (f"QAT: {qat['epochs']} epoch(s) of quantization-aware distillation ({qat['tool']}, lr {qat['lr']:.3g} "
            f"{qat['scheduler']}, {'per-tensor' if qat['per_tensor'] else 'per-channel'} weights, "
            f"{qat['train_seconds']:.1f} s); the INT8 file agrees with the fake-quantized student on "
            f"{p['top1_agreement'] * 100:.1f}% of {p['inputs']} test images (max logit difference "
            f"{p['max_abs_diff']:.3g}).")
    twin = qat.get("labels_only")
    if twin:
        line += (f" The same fine-tune on the labels alone: {twin['accuracy_int8'] * 100:.2f}% INT8; the teacher adds "
                 f"{qat['teacher_gain_points']:+.2f} points.")
    return ["", line]


def labels_lines(report: dict, entries: dict) -> list[str]:
    """``--labels-fraction`` / ``--unlabeled-dir``: how many images had labels, and the three students side by side
    (the baseline on the labeled images, the pseudo-label student, the distilled student), with how often each
    agrees with the teacher on the unlabeled images."""
    lab = report.get("labels")
    if not lab:
        return []
    agree = lab.get("agreement_with_teacher_on_unlabeled", {})
    lines = [f"Labels: {lab['labeled']:,} of {lab['train_images']:,} training images carry one "
             f"({lab['unlabeled']:,} unlabeled: --labels-fraction {lab['labels_fraction']:g}"
             + (f", --unlabeled-dir {lab['unlabeled_dir']}" if lab.get("unlabeled_dir") else "") + "). The baseline "
             "learned from the labeled images alone (repeated to the same steps), the pseudo-label student from "
             "labels plus the teacher's top-1 on the rest, the distilled student from labels plus the teacher's "
             "outputs (the unlabeled images through the soft term only).", "",
             "| student | accuracy (ONNX) | agrees with the teacher on the unlabeled images |", "|---|---|---|"]
    for role in ("baseline", "pseudo_label", "student"):
        e = entries.get(role)
        if e is not None:
            lines.append(f"| {ROLE_TITLES.get(role, role)} | {e.accuracy_onnx * 100:.2f}% | "
                         f"{agree[role] * 100:.2f}% |" if role in agree else "| - |")
    return lines + [""]


def runtime_lines(report: dict) -> list[str]:
    """``--targets``: the distilled student as each runtime ships it, the fastest fit file marked."""
    r = report.get("runtimes")
    if not r:
        return []
    big = max((int(k.split("_")[1]) for row in r["rows"] if row["latency_ms"] for k in row["latency_ms"]), default=1)
    lines = ["", "## The distilled student on each runtime", "",
             "Every file proven before it was kept: parity with PyTorch on real test images (FP32), accuracy on the "
             "whole test split run in its own runtime, INT8 within `--max-accuracy-drop` "
             f"{r['max_accuracy_drop']:g} points of the FP32 ONNX file; timed in the same rounds as the models above "
             f"({r['threads']} threads; the 1-thread column from rounds of its own, when the run had more than one). "
             f"Fastest within the allowed drop: **{r['fastest'] or 'none'}**.", "",
             f"| runtime | precision | file | size | parity max diff (allowed) | accuracy | drop | p50 ms @1 | "
             f"p90 ms @1 | p50 ms @1, 1 thread | p50 ms @{big} | img/s @{big} | speed vs ONNX FP32 @1 | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        par = row["parity"]
        parity = f"{par['max_abs_diff']:.2e} ({par['tolerance']:.2e})" if par else "-"
        lat = row["latency_ms"] or {}
        extra = row.get("extra") or {}
        sp = extra.get("speedup_vs_onnx_fp32_batch_1")
        speed = ("1.00x" if row["target"] == "onnx" and row["precision"] == "fp32" else
                 f"{sp['median']:.2f}x ({sp['spread'][0]:.2f}-{sp['spread'][1]:.2f})" if sp else "-")
        mark = "**" if r["fastest"] == f"{row['target']} {row['precision']}" else ""
        note = f"NOT KEPT: {row['error']}" if row["error"] else row["note"]
        p90 = (lat.get("batch_1") or {}).get("p90")
        lines.append(
            f"| {mark}{row['runtime']}{mark} | {row['precision']} | {row['path'] or '-'} | "
            f"{_fmt_bytes(row['bytes']) if row['bytes'] else '-'} | {parity} | "
            + (f"{row['accuracy'] * 100:.2f}%" if row["accuracy"] is not None else "-") + " | "
            + (drop_text(row["accuracy_drop_points"]) if row["accuracy_drop_points"] is not None else "-") + " | "
            + _latency_row(lat, 1) + " | " + (f"{p90:.3f}" if p90 is not None else "-") + " | "
            + _latency_row({"batch_1": extra["latency_ms_1_thread"]} if "latency_ms_1_thread" in extra else {}, 1)
            + " | " + _latency_row(lat, big) + " | "
            + (f"{big / (lat[f'batch_{big}']['p50'] / 1e3):.0f}" if f"batch_{big}" in lat else "-")
            + f" | {speed} | {note} |")
    versions = sorted({f"{row['runtime']} {row['runtime_version']}" for row in r["rows"] if row["runtime_version"]})
    return lines + ["", f"Runtimes: {', '.join(versions)}."]


def _latency_row(lat: dict, batch: int) -> str:
    x = lat.get(f"batch_{batch}")
    if not x:
        return "-"
    lo, hi = x.get("spread", [x["p50"], x["p50"]])
    return f"{x['p50']:.3f} ({lo:.3f}-{hi:.3f})"


def plot_curves(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    colors = plt.get_cmap("tab10").colors
    for i, (role, m) in enumerate(model_entries(report).items()):
        h = m.history or []
        if not h:
            continue
        color = colors[i % len(colors)]  # one colour per model, the same in both panels
        members: dict[int | None, list[dict]] = {}  # an ensemble's history is its members' in turn
        for r in h:
            members.setdefault(r.get("member"), []).append(r)
        for member, rs in members.items():
            name = role if member is None else f"{role} member {member}"
            ep = [r["epoch"] for r in rs]
            tested = [r for r in rs if "test_accuracy" in r]  # --eval-every skips some epochs' evaluation
            ep_tested = [r["epoch"] for r in tested]
            ax_acc.plot(ep_tested, [r["test_accuracy"] for r in tested], marker="o", color=color, label=f"{name} test")
            ax_acc.plot(ep, [r["train_accuracy"] for r in rs], ls="--", alpha=0.6, color=color,
                        label=f"{name} train")
            ax_loss.plot(ep_tested, [r["test_loss"] for r in tested], marker="o", color=color, label=f"{name} test CE")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="test loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_report(report: dict, out_dir: Path) -> None:
    report.setdefault("report_version", REPORT_VERSION)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", to_markdown(report))
    plot_curves(report, out_dir / "curves.png")
