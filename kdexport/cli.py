"""Typer CLI: commands are adapters. Each command's options are generated from its config dataclass
(``kdexport.config``: default, help, panel, choices and validation live there and nowhere else); a command
builds the config (from ``--config FILE`` and the command line), calls the library, and turns a KdexportError
into one line on stderr and an exit code.

Nothing heavy is imported here: torch, onnx and onnxruntime load inside the command that needs them, so
``kdexport --help``, ``--version`` and ``COMMAND --help`` answer at once (``tests/test_cli_startup.py`` guards it).
"""

import contextlib
import dataclasses
import inspect
import json
import os
import sys
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import typer.core
import typer.rich_utils
from rich.console import Console
from rich.markup import escape

from .allocator import prefer_kept
from .config import (
    CONFIG_FILE,
    REQUIRED,
    SWEEP_REPLACES,
    BenchOptions,
    CacheClearOptions,
    CacheListOptions,
    CheckOptions,
    CliField,
    EnsembleOptions,
    Grid,
    PackageOptions,
    PredictOptions,
    QuantizeOptions,
    RunConfig,
    SelectOptions,
    ShardOptions,
    VerifyOptions,
    choice_help,
    choice_names,
    cli_fields,
    file_values,
    format_default,
    from_flat,
    to_file_dict,
)
from .errors import ConfigError, KdexportError, first_line
from .version import __version__

if not sys.stdout.isatty():  # --help piped to a file or a log: never cut option names at 80 columns
    typer.rich_utils.MAX_WIDTH = typer.rich_utils.MAX_WIDTH or 160

_display_type = getattr(typer.core.TyperOption, "display_type_rich", None)


def _flag_display(self, ctx):
    """A flag reads as a flag: no ``<bool>`` type column (Typer 0.2x shows one for --help and every boolean)."""
    return "" if self.is_flag and self.metavar is None else _display_type(self, ctx)


if _display_type is not None:
    typer.core.TyperOption.display_type_rich = _flag_display

app = typer.Typer(name="kdexport", add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  pretty_exceptions_enable=False,
                  help="Distil a small student from a big teacher, export both to ONNX, and "
                       "measure accuracy, size and CPU latency.")
console = Console(stderr=True)
out_console = Console(width=None if sys.stdout.isatty() else 150)  # logs: no truncated columns


def _error(text: str) -> None:
    console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True, markup=True)


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """Every failure is one line and an exit code: a KdexportError's own code; a file the OS refused
    (missing, unreadable, unwritable) 2; memory 1; anything else 1 as an internal error (set KDEXPORT_DEBUG=1
    for its traceback). Never a traceback otherwise."""
    try:
        yield
    except KdexportError as e:
        _error(str(e))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as e:
        if os.environ.get("KDEXPORT_DEBUG"):
            raise
        if isinstance(e, OSError):
            name = f" {str(e.filename)!r}" if e.filename else ""
            _error(f"cannot use{name}: {e.strerror or first_line(e)}")
            raise typer.Exit(2) from None
        if isinstance(e, MemoryError) or "DefaultCPUAllocator" in str(e):
            _error("out of memory; try a smaller --batch-size or --image-size")
            raise typer.Exit(1) from None
        _error(f"internal error: {type(e).__name__}: {first_line(e)} (KDEXPORT_DEBUG=1 shows the traceback; "
               "please report it)")
        raise typer.Exit(1) from None


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    console.print(f"[yellow]warning:[/] {escape(first_line(message, 300))}", highlight=False, soft_wrap=True)


def _test_acc(record: dict[str, float], sep: str) -> str:
    """An epoch's test accuracy for a progress line; nothing for an epoch --eval-every skipped."""
    return f"{sep}test acc {record['test_accuracy']:.4f}" if "test_accuracy" in record else ""


class RichReporter:
    """Training progress on a terminal: one bar per model with live loss and accuracy."""

    def __init__(self, progress):
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
                             metrics=f"loss {record['train_loss']:.4f}{_test_acc(record, '  ')}")

    def finish(self) -> None:
        pass


