"""``distill_export``: data -> teacher -> baseline + distilled student -> ONNX -> benchmark -> report.

This module orders the steps; each lives with its stage (the teacher's in :mod:`kdexport.distill.sources`, the
students' in :mod:`kdexport.distill.students`, export in :mod:`kdexport.export`, timing in
:mod:`kdexport.bench`). Everything is written into a staging folder beside ``--out`` and renamed into place at
the end, so a failed run leaves no half-written output folder behind. ``kdexport sweep`` uses the same public
steps (``prepare``, ``export_entry``, ``teacher_entry``, ``time_models``, ``models_report``).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .bench.timing import (
    bench_onnx,
    disagree,
    eager_runner,
    file_runner,
    interleaved,
    onnx_runner,
    quick_p50,
    ratio,
    torch_threads,
)
from .config import KDConfig, RunConfig, parse_latency_budget, parse_size_budget
from .data.datasets import Dataset, load_dataset, memory_budget, real_images
from .data.labels import has_unlabeled, label_counts
from .distill.context import Context, Log, quiet
from .distill.sources import (
    TeacherModel,
    build_teacher,
    check_hint,
    check_teacher,
    check_teacher_source,
    split_tta,
    teacher_data,
    teacher_is_trained,
    teacher_logits_for,
    teacher_name,
    teacher_stem,
    train_teacher,
)
from .distill.students import (
    baseline_cache_dir,
    cached_baseline,
    keep_baseline,
    train_student,
    unit_record,
)
from .distill.teacher import Distillation, OnnxTeacher, TorchTeacher, finite_views, tta_accuracies
from .distill.train import (
    Reporter,
    check_optimizer,
    evaluate,
    remove_training_state,
    resolve_device,
    selection_proxy,
)
from .distill.unlabeled import apply_labels, labels_section, pseudo_labeled, teacher_top1
from .envinfo import environment, git_commit, now_iso, usable_cores
from .errors import ConfigError, GateError, StateError
from .export import TARGETS
from .export.onnx import export_onnx, save_self_contained
from .files import atomic_write_json, read_json, staged_file
from .models.builders import ModelSpec, build_model, check_arch, count_flops, count_params
from .models.checkpoint import load_model, save_checkpoint
from .models.weights import load_weights, read_state_dict
from .outputs import staging_dir
from .report.entry import ModelEntry, entry_dicts
from .report.write import write_report
from .runs import SELECTION, commit_run_dir, open_run_dir, write_run_config
from .runtimes.base import load as load_model_file
from .runtimes.base import prediction_health, predictions, runtime_version
from .version import __version__

PARITY_SAMPLES = 256


def prepare(cfg: RunConfig, log: Log = quiet) -> Context:
    """Validate names and files (cheap checks first), set threads, load the data, build specs."""
    git_commit()  # stamp reports with the code this run starts from, even if the checkout moves on
    for target in cfg.targets:  # a missing runtime is one line now, not after an hour of training
        TARGETS.get(target).require()
    if cfg.quantize == "qat":
        from .export.qat import require_torchao

        require_torchao()
    check_teacher_source(cfg)
    if cfg.student != "auto":
        check_arch(cfg.student)
    if cfg.train.select_fraction < 1:
        check_arch(cfg.train.select_proxy)
    if cfg.student_weights:
        read_state_dict(cfg.student_weights)
    device = resolve_device(cfg.train.device)
    threads = cfg.threads or usable_cores()
    torch.set_num_threads(threads)
    data = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download, image_size=cfg.image_size,
                        crop_ratio=cfg.crop_ratio, data_mode=cfg.data_mode,
                        memory_budget=memory_budget(cfg.memory_budget) if cfg.memory_budget else None,
                        workers=cfg.workers)
    log(f"data: {data.name}: {len(data.y_train)} train / {len(data.y_test)} test, "
        f"input {list(data.input_shape)}, {data.num_classes} classes"
        + (f"; {data.source}" if data.name == "imagefolder" else "")
        + (f"; data mode: {data.mode_note}" if data.mode_note else ""))
    data = apply_labels(cfg, data, log)
    ts = None if cfg.teacher_is_onnx else ModelSpec(cfg.teacher, data.num_classes, data.input_shape,
                                                    cfg.teacher_dropout, teacher_stem(cfg))
    selection = None
    student = cfg.student
    if student == "auto":
        previous = staging_dir(Path(cfg.out)) / SELECTION if cfg.resume and cfg.out else None
        if previous is not None and previous.is_file():  # resume trains the student it started with
            selection = read_json(previous, "the interrupted run's student selection",
                                  "rerun without --resume to start afresh")
            if not isinstance(selection.get("chosen"), str) or not isinstance(selection.get("candidates"), list):
                raise StateError(f"{str(previous)!r} is not a student selection; rerun without --resume")
            log(f"student: {selection['chosen']}, as chosen by the interrupted run")
        else:
            selection = select_for_run(cfg, data, log)
        student = selection["chosen"]
        log(f"student: {student} (the most FLOPs within the budget, of {len(selection['candidates'])} measured)")
    ss = ModelSpec(student, data.num_classes, data.input_shape, cfg.student_dropout, cfg.cifar_stem)
    ctx = Context(cfg, data, ts, ss, threads, device, selection)
    ctx.train_config("teacher")  # resolves augmentation names against the data
    if cfg.teacher_view_cache and (augment := ctx.train_config("student").augment) != "none":
        finite_views(augment)  # fails now, before a teacher is trained
    student = build_model(ss, log=log)  # fails now, before anything is written, if it cannot take the input
    student_train, teacher_train = ctx.train_config("student"), ctx.train_config("teacher")
    check_optimizer(student, student_train)
    if student_train.select_fraction < 1:  # the proxy, built only for the check
        selection_proxy(student_train, data)
    if not teacher_is_trained(cfg):
        if teacher_train.optimizer == "muon":  # built only for the check
            check_optimizer(build_model(ts), teacher_train)
        if teacher_train.select_fraction < 1:
            selection_proxy(teacher_train, data)
    if cfg.student_weights:
        load_weights(student, cfg.student_weights, ss.arch, "student weights")  # fits, or one line now
    return ctx


def _budgets(cfg: RunConfig):
    return (parse_latency_budget(cfg.latency_budget) if cfg.latency_budget else None,
            parse_size_budget(cfg.size_budget) if cfg.size_budget else None)


def select_for_run(cfg: RunConfig, data: Dataset, log: Log) -> dict:
    """``--student auto``: measure the candidates as ``kdexport select`` does, in the form the run ships."""
    from .bench.select import select_student

    budget, size = _budgets(cfg)
    int8 = cfg.quantize if cfg.quantize != "none" else None
    log(f"student: measuring candidates for {budget or ''}{' and ' if budget and size else ''}"
        f"{f'{size:,} bytes' if size else ''} ({cfg.budget_threads} thread(s), batch {cfg.budget_batch}"
        f"{', ' + int8 + ' INT8' if int8 else ''})")
    return select_student(data, candidates=list(cfg.candidates) or None, budget=budget, size_budget=size,
                          margin=cfg.budget_margin,
                          threads=cfg.budget_threads, batch=cfg.budget_batch, int8=int8, cifar_stem=cfg.cifar_stem,
                          log=log)


def check_budget(ctx: Context, models: dict, out: Path) -> dict | None:
    """Time the shipped student (INT8 when kept, else FP32) again, as the budget is defined; the verdict."""
    cfg = ctx.cfg
    budget, size = _budgets(cfg)
    if budget is None and size is None:
        return None
    entry = models.get("student_int8") if isinstance(models.get("student_int8"), ModelEntry) else models["student"]
    r = bench_onnx(out / entry.onnx_path, ctx.data, [cfg.budget_batch], threads=cfg.budget_threads,
                   warmup=cfg.bench_warmup, iters=cfg.bench_iters, max_seconds=cfg.bench_max_seconds,
                   rounds=cfg.bench_rounds)
    lat = r["latency_ms"][f"batch_{cfg.budget_batch}"]
    met_time = budget is None or lat[budget.stat] <= budget.ms
    met_size = size is None or entry.onnx_bytes <= size
    return {"file": entry.onnx_path, "p50_ms": lat["p50"], "p90_ms": lat["p90"], "onnx_bytes": entry.onnx_bytes,
            "latency_budget_ms": budget.ms if budget else None, "stat": budget.stat if budget else None,
            "size_budget_bytes": size, "met": met_time and met_size}


def onnx_metadata(cfg: RunConfig, data: Dataset, role: str, spec: ModelSpec, accuracy: float,
                  kd: KDConfig | None = None) -> dict:
    """What an app needs from the file alone: labels, input shape, normalization, provenance."""
    return {
        "kdexport_version": __version__,
        "role": role,
        "arch": spec.arch,
        "dataset": data.name,
        "class_names": data.class_names,
        "input_shape": list(data.input_shape),
        "input_layout": "NCHW",
        "input_range": "pixels scaled to [0, 1], then (x - mean) / std per channel",
        "mean": list(data.mean),
        "std": list(data.std),
        "preprocess": data.geometry.to_dict(),
        "accuracy_torch": accuracy,
        "distillation": ({**dataclasses.asdict(kd), "teacher": teacher_name(cfg)} if kd else None),
    }


def export_entry(ctx: Context, model: torch.nn.Module, spec: ModelSpec, role: str, out: Path, *,
                 history: list[dict], kd: KDConfig | None = None, log: Log = quiet,
                 train_seconds: float | None = None) -> ModelEntry:
    """Checkpoint and export one model (with parity), and measure its accuracy; return its report entry, whose
    latency :func:`time_models` fills in, together with every other model of the report.

    Paths in the entry are relative to ``out`` (the report's folder)."""
    cfg, data = ctx.cfg, ctx.data
    model = model.cpu().eval()
    acc_torch = evaluate(model, data, "test")["accuracy"]
    save_checkpoint(out / "checkpoints" / f"{role}.pt", model, spec, role=role, config=cfg.to_dict(),
                    metrics={"accuracy": acc_torch}, history=history)
    log(f"{role}: exporting to ONNX and checking parity with onnxruntime")
    onnx_path = out / "onnx" / f"{role}.onnx"
    parity_x = data.normalize(data.x_test[data.test_sample(PARITY_SAMPLES)])
    res = export_onnx(model, onnx_path, parity_x, rtol=cfg.parity_rtol, atol=cfg.parity_atol,
                      metadata=onnx_metadata(cfg, data, role, spec, acc_torch, kd))
    pred = predictions(load_model_file(onnx_path, ctx.threads), data)
    accuracy_onnx = float((pred == data.y_test.numpy()).sum()) / max(len(pred), 1)
    health = prediction_health(pred, data.y_test.numpy(), data.num_classes)
    if health["flag"]:
        log(f"warning: {role} {health['flag']}")
    return ModelEntry(
        arch=spec.arch, spec=spec.to_dict(), params=count_params(model), flops=count_flops(model, data.input_shape),
        checkpoint=f"checkpoints/{role}.pt", onnx_path=f"onnx/{role}.onnx", onnx_bytes=res.onnx_bytes,
        accuracy_torch=acc_torch, accuracy_onnx=accuracy_onnx, parity=res.parity(), predictions=health,
        epochs=max((r["epoch"] for r in history), default=0),  # an ensemble's: each member's
        history=history, train_seconds=train_seconds)


def onnx_teacher_entry(ctx: Context, teacher: OnnxTeacher, out: Path, accuracy: float) -> ModelEntry:
    """An ONNX teacher's report entry: the file copied beside the students; its accuracy measured by
    :func:`check_teacher`, its latency by :func:`time_models` on real images normalized as it expects."""
    import onnx

    rel = "onnx/teacher.onnx"
    with staged_file(out / rel) as tmp:
        save_self_contained(teacher.path, tmp, data_name="teacher.onnx.data")
    graph = onnx.load(str(out / rel), load_external_data=False).graph
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    params = sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type in floats)  # not shape constants
    return ModelEntry(arch=teacher_name(ctx.cfg), params=params, onnx_path=rel,
                      onnx_bytes=(out / rel).stat().st_size, accuracy_torch=None, accuracy_onnx=accuracy, epochs=0,
                      history=[])


