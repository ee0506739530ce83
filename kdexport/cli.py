"""Typer CLI: commands are adapters. They build a config, call the library, and turn a
KdexportError into one line on stderr and a non-zero exit code."""

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from . import __version__
from .config import CALIBRATION_HELP, DEFAULT_CALIBRATION, EQUALIZE_HELP
from .errors import KdexportError

app = typer.Typer(name="kdexport", add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  pretty_exceptions_enable=False,
                  help="Distil a small student from a big teacher, export both to ONNX, and "
                       "measure accuracy, size and CPU latency.")
console = Console(stderr=True)
out_console = Console(width=None if sys.stdout.isatty() else 150)  # logs: no truncated columns


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    try:
        yield
    except KdexportError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True, markup=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None


class RichReporter:
    """Training progress: one bar per model with live loss and accuracy."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None
        self.label = ""

    def start(self, label: str, total_steps: int) -> None:
        self.label = label
        self.task = self.progress.add_task(label, total=total_steps, metrics="")

    def step_n(self, n: int, metrics: dict[str, float]) -> None:
        self.progress.update(self.task, advance=n,
                             metrics=f"loss {metrics['loss']:.4f}  acc {metrics['acc']:.3f}")

    def epoch(self, record: dict[str, float]) -> None:
        self.progress.update(self.task, description=f"{self.label} ep {record['epoch']:.0f}",
                             metrics=f"loss {record['train_loss']:.4f}  test acc "
                                     f"{record['test_accuracy']:.4f}")

    def finish(self) -> None:
        pass


def make_progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
                    console=console, transient=False)


def _log(msg: str) -> None:
    console.print(f"[dim]>[/] {msg}", highlight=False, markup=True)


def version_callback(value: bool) -> None:
    if value:
        out_console.print(f"kdexport {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=version_callback,
                                                 is_eager=True, help="Print the version.")] = False) -> None:
    pass


# Options shared by distill-export and sweep, declared once: (name, type, default, typer.Option).
RUN_OPTIONS: list[tuple[str, Any, Any, Any]] = [
    ("teacher", str, "mlp:1200,1200", typer.Option(help="Teacher model: mlp:SIZES (e.g. mlp:1200,1200) or a torchvision name.")),
    ("student", str, "mlp:14", typer.Option(help="Student model: mlp:SIZES (e.g. mlp:1200,1200) or a torchvision name.")),
    ("dataset", str, "digits", typer.Option(help="digits (bundled), mnist, cifar10 or imagefolder.")),
    ("data_dir", Optional[Path], None, typer.Option(help="Local dataset folder (default: $KDEXPORT_DATA_DIR or ~/.cache/kdexport/data).")),
    ("download", bool, True, typer.Option(help="Download mnist/cifar10 when not found locally.")),
    ("image_size", Optional[int], None, typer.Option(help="imagefolder: resize images to this square size.")),
    ("augment", str, "auto", typer.Option(help="Training augmentation: auto (crop-flip for RGB data, else none), none, crop-flip, shift2.")),
    ("teacher_augment", Optional[str], None, typer.Option(help="The teacher's augmentation, if different.")),
    ("soft_loss", str, "kl", typer.Option(help="Soft loss: kl (Hinton) or mse (logit matching).")),
    ("epochs", int, 30, typer.Option(help="Epochs for every model (baseline and student always match).")),
    ("teacher_epochs", Optional[int], None, typer.Option(help="Override the teacher's epochs.")),
    ("teacher_cache", bool, True, typer.Option(help="Without augmentation, keep the teacher's logits on disk ($KDEXPORT_CACHE_DIR or ~/.cache/kdexport) and reuse them across runs, seeds and sweep cells.")),
    ("batch_size", int, 64, typer.Option(help="Training batch size.")),
    ("optimizer", str, "adam", typer.Option(help="adam or sgd (momentum, Nesterov).")),
    ("lr", float, 3e-3, typer.Option(help="Peak learning rate.")),
    ("weight_decay", float, 0.0, typer.Option(help="Weight decay.")),
    ("momentum", float, 0.9, typer.Option(help="SGD momentum.")),
    ("scheduler", str, "cosine", typer.Option(help="Learning-rate schedule: cosine, onecycle or none.")),
    ("device", str, "auto", typer.Option(help="auto, cpu or cuda (training only; benchmarks run on CPU).")),
    ("teacher_dropout", float, 0.5, typer.Option(help="Dropout between MLP hidden layers of the teacher.")),
    ("student_dropout", float, 0.0, typer.Option(help="Dropout between MLP hidden layers of the student.")),
    ("cifar_stem", bool, False, typer.Option(help="torchvision CNNs: 3x3 stride-1 stem, no max-pool (for 32x32 inputs).")),
    ("pretrained", bool, False, typer.Option(help="Start the teacher from torchvision's pretrained weights (needs network once).")),
    ("teacher_checkpoint", Optional[Path], None, typer.Option(help="Use this trained teacher (a kdexport checkpoint) instead of training one.")),
    ("bench_batch", int, 32, typer.Option(help="The larger batch size to benchmark, beside batch 1.")),
    ("bench_iters", int, 100, typer.Option(help="Timed runs per latency measurement.")),
    ("threads", Optional[int], None, typer.Option(help="CPU threads for training and inference (default: all usable cores).")),
    ("parity_atol", float, 1e-3, typer.Option(help="Max abs logit difference allowed between onnxruntime and PyTorch.")),
    ("quantize", str, "none", typer.Option(help="Also make an INT8 student with onnxruntime: none, static (QDQ, calibrated; CNNs) or dynamic (MLPs).")),
    ("max_accuracy_drop", float, 1.0, typer.Option(help="INT8: reject the quantized model if it loses more accuracy points than this.")),
    ("calibration_samples", int, 300, typer.Option(help="INT8 static: training images used for calibration.")),
    ("calibration", str, DEFAULT_CALIBRATION, typer.Option(help=f"INT8 static activation ranges. {CALIBRATION_HELP}.")),
    ("equalize", bool, False, typer.Option(help=EQUALIZE_HELP)),
    ("out", Optional[Path], None, typer.Option(help="Output folder (default: runs/<command>-<timestamp>).")),
    ("overwrite", bool, False, typer.Option(help="Replace an existing --out folder.")),
    ("resume", bool, False, typer.Option(help="Continue an interrupted run with the same --out and options (per-epoch state).")),
]


def with_run_options(fn: Callable) -> Callable:
    """Append RUN_OPTIONS to a command's signature; the command receives them in ``**opts``."""
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                               annotation=Annotated[typ, opt]) for name, typ, default, opt in RUN_OPTIONS]
    fn.__signature__ = sig.replace(parameters=own + extra)
    return fn


