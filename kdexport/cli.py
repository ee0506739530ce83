"""Typer CLI: commands are adapters. They build a config, call the library, and turn a
KdexportError into one line on stderr and a non-zero exit code."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .errors import KdexportError

app = typer.Typer(name="kdexport", add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Distil a small student from a big teacher, export both to ONNX, and "
                       "measure accuracy, size and CPU latency.")
console = Console(stderr=True)
out_console = Console()


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    try:
        yield
    except KdexportError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
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

    def step(self, metrics: dict[str, float]) -> None:
        self.progress.update(self.task, advance=1,
                             metrics=f"loss {metrics['loss']:.4f}  acc {metrics['acc']:.3f}")

    def epoch(self, record: dict[str, float]) -> None:
        self.progress.update(self.task, description=f"{self.label} ep {record['epoch']:.0f}",
                             metrics=f"loss {record['train_loss']:.4f}  test acc "
                                     f"{record['test_accuracy']:.4f}")

    def finish(self) -> None:
        pass


def make_progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
                    console=console, transient=False)


def _log(msg: str) -> None:
    console.print(f"[dim]›[/] {msg}", highlight=False)


def version_callback(value: bool) -> None:
    if value:
        out_console.print(f"kdexport {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=version_callback,
                                                 is_eager=True, help="Print the version.")] = False) -> None:
    pass


@app.command("distill-export")
def distill_export_cmd(
    teacher: Annotated[str, typer.Option(help="Teacher model: mlp:<sizes> or a torchvision name.")] = "mlp:1200,1200",
    student: Annotated[str, typer.Option(help="Student model: mlp:<sizes> or a torchvision name.")] = "mlp:14",
    dataset: Annotated[str, typer.Option(help="digits (bundled), mnist, cifar10 or imagefolder.")] = "digits",
    data_dir: Annotated[Optional[Path], typer.Option(help="Local dataset folder (default: $KDEXPORT_DATA_DIR or ~/.cache/kdexport/data).")] = None,
    download: Annotated[bool, typer.Option(help="Download mnist/cifar10 when not found locally.")] = True,
    image_size: Annotated[Optional[int], typer.Option(help="imagefolder: resize images to this square size.")] = None,
    augment: Annotated[str, typer.Option(help="Training augmentation: auto (crop-flip for RGB data, else none), none, crop-flip, shift2.")] = "auto",
    teacher_augment: Annotated[Optional[str], typer.Option(help="The teacher's augmentation, if different.")] = None,
    temperature: Annotated[float, typer.Option("--temperature", "-T", help="Distillation temperature T > 0.")] = 4.0,
    soft_weight: Annotated[float, typer.Option(help="beta: weight of the soft (KD) loss; the hard CE weight is 1 - beta.")] = 0.5,
    scale_t2: Annotated[bool, typer.Option("--scale-t2/--no-scale-t2", help="Multiply the soft loss by T^2 (Hinton et al.).")] = True,
    soft_loss: Annotated[str, typer.Option(help="Soft loss: kl (Hinton) or mse (logit matching).")] = "kl",
    epochs: Annotated[int, typer.Option(help="Epochs for every model (baseline and student always match).")] = 30,
    teacher_epochs: Annotated[Optional[int], typer.Option(help="Override the teacher's epochs.")] = None,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    optimizer: Annotated[str, typer.Option(help="adam or sgd (momentum, Nesterov).")] = "adam",
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-3,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 0.0,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    scheduler: Annotated[str, typer.Option(help="Learning-rate schedule: cosine, onecycle or none.")] = "cosine",
    seed: Annotated[int, typer.Option(help="Seed for initialization and data order.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (training only; benchmarks run on CPU).")] = "auto",
    teacher_dropout: Annotated[float, typer.Option(help="Dropout between MLP hidden layers of the teacher.")] = 0.5,
    student_dropout: Annotated[float, typer.Option(help="Dropout between MLP hidden layers of the student.")] = 0.0,
    cifar_stem: Annotated[bool, typer.Option(help="torchvision CNNs: 3x3 stride-1 stem, no max-pool (for 32x32 inputs).")] = False,
    pretrained: Annotated[bool, typer.Option(help="Start the teacher from torchvision's pretrained weights (needs network once).")] = False,
    teacher_checkpoint: Annotated[Optional[Path], typer.Option(help="Use this trained teacher (a kdexport checkpoint) instead of training one.")] = None,
    bench_batch: Annotated[int, typer.Option(help="The larger batch size to benchmark, beside batch 1.")] = 32,
    bench_iters: Annotated[int, typer.Option(help="Timed runs per latency measurement.")] = 100,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for training and inference (default: all usable cores).")] = None,
    parity_atol: Annotated[float, typer.Option(help="Max abs logit difference allowed between onnxruntime and PyTorch.")] = 1e-3,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: runs/distill-<timestamp>).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out folder.")] = False,
) -> None:
    """Train a teacher, a baseline student and a distilled student; export all three to ONNX
    (with a parity check); benchmark them with onnxruntime; write report.json and report.md."""
    from .config import KDConfig, RunConfig, TrainConfig
    from .pipeline import distill_export
    from .report import summary_header, summary_rows

    with errors_to_exit():
        cfg = RunConfig(
            dataset=dataset, data_dir=str(data_dir) if data_dir else None, download=download,
            image_size=image_size, augment=augment, teacher_augment=teacher_augment, teacher=teacher, student=student,
            teacher_dropout=teacher_dropout, student_dropout=student_dropout, cifar_stem=cifar_stem,
            pretrained=pretrained, teacher_checkpoint=str(teacher_checkpoint) if teacher_checkpoint else None,
            kd=KDConfig(temperature=temperature, soft_weight=soft_weight, scale_t2=scale_t2, soft_loss=soft_loss),
            train=TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                              weight_decay=weight_decay, momentum=momentum, scheduler=scheduler,
                              seed=seed, device=device),
            teacher_epochs=teacher_epochs, parity_atol=parity_atol, bench_batch=bench_batch,
            bench_iters=bench_iters, threads=threads, out=str(out) if out else None, overwrite=overwrite)
        with make_progress() as progress:
            report = distill_export(cfg, reporter=RichReporter(progress), log=_log)
        table = Table(title=f"{report['dataset']['name']}: {teacher} -> {student}")
        keep = [0, 2, 4, 6, 7, 10, 11]  # model, acc, params, size, p50@1, speed-up, compression
        header = summary_header(report)
        for i in keep:
            table.add_column(header[i], no_wrap=True)
        for row in summary_rows(report):
            table.add_row(*[row[i] for i in keep])
        out_console.print(table)
        out_console.print(f"KD gain: {report['kd_gain_points']:+.2f} points; report: "
                          f"{Path(report['config']['out']) / 'report.md'}")


def main() -> None:
    app(prog_name="kdexport")


if __name__ == "__main__":
    sys.exit(main())