def teacher_entry(ctx: Context, teacher: TeacherModel, out: Path, *, accuracy: float, history: list[dict],
                  log: Log = quiet, train_seconds: float | None = None) -> ModelEntry:
    if isinstance(teacher, OnnxTeacher):
        return onnx_teacher_entry(ctx, teacher, out, accuracy)
    # exported and measured as it takes its inputs: a trained teacher's own normalization (--teacher-mean/-std)
    return export_entry(dataclasses.replace(ctx, data=teacher_data(ctx)), teacher, ctx.teacher_spec, "teacher",
                        out, history=history, log=log, train_seconds=train_seconds)


def teacher_inputs(ctx: Context, teacher: TeacherModel):
    """Real test images as the teacher takes them, for timing (its own normalization)."""
    if isinstance(teacher, OnnxTeacher):
        return lambda b: teacher.normalize(real_images(ctx.data, b))
    return teacher_data(ctx)


TWINS = (("baseline", "student"),)  # entries of one graph: their latencies must agree within the spread


def time_models(ctx: Context, out: Path, models: dict[str, ModelEntry | dict], *, teacher: TeacherModel | None = None,
                eager: dict[str, torch.nn.Module] | None = None, files: list | None = None, log: Log = quiet) -> dict:
    """Time every model of the report together, in interleaved rounds (``kdexport.bench.timing.interleaved``): each
    entry's ``latency_ms`` (p50 = the median of its round p50s, with their spread) and throughput, the eager
    student's beside it, and what the rounds say about the report as a whole: the speed-ups from the same rounds
    with their spread, and a warning for twins (same graph: baseline and student) whose p50s disagree beyond
    their spreads, since that number is then the machine's, not the models'. Returns ``{"speedups", "warnings"}``."""
    cfg = ctx.cfg
    entries = {role: e for role, e in models.items() if isinstance(e, ModelEntry) and e.onnx_path}
    timed = {}
    for role, e in entries.items():
        inputs = teacher_inputs(ctx, teacher) if role == "teacher" and teacher is not None else ctx.data
        timed[role] = (onnx_runner(out / e.onnx_path, ctx.threads), inputs)
    for role, model in (eager or {}).items():
        timed[f"{role} (eager)"] = (eager_runner(model), ctx.data)
    kept = [f for f in files or [] if f.timed]  # the student's files for other runtimes (--targets)
    for f in kept:
        timed[f"student {f.target} {f.precision}"] = (file_runner(out / f.path, ctx.threads), ctx.data)
    batches = sorted({1, cfg.bench_batch})
    rounds = min(cfg.bench_rounds, cfg.bench_iters)
    log(f"timing {len(timed)} models, each in its runtime ({ctx.threads} thread{'s' if ctx.threads > 1 else ''}): "
        f"{rounds} interleaved rounds at batch {' and '.join(map(str, batches))}")
    t0 = time.perf_counter()
    with torch_threads(ctx.threads):
        res = interleaved(timed, batches, warmup=cfg.bench_warmup, iters=cfg.bench_iters,
                          max_seconds=cfg.bench_max_seconds, rounds=cfg.bench_rounds)
    log(f"timed in {time.perf_counter() - t0:.1f} s")
    for role, e in entries.items():
        e.latency_ms, e.throughput_per_s = res[role]["latency_ms"], res[role]["throughput_per_s"]
    for role in eager or {}:
        r = res[f"{role} (eager)"]
        entries[role].torch_eager = {"latency_ms": r["latency_ms"], "throughput_per_s": r["throughput_per_s"]}
    for f in kept:
        r = res[f"student {f.target} {f.precision}"]
        f.latency_ms, f.throughput_per_s = r["latency_ms"], r["throughput_per_s"]
        f.extra["speedup_vs_onnx_fp32_batch_1"] = ratio(res["student"], r) if "student" in res else None
    one_thread = one_thread_latency(ctx, out, entries, kept, log) if kept and ctx.threads > 1 else {}
    speedups = {}
    for role in entries:
        if role != "teacher" and "teacher" in entries:
            speedups[f"{role}_vs_teacher_batch_1"] = ratio(res["teacher"], res[role])
    if "student_int8" in entries and "student" in entries:
        speedups["student_int8_vs_fp32_batch_1"] = sp = ratio(res["student"], res["student_int8"])
        entries["student_int8"].quantization.update(speedup_vs_fp32_batch_1=sp["median"],
                                                    speedup_vs_fp32_batch_1_spread=sp["spread"],
                                                    faster_than_fp32=sp["median"] > 1)
    warnings = []
    for a, b in TWINS:
        if a in entries and b in entries and entries[a].arch == entries[b].arch:
            for batch in batches:
                if disagree(res[a], res[b], batch):
                    (la, ha), (lb, hb) = (res[x]["latency_ms"][f"batch_{batch}"]["spread"] for x in (a, b))
                    warnings.append(
                        f"{a} and {b} share one graph but their batch-{batch} p50s disagree beyond their spreads "
                        f"({la:.3f}-{ha:.3f} ms vs {lb:.3f}-{hb:.3f} ms): the machine was not steady while they "
                        "were timed, so these latencies are not properties of the models (--bench-rounds more, or "
                        "time them again with kdexport bench)")
    for w in warnings:
        log(f"warning: {w}")
    return {"speedups": speedups, "warnings": warnings, "one_thread": one_thread}