def build_config(opts: dict, *, temperature: float = 4.0, soft_weight: float = 0.5, scale_t2: bool = True,
                 seed: int = 0):
    from .config import KDConfig, RunConfig, TrainConfig

    o = {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()}
    train = TrainConfig(**{k: o.pop(k) for k in ("epochs", "batch_size", "optimizer", "lr", "weight_decay",
                                                  "momentum", "scheduler", "device")}, seed=seed)
    kd = KDConfig(temperature=temperature, soft_weight=soft_weight, scale_t2=scale_t2, soft_loss=o.pop("soft_loss"))
    return RunConfig(kd=kd, train=train, **o)


def print_summary(report: dict) -> None:
    from .report import summary_header, summary_rows

    cfg = report["config"]
    table = Table(title=f"{report['dataset']['name']}: {cfg['teacher']} -> {cfg['student']}")
    keep = [0, 2, 4, 6, 7, 10, 11]  # model, acc, params, size, p50@1, speed-up, compression
    header = summary_header(report)
    for i in keep:
        table.add_column(header[i], no_wrap=True)
    for row in summary_rows(report):
        table.add_row(*[row[i] for i in keep])
    out_console.print(table)


@app.command("distill-export")
@with_run_options
def distill_export_cmd(
    temperature: Annotated[float, typer.Option("--temperature", "-T", help="Distillation temperature T > 0.")] = 4.0,
    soft_weight: Annotated[float, typer.Option(help="beta: weight of the soft (KD) loss; the hard CE weight is 1 - beta.")] = 0.5,
    scale_t2: Annotated[bool, typer.Option("--scale-t2/--no-scale-t2", help="Multiply the soft loss by T^2 (Hinton et al.).")] = True,
    seed: Annotated[int, typer.Option(help="Seed for initialization, data order and augmentation.")] = 0,
    **opts: Any,
) -> None:
    """Train a teacher, a baseline student and a distilled student; export all three to ONNX
    (with a parity check); benchmark them with onnxruntime; write report.json and report.md."""
    from .pipeline import distill_export

    with errors_to_exit():
        cfg = build_config(opts, temperature=temperature, soft_weight=soft_weight, scale_t2=scale_t2, seed=seed)
        from .distributed import shutdown

        try:
            with make_progress() as progress:
                report = distill_export(cfg, reporter=RichReporter(progress), log=_log)
        finally:
            shutdown()  # leave the torchrun process group cleanly (no-op otherwise)
        if report is None:  # a non-zero torchrun rank: rank 0 reports
            return
        print_summary(report)
        out_console.print(f"KD gain: {report['kd_gain_points']:+.2f} points; report: "
                          f"{Path(report['config']['out']) / 'report.md'}")