class LineReporter:
    """Training progress in a log (stderr is not a terminal): one line per epoch, written as it ends,
    instead of a progress bar that a non-terminal only shows when the run is over."""

    def __init__(self, write: Callable[[str], None]):
        self.write = write
        self.label, self.epochs, self.t0 = "", 0, 0.0

    def start(self, label: str, total_steps: int) -> None:
        self.label, self.t0 = label, time.perf_counter()

    def step_n(self, n: int, metrics: dict[str, float]) -> None:
        pass

    def epoch(self, record: dict[str, float]) -> None:
        self.write(f"{self.label} epoch {record['epoch']:.0f}: loss {record['train_loss']:.4f}, train acc "
                   f"{record['train_accuracy']:.4f}{_test_acc(record, ', ')} "
                   f"({record['seconds']:.1f} s, {time.perf_counter() - self.t0:.0f} s so far)")

    def finish(self) -> None:
        pass


@contextlib.contextmanager
def progress_reporter() -> Iterator[RichReporter | LineReporter]:
    """Bars on a terminal, lines in a log."""
    if not console.is_terminal:
        yield LineReporter(_log)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[bold]{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
                  console=console, transient=False) as progress:
        yield RichReporter(progress)


def _log(msg: str) -> None:
    console.print(f"[dim]>[/] {msg}", highlight=False, markup=True, soft_wrap=True)  # a log line is never cut


def version_callback(value: bool) -> None:
    if value:
        out_console.print(f"kdexport {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                                 help="Print the version and exit.")] = False) -> None:
    pass


# -- options generated from the config dataclasses ----------------------------------------------------

def _cli_type(t: Any) -> Any:
    """``X | None`` -> ``Optional[X]`` (the form typer reads)."""
    args = typing.get_args(t)
    if type(None) in args and len(args) == 2:
        return Optional[next(a for a in args if a is not type(None))]
    return t


def _choices_text(choices: tuple[str, ...], described: set[str]) -> str:
    """What --help adds to an option with choices: each registry name with its one-line help (the first time a
    command lists that registry; ``described`` remembers which it did), else the names."""
    fresh = tuple(c for c in choices if ":" in c and c not in described)
    described.update(fresh)
    lines = choice_help(fresh) if fresh else []
    if lines:
        plain = [f"**{n}**" for n in choices if ":" not in n]
        return " Choices: " + "; ".join(plain + [f"**{n}**: {h}" for n, h in lines]) + "."
    return f" [choices: {', '.join(choice_names(choices))}]"


def _parameter(f: CliField, described: set[str]) -> inspect.Parameter:
    help_text = f.meta["help"]() if callable(f.meta["help"]) else f.meta["help"]
    if f.meta.get("choices"):
        help_text += _choices_text(f.meta["choices"], described)
    cli_type = f.meta["cli_type"]
    default = f.default
    if default is REQUIRED:
        default = inspect.Parameter.empty
    elif isinstance(default, tuple):
        default = format_default(default) if cli_type is str else (list(default) or None)
    panel = f.meta.get("panel")
    info = (typer.Argument(help=help_text) if f.meta["argument"]
            else typer.Option(*f.meta["flags"], help=help_text, rich_help_panel=panel))
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[_cli_type(cli_type or f.type), info])


# The options every command with options gets: a config file, and printing the effective config.
_FILE_PARAMETERS = [
    inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option("--config", rich_help_panel=CONFIG_FILE, help=(
            "Read option values from this YAML or JSON file (the options' names as keys, nested under kd, train, "
            "quant or gates as run-config.json writes them, or flat); the command line overrides it. A run's "
            "run-config.json is such a file."))]),
    inspect.Parameter("print_config", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--print-config", rich_help_panel=CONFIG_FILE,
                           help="Print the effective config (file and command line merged, as JSON) and exit.")]),
]
_CONTEXT = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
_EXPLICIT = ("COMMANDLINE", "ENVIRONMENT")  # click's ParameterSource names of a value the user gave


cache_app = typer.Typer(name="cache", no_args_is_help=True, rich_markup_mode="markdown",
                        help="kdexport's cache (decoded images, teacher logits, baseline students): list it or clear it.")
app.add_typer(cache_app)


COMMANDS: list[tuple[str, type, tuple[str, ...], tuple[type, ...], str]] = []  # (name, config, exclude, extras, doc)