def one_thread_latency(ctx: Context, out: Path, entries: dict, kept: list, log: Log) -> dict:
    """The student's files (ONNX and every ``--targets`` file) at batch 1 on one thread, in their own interleaved
    rounds: phones give an app one or two cores, and runtimes scale differently. ``{name: batch-1 latency}``."""
    cfg = ctx.cfg
    timed = {role: (onnx_runner(out / entries[role].onnx_path, 1), ctx.data)
             for role in ("student", "student_int8") if role in entries}
    for f in kept:
        runner = file_runner(out / f.path, 1)
        if runner.threads != 1:  # ExecuTorch: its pool was sized by the first program this process loaded
            f.extra["latency_ms_1_thread_missing"] = (f"{f.runtime}'s threadpool is process-wide and was sized to "
                                                      f"{runner.threads} threads by the first program loaded here")
            continue
        timed[f"student {f.target} {f.precision}"] = (runner, ctx.data)
    log(f"timing the student's {len(timed)} files on 1 thread at batch 1")
    with torch_threads(1):
        res = interleaved(timed, [1], warmup=cfg.bench_warmup, iters=cfg.bench_iters,
                          max_seconds=cfg.bench_max_seconds, rounds=cfg.bench_rounds)
    for f in kept:
        if f"student {f.target} {f.precision}" in res:
            f.extra["latency_ms_1_thread"] = res[f"student {f.target} {f.precision}"]["latency_ms"]["batch_1"]
    return {name: r["latency_ms"]["batch_1"] for name, r in res.items()}