@app.command("sweep")
@with_run_options
def sweep_cmd(
    temperature: Annotated[str, typer.Option("--temperature", "-T", help="Temperatures, comma-separated.")] = "2,4,8",
    soft_weight: Annotated[str, typer.Option(help="Soft-loss weights beta, comma-separated.")] = "0.5,0.9",
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated; each cell is mean +/- std over them.")] = "0,1,2",
    scale_t2: Annotated[str, typer.Option(help="T^2 scaling of the soft loss: on, off, or on,off for both.")] = "on",
    **opts: Any,
) -> None:
    """Grid over T x beta (x T^2 scaling) x seeds with a fair baseline per seed. The teacher is
    trained once; a rerun with the same --out skips finished cells. Writes sweep.json, sweep.md,
    heatmap.png, and best/ (the best cell exported and benchmarked like distill-export)."""
    from .sweep import Grid, parse_floats, parse_ints, parse_switches, run_sweep

    with errors_to_exit():
        grid = Grid(parse_floats(temperature, "--temperature"), parse_floats(soft_weight, "--soft-weight"),
                    parse_ints(seeds, "--seeds"), parse_switches(scale_t2, "--scale-t2"))
        cfg = build_config(opts, seed=grid.seeds[0])
        with make_progress() as progress:
            result = run_sweep(cfg, grid, reporter=RichReporter(progress), log=_log)
        b = result["best"]
        out_console.print(f"best cell {b['cell']}: {b['mean'] * 100:.2f} ± {b['std'] * 100:.2f}% vs baseline "
                          f"{result['baseline']['mean'] * 100:.2f} ± {result['baseline']['std'] * 100:.2f}% "
                          f"(KD gain {b['kd_gain_points']:+.2f} points); table: {result['config']['out']}/sweep.md")


DatasetOpt = Annotated[Optional[str], typer.Option(help="Dataset for accuracy/calibration (default: the one named in the model's metadata).")]
DataDirOpt = Annotated[Optional[Path], typer.Option(help="Local dataset folder.")]


def _dataset_for(model: Path, dataset: Optional[str], data_dir: Optional[Path], required: bool):
    from .data import load_dataset
    from .errors import DataError
    from .export import read_metadata

    if dataset is None:
        try:
            dataset = read_metadata(model).get("dataset") if model.is_file() else None
        except Exception:
            dataset = None
    if dataset is None:
        if required:
            raise DataError(f"{model.name} names no dataset in its metadata; pass --dataset (and --data-dir)")
        return None
    return load_dataset(dataset, data_dir, download=False)