def config_command(name: str, cls: type, *, exclude: tuple[str, ...] = (), extra: tuple[type, ...] = (),
                   group: typer.Typer | None = None):
    """Register ``fn(config, *extra_configs)`` as command ``name`` (of ``group``, default the top level) with
    one option per config field."""

    def deco(fn: Callable) -> Callable:
        fields = [*cli_fields(cls, exclude), *(f for e in extra for f in cli_fields(e))]
        names = [f.name for f in fields]
        assert len(names) == len(set(names)), f"{name}: option names repeat across nested configs"
        classes = ((cls, exclude), *((e, ()) for e in extra))
        has_options = any(not f.meta["argument"] for f in fields)

        def command(ctx: typer.Context, **values: Any) -> None:
            with errors_to_exit():
                path, show = values.pop("config_file", None), values.pop("print_config", False)
                if path:
                    given = {n for n in values if getattr(ctx.get_parameter_source(n), "name", None) in _EXPLICIT}
                    from_file = file_values(path, classes, command=name)
                    values = {**values, **{k: v for k, v in from_file.items() if k not in given}}
                configs = [from_flat(c, values, ex) for c, ex in classes]
                if show:
                    merged = {k: v for c, (kls, ex) in zip(configs, classes) for k, v in to_file_dict(c, ex).items()}
                    out_console.print_json(json.dumps(merged))
                    return
                fn(*configs)

        described: set[str] = set()
        params = [_CONTEXT, *(_parameter(f, described) for f in fields), *(_FILE_PARAMETERS if has_options else [])]
        command.__signature__ = inspect.Signature(params)
        command.__doc__ = fn.__doc__
        command.__name__ = fn.__name__
        COMMANDS.append((f"{group.info.name} {name}" if group else name, cls, exclude, extra, fn.__doc__ or ""))
        (group or app).command(name)(command)
        return fn

    return deco


# -- commands ---------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("model", "acc (ONNX)", "params", "ONNX size", "p50 ms @1", "speed-up", "compression")


def print_summary(report: dict) -> None:
    from .report.write import summary_table

    cfg = report["config"]
    from rich.table import Table

    table = Table(title=f"{report['dataset']['name']}: {cfg['teacher']} -> {report['models']['student']['arch']}")
    for col in SUMMARY_COLUMNS:
        table.add_column(col, no_wrap=True)
    for row in summary_table(report):
        table.add_row(*[row[col] for col in SUMMARY_COLUMNS])
    out_console.print(table)


@config_command("distill-export", RunConfig)
def distill_export_cmd(cfg: RunConfig) -> None:
    """Train a teacher, a baseline student and a distilled student; export all three to ONNX
    (with a parity check); benchmark them with onnxruntime; write report.json and report.md."""
    from .distributed import shutdown
    from .pipeline import distill_export

    try:
        with progress_reporter() as reporter:
            report = distill_export(cfg, reporter=reporter, log=_log)
    finally:
        shutdown()  # leave the torchrun process group cleanly (no-op otherwise)
    if report is None:  # a non-zero torchrun rank: rank 0 reports
        return
    from .report.write import unfit

    print_summary(report)
    for line in unfit(report):
        out_console.print(f"[bold red]NOT FIT TO SHIP:[/] {escape(line)}", highlight=False)
    gain = report["kd_gain_points"]
    out_console.print((f"KD gain: {gain:+.2f} points" if gain is not None else "KD gain: - (no labels: no baseline)")
                      + f"; report: {Path(report['config']['out']) / 'report.md'}")