def report_header(ctx: Context, final: Path) -> dict:
    cfg_dict = ctx.cfg.to_dict()
    cfg_dict["out"] = str(final)
    return {"kdexport_version": __version__, "created": now_iso(), "config": cfg_dict,
            "environment": environment(ctx.threads), "dataset": ctx.data.info()}


def comparison(models: dict[str, ModelEntry], timing: dict | None = None) -> dict:
    """The KD gain, and the student against the teacher; the speed-up from the rounds both were timed in (with the
    spread of the per-round ratios) when ``timing`` (:func:`time_models`) has it."""
    t, s, b = models["teacher"], models["student"], models.get("baseline")  # no baseline: no label to train one
    speedup = (timing or {}).get("speedups", {}).get("student_vs_teacher_batch_1")
    return {
        "kd_gain_points": (s.accuracy_onnx - b.accuracy_onnx) * 100.0 if b else None,
        "kd_gain_points_torch": (s.accuracy_torch - b.accuracy_torch) * 100.0 if b else None,
        "student_vs_teacher": {
            "speedup_batch_1": speedup["median"] if speedup else t.p50(1) / s.p50(1),
            **({"speedup_batch_1_spread": speedup["spread"]} if speedup else {}),
            "compression_params": t.params / s.params,
            "compression_bytes": t.onnx_bytes / s.onnx_bytes,
            "accuracy_gap_points": (t.accuracy_onnx - s.accuracy_onnx) * 100.0,
        },
    }