@app.command("quantize")
def quantize_cmd(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX classifier to quantize.")],
    out: Annotated[Path, typer.Option(help="Where to write the INT8 model.")],
    mode: Annotated[str, typer.Option(help="static (QDQ, calibrated; for CNNs) or dynamic (for MLPs).")] = "static",
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    calibration_samples: Annotated[int, typer.Option(help="Training images used for static calibration.")] = 300,
    max_accuracy_drop: Annotated[float, typer.Option(help="Reject (exit 1, no file) if accuracy drops more than this many points.")] = 1.0,
    reduce_range: Annotated[Optional[bool], typer.Option("--reduce-range/--no-reduce-range", help="7-bit weights; default: on for CPUs without VNNI.")] = None,
    calibration: Annotated[str, typer.Option(help=f"Static activation ranges. {CALIBRATION_HELP}.")] = DEFAULT_CALIBRATION,
    equalize: Annotated[bool, typer.Option(help=EQUALIZE_HELP)] = False,
) -> None:
    """INT8-quantize an ONNX classifier with onnxruntime and check its accuracy against FP32."""
    from .quantize import quantize_onnx

    with errors_to_exit():
        from .benchcmd import inspect_classifier

        inspect_classifier(model)
        data = _dataset_for(model, dataset, data_dir, required=True)
        r = quantize_onnx(model, out, data, mode=mode, calibration_samples=calibration_samples,
                          max_accuracy_drop=max_accuracy_drop, reduce_range=reduce_range, calibration=calibration,
                          equalize=equalize)
        out_console.print(f"{r.mode} INT8: accuracy {r.accuracy_int8 * 100:.2f}% (FP32 {r.accuracy_fp32 * 100:.2f}%, "
                          f"drop {r.accuracy_drop_points:.2f} points), {r.onnx_bytes:,} bytes "
                          f"({r.onnx_bytes / r.fp32_bytes * 100:.0f}% of FP32) -> {out}")


@app.command("bench")
def bench_cmd(
    models: Annotated[list[Path], typer.Argument(help="One or more ONNX image classifiers.")],
    out: Annotated[Path, typer.Option(help="Folder for bench.json, bench.md and pareto.png.")] = Path("runs/bench"),
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,32",
    threads: Annotated[str, typer.Option(help="Comma-separated intra-op thread counts (default: usable cores).")] = "",
    iters: Annotated[int, typer.Option(help="Timed runs per measurement (after warm-up).")] = 100,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs.")] = 10,
    max_seconds: Annotated[Optional[float], typer.Option(help="Time budget per measurement; stops early once spent.")] = None,
    graph_opt: Annotated[str, typer.Option(help="onnxruntime graph optimization: none, basic, extended, all.")] = "all",
    dataset: Annotated[Optional[str], typer.Option(help="Measure accuracy on this dataset's test split too.")] = None,
    data_dir: DataDirOpt = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="A kdexport checkpoint to time under PyTorch eager for comparison.")] = None,
    input_shape: Annotated[Optional[str], typer.Option(help="C,H,W for models whose input size is dynamic.")] = None,
) -> None:
    """Latency (p50/p90/p99, throughput) of any ONNX image classifier under onnxruntime, and accuracy given data."""
    from .benchcmd import bench_models, write_bench
    from .envinfo import usable_cores
    from .sweep import parse_ints

    with errors_to_exit():
        from .errors import ConfigError

        if graph_opt not in ("none", "basic", "extended", "all"):
            raise ConfigError(f"graph optimization must be none, basic, extended or all, got {graph_opt!r}")
        data = None
        if dataset:
            from .data import load_dataset

            data = load_dataset(dataset, data_dir, download=False)
        r = bench_models(models, batches=sorted(set(parse_ints(batch_sizes, "--batch-sizes"))),
                         threads=list(parse_ints(threads, "--threads")) or [usable_cores()], iters=iters,
                         warmup=warmup, max_seconds=max_seconds, graph_opt=graph_opt, data=data, checkpoint=checkpoint,
                         input_shape=list(parse_ints(input_shape, "--input-shape")) if input_shape else None)
        write_bench(r, out)
        from .benchcmd import to_markdown

        out_console.print(to_markdown(r))
        out_console.print(f"wrote {out}/bench.json, bench.md, pareto.png")