@config_command("sweep", RunConfig, exclude=SWEEP_REPLACES, extra=(Grid, ShardOptions))
def sweep_cmd(cfg: RunConfig, grid: Grid, shards: ShardOptions) -> None:
    """Grid over T x beta (x T^2 scaling) x seeds with a fair baseline per seed. The teacher is
    trained once; a rerun with the same --out skips finished cells. Writes sweep.json, sweep.md,
    heatmap.png, and best/ (the best cell exported and benchmarked like distill-export). --shard K/N runs a
    share of the units beside other shards in one --out (SLURM arrays, Kubernetes Indexed Jobs, CI matrices);
    --merge writes the result from the units finished so far."""
    from .config import parse_shard
    from .sweep import merge_sweep, run_sweep

    shard = parse_shard(shards.shard)
    if shards.merge and shard is not None:
        raise ConfigError("--merge and --shard do not go together: --merge reads the units every shard finished")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=grid.seeds[0]))
    with progress_reporter() as reporter:
        if shards.merge:
            result = merge_sweep(cfg.out, reporter=reporter, log=_log)
        else:
            result = run_sweep(cfg, grid, shard=shard, reporter=reporter, log=_log)
    if result is None:  # another shard finishes (or is writing) the merged result
        return
    b = result["best"]
    where = Path(result["config"]["out"]) / "sweep.md"
    partial = "" if result.get("complete", True) else \
        f"PARTIAL ({len(result.get('missing_units', []))} units missing): "
    out_console.print(f"{partial}best cell {b['cell']}: {b['mean'] * 100:.2f} ± {b['std'] * 100:.2f}% vs baseline "
                      f"{result['baseline']['mean'] * 100:.2f} ± {result['baseline']['std'] * 100:.2f}% "
                      f"(KD gain {b['kd_gain_points']:+.2f} points); table: {where}")


def _dataset_for(model: Path, dataset: str | None, data_dir: str | None, required: bool):
    from .errors import DataError
    from .runtimes.ort import data_for_model, read_metadata

    if dataset is None:
        try:
            dataset = read_metadata(model).get("dataset") if model.is_file() else None
        except Exception:
            dataset = None
    if dataset is None:
        if required:
            raise DataError(f"{model.name} names no dataset in its metadata; pass --dataset (and --data-dir)")
        return None
    return data_for_model(model, dataset, data_dir)


@config_command("quantize", QuantizeOptions)
def quantize_cmd(o: QuantizeOptions) -> None:
    """INT8-quantize an ONNX classifier with onnxruntime and check its accuracy against FP32."""
    from .bench.timing import quick_p50
    from .export.quantize import quantize_onnx
    from .report.write import drop_text
    from .runtimes.ort import inspect_classifier

    inspect_classifier(o.model)
    data = _dataset_for(Path(o.model), o.dataset, o.data_dir, required=True)
    r = quantize_onnx(o.model, o.out, data, mode=o.mode, quant=o.quant, latency=quick_p50(data))
    out_console.print(f"{r.mode} INT8: accuracy {r.accuracy_int8 * 100:.2f}% (FP32 {r.accuracy_fp32 * 100:.2f}%, "
                      f"{drop_text(r.accuracy_drop_points)}), {r.onnx_bytes:,} bytes "
                      f"({r.onnx_bytes / r.fp32_bytes * 100:.0f}% of FP32) -> {o.out}")
    if r.fallback:
        fb = r.fallback
        out_console.print(f"--fallback auto kept {len(fb['fp32_nodes'])} node(s) in FP32: "
                          f"{', '.join(fb['fp32_nodes'])}; p50 at batch 1 {fb['p50_ms']:.3f} ms (all-INT8 "
                          f"{fb['p50_ms_all_int8']:.3f} ms, FP32 {fb['p50_ms_fp32']:.3f} ms)")
    if r.diagnosis:
        from .export.diagnose import diagnosis_lines

        out_console.print("\n".join(["why INT8 differs from FP32:", *diagnosis_lines(r.diagnosis)]), markup=False,
                          highlight=False)


@config_command("bench", BenchOptions)
def bench_cmd(o: BenchOptions) -> None:
    """Latency (p50/p90/p99, throughput) of image classifier files (.onnx/.ort under onnxruntime, .xml under
    OpenVINO), all timed in the same rounds, and accuracy given data."""
    from .bench.command import bench_models, to_markdown, write_bench

    r = bench_models(o)
    write_bench(r, Path(o.out))
    out_console.print(to_markdown(r), markup=False, highlight=False)
    out_console.print(f"wrote {o.out}/bench.json, bench.md, pareto.png")