def models_report(ctx: Context, final: Path, models: dict[str, ModelEntry | dict], timing: dict | None = None,
                  **extra) -> dict:
    """report.json's content: header, the model entries, the KD / compression comparison, and how the latencies
    were measured (``timing``: rounds, the speed-ups from them, warnings)."""
    entries = {k: v for k, v in models.items() if isinstance(v, ModelEntry)}
    how = {"timing": {"rounds": min(ctx.cfg.bench_rounds, ctx.cfg.bench_iters), **timing}} if timing else {}
    return {**report_header(ctx, final), "models": entry_dicts(models), **comparison(entries, timing), **how,
            **extra}


def distill_export(cfg: RunConfig, *, reporter: Reporter | None = None, log: Log = quiet) -> dict | None:
    """Run the whole job; return the report (also written to OUT/report.json).

    Under torchrun every rank trains; only rank 0 writes, exports, benchmarks and returns the report."""
    from .distributed import barrier, init_from_env, is_main, world

    t_start = time.perf_counter()
    init_from_env(cfg.train.device)
    main = is_main()
    if not main:
        reporter, log = None, quiet
    ctx = prepare(cfg, log)
    if world()[1] > 1 and not cfg.threads:
        ctx.threads = max(1, ctx.threads // world()[1])
        torch.set_num_threads(ctx.threads)
    teacher = build_teacher(ctx)  # validates a teacher checkpoint before anything is written
    check_hint(ctx, teacher)
    final = staging = None
    if main:
        final, staging = open_run_dir(cfg)
        if ctx.selection is not None:
            atomic_write_json(staging / SELECTION, ctx.selection)
    barrier()
    # Every rank reads the per-epoch state on --resume (same folder, shared filesystem); rank 0 writes it.
    state_root = staging if main else (staging_dir(Path(cfg.out)) if cfg.resume and cfg.out else None)

    def state(role: str) -> Path | None:
        return state_root / "train-state" / f"{role}.pt" if state_root is not None else None

    try:
        t0 = time.perf_counter()
        t_hist = train_teacher(ctx, teacher, reporter, log, state("teacher"))
        t_secs = time.perf_counter() - t0
        t_acc, tta = split_tta(ctx, teacher, check_teacher(ctx, teacher, log))
        source = teacher_logits_for(ctx, teacher, log)
        trained = {}
        no_labels = label_counts(ctx.data)["labeled"] == 0  # no baseline: nothing teaches it
        cached = None if no_labels else baseline_cache_dir(ctx, cfg.train.seed)
        reused = cached_baseline(cached)
        if reused is not None:
            model, _, _ = load_model(cached / "model.pt", expect=ctx.student_spec)
            trained["baseline"] = (model.eval(), reused["history"], reused["train_seconds"], None)
            log(f"baseline: reused from the baseline cache ({cached}; --no-baseline-cache trains it again)")
        top1 = teacher_top1(ctx, teacher) if has_unlabeled(ctx.data) else None
        roles = [("baseline", None, None)] * (not no_labels) + [("student", cfg.kd, None)]
        if top1 is not None:  # the third fair student: the teacher's top-1 as hard labels where there are none
            roles.insert(1, ("pseudo_label", None, pseudo_labeled(ctx, top1)))
        for role, kd, data in roles:
            if role in trained:
                continue
            t0 = time.perf_counter()
            model, hist = train_student(ctx, seed=cfg.train.seed, distill=Distillation(source, kd) if kd else None,
                                        label=role, reporter=reporter, state_path=state(role), data=data)
            trained[role] = (model, hist, time.perf_counter() - t0, kd)
        if not main:
            return None
        models: dict[str, ModelEntry | dict] = {}
        models["teacher"] = teacher_entry(ctx, teacher, staging, accuracy=t_acc, history=t_hist, log=log,
                                          train_seconds=t_secs)
        for role, (model, hist, secs, kd) in trained.items():
            models[role] = export_entry(ctx, model, ctx.student_spec, role, staging, history=hist, kd=kd,
                                        log=log, train_seconds=secs)
        if cached is not None and reused is None:  # a freshly trained baseline, its accuracy measured on export
            model, hist, secs, _ = trained["baseline"]
            keep_baseline(cached, ctx, model, unit_record("baseline", cfg.train.seed, None,
                                                          models["baseline"].accuracy_torch, secs, hist))
        gate_error = None
        if cfg.quantize != "none":
            with tempfile.TemporaryDirectory(dir=staging) as tmp:  # --quantize qat: the fine-tuned students' files
                qat = (qat_students(ctx, trained["student"][0], Distillation(source, cfg.kd), Path(tmp), state,
                                    reporter, log) if cfg.quantize == "qat" else None)
                try:
                    models["student_int8"] = quantize_entry(ctx, models["student"], staging, log, qat=qat)
                except GateError as e:  # keep the run and its report; fail the command afterwards
                    gate_error = e
                    models["student_int8_rejected"] = {"error": str(e)}
        files = target_files(ctx, trained["student"][0], models, staging, log)
        timing = time_models(ctx, staging, models, teacher=teacher, eager={"student": trained["student"][0]},
                             files=files, log=log)
        extra = {"teacher_tta": tta} if tta else {}
        if top1 is not None:
            extra["labels"] = labels_section(ctx, top1, {r: trained[r][0] for r in ("baseline", "pseudo_label",
                                                                                      "student") if r in trained})
        if files:
            extra["runtimes"] = runtimes_section(ctx, models, files, timing)
        if reused is not None:
            extra["baseline_reused"] = reused["reused"]
        verdict = check_budget(ctx, models, staging)
        if verdict is not None:
            extra["budget"] = {**verdict, "selection": ctx.selection}
            if not verdict["met"] and gate_error is None:
                gate_error = GateError(
                    f"the shipped student {verdict['file']} misses its budget: {verdict['p50_ms']:.3f} ms p50, "
                    f"{verdict['p90_ms']:.3f} ms p90, {verdict['onnx_bytes']:,} bytes (budget "
                    f"{cfg.latency_budget or '-'}, size {cfg.size_budget or '-'}); the report is kept")
        report = models_report(ctx, final, models, timing, world_size=world()[1],
                               wall_seconds=time.perf_counter() - t_start, **extra)
        write_report(report, staging)
        write_run_config(staging, cfg)
        if cfg.package:
            from .report.package import package

            log("student: packaging for apps (kdexport package)")
            package(staging, staging / "package", data_dir=cfg.data_dir)
        commit_run_dir(staging, final)
    except BaseException as e:
        if main and staging is not None and staging.exists():
            if isinstance(e, KeyboardInterrupt):
                log(f"run interrupted; its partial state is kept in {staging} (rerun with --resume to continue)")
            else:  # stopped by a check or a failure, which the error line after this names
                log(f"run stopped; its partial state is kept in {staging} (--resume continues it once the cause "
                    "below is fixed)")
        raise
    log(f"wrote {final}/report.json and report.md")
    if gate_error is not None:
        raise gate_error
    return report


def target_files(ctx: Context, model: torch.nn.Module, models: dict, out: Path, log: Log = quiet) -> list:
    """``--targets`` beyond onnx: the distilled student's file for each runtime, FP32 and (with ``--quantize``)
    INT8, each proven (:mod:`kdexport.export.targets`); rows with an error were not kept."""
    if all(t == "onnx" for t in ctx.cfg.targets):
        return []
    from .export.targets import TargetJob, export_targets

    cfg, data, st = ctx.cfg, ctx.data, models["student"]
    meta = onnx_metadata(cfg, data, "student", ctx.student_spec, st.accuracy_torch, cfg.kd)
    job = TargetJob(model.cpu().eval(), out / st.onnx_path, out, "student",
                    data.normalize(data.x_test[data.test_sample(PARITY_SAMPLES)]), data, meta, st.accuracy_onnx,
                    cfg.quantize != "none", cfg.quant, cfg.parity_rtol, cfg.parity_atol, ctx.threads)
    return export_targets(cfg.targets, job, log)


def runtimes_section(ctx: Context, models: dict, files: list, timing: dict) -> dict:
    """The student as each runtime ships it: one row per runtime x precision (the ONNX files first), with its proof,
    accuracy, size and latency from the report's rounds; the fastest row within ``--max-accuracy-drop`` of the FP32
    ONNX file marked, as the deployment decision."""
    from .export.targets import TargetFile

    st = models["student"]
    one = timing.get("one_thread") or {}
    rows = [TargetFile("onnx", "fp32", "onnxruntime", runtime_version(st.onnx_path), st.onnx_path, st.onnx_bytes,
                       st.parity, st.accuracy_onnx, 0.0, latency_ms=st.latency_ms,
                       throughput_per_s=st.throughput_per_s,
                       extra={"latency_ms_1_thread": one["student"]} if "student" in one else {})]
    q = models.get("student_int8")
    if isinstance(q, ModelEntry):
        rows.append(TargetFile("onnx", "int8", "onnxruntime", runtime_version(q.onnx_path), q.onnx_path,
                               q.onnx_bytes, None, q.accuracy_onnx, (st.accuracy_onnx - q.accuracy_onnx) * 100,
                               note=f"onnxruntime {q.quantization.get('mode')} INT8", latency_ms=q.latency_ms,
                               throughput_per_s=q.throughput_per_s,
                               extra={"speedup_vs_onnx_fp32_batch_1": timing["speedups"].get(
                                   "student_int8_vs_fp32_batch_1"),
                                      **({"latency_ms_1_thread": one["student_int8"]} if "student_int8" in one
                                         else {})}))
    rows += files
    allowed = ctx.cfg.quant.max_accuracy_drop
    fit = [r for r in rows if r.kept and r.latency_ms and (r.accuracy_drop_points or 0.0) <= allowed]
    best = min(fit, key=lambda r: r.latency_ms["batch_1"]["p50"]) if fit else None
    return {"max_accuracy_drop": allowed, "threads": ctx.threads,
            "fastest": f"{best.target} {best.precision}" if best else None,
            "rows": [r.to_dict() for r in rows]}


def teacher_only(cfg: RunConfig, path: str | Path, *, resume: bool = False, reporter: Reporter | None = None,
                 log: Log = quiet) -> dict:
    """Train the teacher alone (no students), save it to ``path`` (reusable with ``--teacher-checkpoint``) and
    measure its test accuracy under each ``--teacher-tta`` mode in fp32; return the report. Its per-epoch state
    is kept beside ``path`` until the checkpoint is written, so ``resume`` continues an interrupted run."""
    if teacher_is_trained(cfg):
        raise ConfigError("a teacher-only run trains its teacher: drop --teacher-checkpoint, --teacher-weights or "
                          "the ONNX teacher")
    ctx = prepare(cfg, log)
    teacher = build_teacher(ctx)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = path.with_name(f"{path.stem}.state.pt")
    history = train_teacher(ctx, teacher, reporter, log, state_path=state, resume=resume)
    save_checkpoint(path, teacher, ctx.teacher_spec, role="teacher", config=cfg.to_dict(), history=history)
    remove_training_state(state)
    rows = tta_accuracies(TorchTeacher.for_data(teacher.to(ctx.device).eval(), ctx.data, ctx.device, "fp32"),
                          ctx.data)
    for row in rows:
        log(f"teacher: {row['accuracy'] * 100:.2f}% on the test split with --teacher-tta {row['tta']}")
    return {**report_header(ctx, path.parent),
            "teacher": {"arch": cfg.teacher, "checkpoint": str(path), "epochs": cfg.teacher_train().epochs,
                        "train_seconds": sum(h["seconds"] for h in history), "tta": rows, "history": history}}


def qat_students(ctx: Context, student: torch.nn.Module, distill: Distillation, tmp: Path, state, reporter, log: Log
                 ) -> dict:
    """``--quantize qat``: the distilled student fine-tuned as its INT8 network with the teacher, and its fair twin
    fine-tuned the same way on the labels alone (none without labels). Each one's fine-tuned weights are exported
    (parity-checked FP32 ONNX) into the caller's temporary folder ``tmp`` for the INT8 step.
    ``{role: {"qat", "onnx", "history", "seconds", "parity_x"}}``."""
    from .data.labels import labeled_view
    from .export.onnx import export_onnx
    from .export.qat import train_qat
    from .export.quantize import calibration_batches

    cfg = ctx.cfg
    calib = [torch.from_numpy(b) for b in calibration_batches(ctx.data, cfg.quant.calibration_samples)]
    parity_x = ctx.data.normalize(ctx.data.x_test[ctx.data.test_sample(PARITY_SAMPLES)])
    roles = [("student_qat", distill)] + [("student_qat_labels_only", None)] * (label_counts(ctx.data)["labeled"] > 0)
    done = {}
    for role, kd in roles:
        log(f"{role}: quantization-aware fine-tune, {cfg.qat_epochs} epochs "
            + ("with the teacher" if kd else "on the labels alone"))
        t0 = time.perf_counter()
        qat, hist = train_qat(student, ctx.data if kd else labeled_view(ctx.data), ctx.train_config("student"), calib,
                              distill=kd, label=role, per_tensor=cfg.quant.per_tensor, epochs=cfg.qat_epochs,
                              lr_scale=cfg.qat_lr_scale, reporter=reporter, state_path=state(role), resume=cfg.resume)
        secs = time.perf_counter() - t0
        path = tmp / f"{role}.onnx"
        export_onnx(qat.float_student(student), path, parity_x, rtol=cfg.parity_rtol, atol=cfg.parity_atol)
        done[role] = {"qat": qat, "onnx": path, "history": hist, "seconds": secs, "parity_x": parity_x}
    return done


def quantize_entry(ctx: Context, fp32: ModelEntry, out: Path, log: Log = quiet, qat: dict | None = None
                   ) -> ModelEntry:
    """INT8 copy of the exported student, accuracy-gated; timed with the others by :func:`time_models`, which also
    records its speed-up over the FP32 file from the same rounds. With ``qat`` (:func:`qat_students`), the
    quantization-aware fine-tuned weights go through the same static INT8 path (the same graph as PTQ), the file
    is checked against the fake-quantized student, and the labels-only twin is measured beside it."""
    from .export.qat import QAT_TOOL, qat_parity, qat_train_config
    from .export.quantize import quantize_onnx

    cfg = ctx.cfg
    mode = "static" if cfg.quantize == "qat" else cfg.quantize
    log(f"student: {cfg.quantize} INT8 quantization with onnxruntime")
    rel = "onnx/student.int8.onnx"
    latency = quick_p50(ctx.data, ctx.threads)
    extra = {}
    if qat:
        twin = qat.get("student_qat_labels_only")
        if twin:
            t = quantize_onnx(twin["onnx"], twin["onnx"].with_suffix(".int8.onnx"), ctx.data, mode=mode,
                              quant=dataclasses.replace(cfg.quant, max_accuracy_drop=100.0), threads=ctx.threads,
                              accuracy_fp32=fp32.accuracy_onnx, diagnose=False)
            twin = {"accuracy_int8": t.accuracy_int8, "drop_points": t.accuracy_drop_points,
                    "history": twin["history"], "train_seconds": twin["seconds"]}
        mine = qat["student_qat"]
        src = mine["onnx"]
    else:
        src = out / fp32.onnx_path
    q = quantize_onnx(src, out / rel, ctx.data, mode=mode, quant=cfg.quant, threads=ctx.threads,
                      accuracy_fp32=fp32.accuracy_onnx, latency=latency,
                      record={"qat": {"tool": QAT_TOOL, "epochs": cfg.qat_epochs}} if qat else None)
    if qat:
        parity = qat_parity(mine["qat"], out / rel, mine["parity_x"])
        train = qat_train_config(ctx.train_config("student"), cfg.qat_epochs, cfg.qat_lr_scale)
        extra = {"mode": "qat", "qat": {
            "tool": QAT_TOOL, "epochs": train.epochs, "lr": train.lr, "scheduler": train.scheduler,
            "per_tensor": cfg.quant.per_tensor, "parity": parity, "history": mine["history"],
            "train_seconds": mine["seconds"], "labels_only": twin,
            "teacher_gain_points": ((q.accuracy_int8 - twin["accuracy_int8"]) * 100 if twin else None)}}
    return ModelEntry(
        arch=fp32.arch, spec=fp32.spec, params=fp32.params, flops=fp32.flops, onnx_path=rel,
        onnx_bytes=q.onnx_bytes, accuracy_torch=None, accuracy_onnx=q.accuracy_int8,
        quantization={**q.to_dict(), **extra, "path": rel, "size_ratio_vs_fp32": q.onnx_bytes / q.fp32_bytes})