@app.command("predict")
def predict_cmd(
    model: Annotated[Path, typer.Argument(help="An ONNX classifier exported by kdexport (labels and normalization in its metadata).")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    top_k: Annotated[int, typer.Option(help="How many labels to show per image.")] = 5,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Top-k labels for images, using only the ONNX file and its metadata."""
    import json as _json

    from .predict import predict

    with errors_to_exit():
        results = predict(model, images, top_k)
        if json_out:
            out_console.print_json(_json.dumps(results))
            return
        for r in results:
            out_console.print(f"{r['image']}: " + ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"]))


@app.command("check")
def check_cmd(
    report: Annotated[Path, typer.Argument(help="The report.json to gate.")],
    baseline: Annotated[Path, typer.Option(help="The baseline report.json to compare against.")],
    max_accuracy_drop: Annotated[float, typer.Option(help="Largest allowed accuracy drop, in points.")] = 0.5,
    min_accuracy: Annotated[Optional[float], typer.Option(help="Smallest allowed accuracy, a fraction in [0, 1].")] = None,
    max_latency_ratio: Annotated[float, typer.Option(help="Largest allowed current/baseline p50 latency at batch 1.")] = 1.2,
    max_size_ratio: Annotated[float, typer.Option(help="Largest allowed current/baseline ONNX file size.")] = 1.05,
    models: Annotated[str, typer.Option(help="Comma-separated report entries to gate (teacher, baseline, student).")] = "student",
    skip: Annotated[Optional[list[str]], typer.Option(help="Skip a metric: accuracy, latency or size (repeatable). Skip latency when the two reports come from different machines.")] = None,
    junit: Annotated[Optional[Path], typer.Option(help="Also write a JUnit XML file.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Also write a Markdown summary (for a pull-request comment).")] = None,
) -> None:
    """Regression gate: exit 0 when every gate passes, 1 on a regression, 2 on unusable input."""
    from .check import HEADER, check_reports, load_report, rows, to_junit, to_markdown
    from .io import atomic_write_text

    with errors_to_exit():
        gates = check_reports(load_report(report), load_report(baseline), max_accuracy_drop=max_accuracy_drop,
                              min_accuracy=min_accuracy, max_latency_ratio=max_latency_ratio,
                              max_size_ratio=max_size_ratio, models=[m.strip() for m in models.split(",") if m.strip()],
                              skip=tuple(s for item in (skip or []) for s in item.split(",")))
        table = Table(title=f"kdexport check: {report} vs {baseline}")
        for h in HEADER:
            table.add_column(h, no_wrap=True)
        for r in rows(gates):
            table.add_row(*r[:-1], "[green]PASS[/]" if r[-1] == "PASS" else "[bold red]FAIL[/]")
        out_console.print(table)
        if junit:
            atomic_write_text(junit, to_junit(gates))
        if markdown:
            atomic_write_text(markdown, to_markdown(gates, str(report), str(baseline)))
        failed = [g for g in gates if not g.passed]
        if failed:
            out_console.print("FAIL: " + "; ".join(f"{g.model} {g.metric} ({g.detail}, limit {g.limit})" for g in failed))
            raise typer.Exit(1)
        out_console.print(f"PASS: {len(gates)} gate(s)")


def main() -> None:
    app(prog_name="kdexport")


if __name__ == "__main__":
    sys.exit(main())