@config_command("predict", PredictOptions)
def predict_cmd(o: PredictOptions) -> None:
    """Top-k labels for images, using only the model file (.onnx, .ort or an OpenVINO .xml) and its metadata."""
    import json

    from .export.predict import predict

    results = predict(o.model, list(o.images), o.top_k, o.overrides())
    if o.json_out:
        out_console.print_json(json.dumps(results))
        return
    for r in results:
        out_console.print(f"{r['image']}: " + ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"]))


@config_command("check", CheckOptions)
def check_cmd(o: CheckOptions) -> None:
    """Regression gate: exit 0 when every gate passes, 1 on a regression, 2 on unusable input."""
    from rich.table import Table

    from .files import atomic_write_text
    from .report.check import HEADER, check_reports, load_report, rows, to_junit, to_markdown

    gates = check_reports(load_report(o.report), load_report(o.baseline), o.gates)
    table = Table(title=f"kdexport check: {o.report} vs {o.baseline}")
    for h in HEADER:
        table.add_column(h, no_wrap=True)
    for r in rows(gates):
        table.add_row(*r[:-1], "[green]PASS[/]" if r[-1] == "PASS" else "[bold red]FAIL[/]")
    out_console.print(table)
    if o.junit:  # an unwritable path is one line (OutputError, exit 2)
        atomic_write_text(o.junit, to_junit(gates))
    if o.markdown:
        atomic_write_text(o.markdown, to_markdown(gates, o.report, o.baseline))
    failed = [g for g in gates if not g.passed]
    if failed:
        out_console.print("FAIL: " + "; ".join(f"{g.model} {g.metric} ({g.detail}, limit {g.limit})" for g in failed))
        raise typer.Exit(1)
    out_console.print(f"PASS: {len(gates)} gate(s)")


@config_command("package", PackageOptions)
def package_cmd(o: PackageOptions) -> None:
    """An app-ready folder: model.onnx (+ INT8), model.ort, the run's files for other runtimes (--targets),
    labels.txt, preprocess.json, test data, a model card and SHA256SUMS, written atomically; `kdexport verify`
    checks it anywhere."""
    from .report.package import package

    path = package(o.source, o.out, dataset=o.dataset, data_dir=o.data_dir, labels=o.labels, mean=o.mean,
                   std=o.std, samples=o.samples, overwrite=o.overwrite, crop_ratio=o.crop_ratio, targets=o.targets)
    out_console.print(f"wrote {path}: " + ", ".join(sorted(p.name for p in path.iterdir())))


@config_command("verify", VerifyOptions)
def verify_cmd(o: VerifyOptions) -> None:
    """Check a package on this machine: checksums, and every model file against its test data.
    Exit 0 when all hold, 1 with one line per failure."""
    from .report.package import verify

    failures = verify(o.package)
    for f in failures:
        out_console.print(f"FAIL {f}", highlight=False)
    if failures:
        raise typer.Exit(1)
    out_console.print(f"OK: {o.package}")


@config_command("ensemble", EnsembleOptions)
def ensemble_cmd(o: EnsembleOptions) -> None:
    """One teacher checkpoint from several trained ones of one architecture, their logits averaged: pass it
    as --teacher ensemble:NxARCH --teacher-checkpoint OUT."""
    from .models.checkpoint import combine_checkpoints

    path, spec = combine_checkpoints(o.checkpoints, o.out, overwrite=o.overwrite)
    out_console.print(f"wrote {path}: {spec.arch}; use it with --teacher {spec.arch} --teacher-checkpoint {path}",
                      highlight=False, soft_wrap=True)


@config_command("select", SelectOptions)
def select_cmd(o: SelectOptions) -> None:
    """Measure candidate students on this machine (ONNX, onnxruntime, as bench times them) and pick the one
    with the most FLOPs within a latency (and size) budget. Writes select.json, select.md and select.png."""
    from .bench.select import int8_mode, select_student, to_markdown, write_select
    from .config import parse_latency_budget, parse_size_budget
    from .data.datasets import load_dataset
    from .envinfo import environment

    data = load_dataset(o.dataset, o.data_dir, download=False, image_size=o.image_size)
    budget = parse_latency_budget(o.latency_budget) if o.latency_budget else None
    size = parse_size_budget(o.size_budget) if o.size_budget else None
    r = select_student(data, candidates=list(o.candidates) or None, budget=budget, size_budget=size, margin=o.margin,
                       threads=o.threads, batch=o.batch, int8=int8_mode(data.input_shape) if o.int8 else None,
                       cifar_stem=o.cifar_stem, log=_log)
    env = environment(o.threads)
    write_select(r, Path(o.out), env)
    out_console.print(to_markdown(r, env))
    out_console.print(f"wrote {o.out}/select.json, select.md, select.png")


@config_command("list", CacheListOptions, group=cache_app)
def cache_list_cmd(o: CacheListOptions) -> None:
    """Where the cache is, and what each part holds (files, bytes)."""
    from .files import cache_usage

    root, parts = cache_usage()
    out_console.print(f"cache: {root} (KDEXPORT_CACHE_DIR to move it)", highlight=False)
    for name, (files, size) in parts.items():
        out_console.print(f"  {name:<14} {files:>6} files  {size / 2**20:>10.1f} MB", highlight=False)
    total = sum(b for _, b in parts.values())
    out_console.print(f"  {'total':<14} {sum(f for f, _ in parts.values()):>6} files  {total / 2**20:>10.1f} MB",
                      highlight=False)


@config_command("clear", CacheClearOptions, group=cache_app)
def cache_clear_cmd(o: CacheClearOptions) -> None:
    """Delete cached decoded images, teacher logits and/or baseline students (they are rebuilt when needed)."""
    from .files import cache_clear

    freed = cache_clear(o.part)
    out_console.print(f"cleared {o.part}: {freed / 2**20:.1f} MB freed")


def reference_markdown() -> str:
    """The CLI reference (docs/cli.md): every command, its options by panel, each with its flags, default,
    help and choices, generated from the same config fields as the CLI itself (the docs' MkDocs hook calls
    it), so the two cannot drift."""
    from .config import PANELS

    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|").replace("*", "\\*").replace("\\*\\*", "**")

    def shown(f: CliField) -> tuple[list[str], str]:
        flags = [x for flag in (f.meta["flags"] or (f"--{f.name.replace('_', '-')}",)) for x in flag.split("/")]
        if f.type is bool and not f.meta["flags"]:
            flags.append(f"--no-{f.name.replace('_', '-')}")
        d = f.default
        default = ("required" if d is REQUIRED else "none" if d is None or d == () else
                   ("on" if d else "off") if isinstance(d, bool) else f"`{format_default(d)}`")
        return flags, default

    lines = []
    for name, cls, exclude, extra, doc in COMMANDS:
        fields = [*cli_fields(cls, exclude), *(f for e in extra for f in cli_fields(e))]
        lines += [f"## kdexport {name}", "", " ".join(inspect.cleandoc(doc).split()), ""]
        args = [f for f in fields if f.meta["argument"]]
        if args:
            lines += ["| argument | what |", "|---|---|"]
            lines += [f"| `{f.name.upper()}` | {cell(f.meta['help'])} |" for f in args]
            lines.append("")
        options = [f for f in fields if not f.meta["argument"]]
        panels = sorted({f.meta.get("panel") or "Options" for f in options},
                        key=lambda p: PANELS.index(p) if p in PANELS else -1)
        described: set[str] = set()
        for panel in panels:
            lines += [f"**{panel}**", "", "| option | default | what |", "|---|---|---|"]
            for f in (f for f in options if (f.meta.get("panel") or "Options") == panel):
                flags, default = shown(f)
                text = f.meta["help"] + (_choices_text(f.meta["choices"], described) if f.meta.get("choices") else "")
                lines.append(f"| {', '.join(f'`{x}`' for x in flags)} | {default} | {cell(text)} |")
            lines.append("")
        if options:
            lines += ["Every command with options also takes `--config FILE` (YAML or JSON, the command line wins) and "
                      "`--print-config`.", ""]
    return "\n".join(lines)


def main() -> None:
    import warnings

    warnings.showwarning = _one_line_warning  # a library warning is one line on stderr, like an error
    prefer_kept()  # malloc keeps freed memory once the data is in memory: see kdexport/allocator.py
    app(prog_name="kdexport")


if __name__ == "__main__":
    sys.exit(main())
