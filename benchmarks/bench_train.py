"""Training throughput: what kdexport's data path and teacher cache buy, side by side in one run.

For each pair (MNIST MLP 1200-1200 -> 14; CIFAR-10 ResNet50 -> ResNet18 at 32x32 on a subset) it
measures training images/s of
  (a) the student alone (kdexport's loop, plain CE),
  (b) KD with a live teacher (teacher forward every step, inference mode),
  (c) KD with the cached teacher logits (one teacher pass over the data, then a table lookup),
  (d) a minimal plain-PyTorch KD loop written the way the seed did it: a DataLoader over the
      torchvision dataset with per-item transforms, a teacher forward every step,
all with the same batch size, and checks that (b) and (c) train the same student. It also times the
seed's whole MNIST experiment end to end (teacher, baseline, three distilled students at 6 epochs,
export and benchmark) through `kdexport sweep`.

    python benchmarks/bench_train.py [--data-dir ../shared/datasets] [--skip-e2e]

Writes benchmarks/results/bench_train.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdexport.allocator import prefer_kept
from kdexport.config import KDConfig, TrainConfig
from kdexport.data.datasets import Dataset, load_dataset
from kdexport.distill.teacher import CachedLogits, Distillation, LiveLogits, TeacherLogits, TorchTeacher
from kdexport.distill.train import evaluate, fit
from kdexport.envinfo import result_stamp
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.models.builders import ModelSpec, build_model

HERE = Path(__file__).resolve().parent
KD = KDConfig(temperature=4.0, soft_weight=0.5)


def subset(data: Dataset, n_train: int, n_test: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.y_train), generator=g)[:n_train]
    test = data.test_sample(n_test)  # a random sample: the JPEG copy's test set is ordered by class
    return dataclasses.replace(
        data,
        x_train=data.x_train[idx],
        y_train=data.y_train[idx],
        x_test=data.x_test[test],
        y_test=data.y_test[test],
    )


def kdexport_epoch(data: Dataset, spec: ModelSpec, cfg: TrainConfig, targets: TeacherLogits | None) -> dict:
    torch.manual_seed(0)
    model = build_model(spec)
    t0 = time.perf_counter()
    hist = fit(model, data, cfg, distill=Distillation(targets, KD) if targets else None)
    secs = time.perf_counter() - t0
    train_secs = sum(h["seconds"] for h in hist)
    return {
        "images_per_s": len(data.y_train) * cfg.epochs / train_secs,
        "seconds": secs,
        "test_accuracy": evaluate(model, data)["accuracy"],
    }


def plain_loop(dataset, teacher: torch.nn.Module, spec: ModelSpec, batch_size: int, epochs: int, test: Dataset) -> dict:
    """The seed's way: DataLoader with per-item transforms, teacher forward every step."""
    torch.manual_seed(0)
    student = build_model(spec)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    teacher.eval()
    t0 = time.perf_counter()
    n = 0
    for _ in range(epochs):
        student.train()
        for x, y in loader:
            with torch.no_grad():
                t = teacher(x)
            s = student(x)
            loss = (1 - KD.soft_weight) * F.cross_entropy(s, y) + KD.soft_weight * KD.temperature**2 * F.kl_div(
                F.log_softmax(s / KD.temperature, 1), F.softmax(t / KD.temperature, 1), reduction="batchmean"
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(y)
    secs = time.perf_counter() - t0
    return {"images_per_s": n / secs, "seconds": secs, "test_accuracy": evaluate(student, test)["accuracy"]}


def run_pair(
    name: str,
    data: Dataset,
    tv_dataset,
    t_spec: ModelSpec,
    s_spec: ModelSpec,
    batch: int,
    teacher_epochs: int,
    epochs: int,
) -> dict:
    print(f"[{name}] training the teacher ({teacher_epochs} epoch(s))", flush=True)
    torch.manual_seed(0)
    teacher = build_model(t_spec)
    fit(teacher, data, TrainConfig(epochs=teacher_epochs, batch_size=batch))
    cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=3e-3)
    out: dict = {
        "batch_size": batch,
        "epochs": epochs,
        "train_images": len(data.y_train),
        "teacher_accuracy": evaluate(teacher, data)["accuracy"],
    }
    print(f"[{name}] (a) student alone", flush=True)
    out["a_student_alone"] = kdexport_epoch(data, s_spec, cfg, None)
    print(f"[{name}] (b) KD, live teacher", flush=True)
    out["b_kd_live_teacher"] = kdexport_epoch(
        data, s_spec, cfg, LiveLogits(TorchTeacher.for_data(teacher, data))
    )
    print(f"[{name}] (c) KD, cached teacher", flush=True)
    t0 = time.perf_counter()
    cached = CachedLogits(TorchTeacher.for_data(teacher, data), data)
    out["cache_build_seconds"] = time.perf_counter() - t0
    out["c_kd_cached_teacher"] = kdexport_epoch(data, s_spec, cfg, cached)
    print(f"[{name}] (d) plain PyTorch loop", flush=True)
    out["d_plain_loop"] = plain_loop(tv_dataset, teacher, s_spec, batch, epochs, data)
    a, b, c, d = (
        out[k]["images_per_s"] for k in ("a_student_alone", "b_kd_live_teacher", "c_kd_cached_teacher", "d_plain_loop")
    )
    out["ratios"] = {
        "cached_kd_epoch_cost_vs_student_alone": a / c,
        "live_kd_epoch_cost_vs_student_alone": a / b,
        "kdexport_cached_vs_plain_loop": c / d,
        "kdexport_live_vs_plain_loop": b / d,
    }
    out["cached_equals_live_accuracy"] = (
        out["b_kd_live_teacher"]["test_accuracy"] == out["c_kd_cached_teacher"]["test_accuracy"]
    )
    return out


def e2e_seed_mnist(data_dir: str) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "kdexport",
            "sweep",
            "--dataset",
            "mnist",
            "--data-dir",
            data_dir,
            "--teacher",
            "mlp:1200,1200",
            "--student",
            "mlp:14",
            "-T",
            "5,7,10",
            "--soft-weight",
            "0.5",
            "--seeds",
            "0",
            "--epochs",
            "6",
            "--lr",
            "1e-4",
            "--scheduler",
            "none",
            "--batch-size",
            "64",
            "--no-teacher-cache",
            "--out",
            f"{tmp}/sweep",
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        secs = time.perf_counter() - t0
        r = json.loads(Path(f"{tmp}/sweep/sweep.json").read_text())
    return {
        "command": " ".join(cmd[1:]).replace(tmp, "TMP"),
        "seconds": secs,
        "batch_size": 64,
        "teacher_accuracy": r["teacher"]["accuracy"],
        "baseline_accuracy": r["baseline"]["mean"],
        "cells": {k: v["mean"] for k, v in r["cells"].items()},
        "target_seconds": 90,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "datasets"))
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--cifar-train", type=int, default=4096, help="CIFAR-10 training subset size")
    args = ap.parse_args()
    import torchvision
    import torchvision.transforms as T

    torch.set_num_threads(2)
    res: dict = result_stamp("benchmarks/bench_train.py", 2)
    mnist = load_dataset("mnist", args.data_dir, download=False)
    tv_mnist = torchvision.datasets.MNIST(
        args.data_dir,
        train=True,
        download=False,
        transform=T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))]),
    )
    res["mnist_mlp"] = run_pair(
        "mnist mlp",
        mnist,
        tv_mnist,
        ModelSpec("mlp:1200,1200", 10, (1, 28, 28), 0.5),
        ModelSpec("mlp:14", 10, (1, 28, 28)),
        batch=64,
        teacher_epochs=1,
        epochs=1,
    )
    cifar = subset(load_dataset("cifar10", args.data_dir, download=False), args.cifar_train, 512)
    root = Path(args.data_dir) / "cifar10-jpeg" / "train"
    tv_cifar = torchvision.datasets.ImageFolder(
        str(root), transform=T.Compose([T.ToTensor(), T.Normalize(cifar.mean, cifar.std)])
    )
    g = torch.Generator().manual_seed(0)
    tv_cifar = torch.utils.data.Subset(
        tv_cifar, torch.randperm(len(tv_cifar), generator=g)[: args.cifar_train].tolist()
    )
    res["cifar_resnet50_resnet18"] = run_pair(
        "cifar resnet50->resnet18",
        cifar,
        tv_cifar,
        ModelSpec("resnet50", 10, (3, 32, 32)),
        ModelSpec("resnet18", 10, (3, 32, 32)),
        batch=64,
        teacher_epochs=3,
        epochs=1,
    )
    if not args.skip_e2e:
        print("[e2e] the seed's MNIST experiment through kdexport sweep", flush=True)
        res["seed_mnist_end_to_end"] = e2e_seed_mnist(args.data_dir)
    atomic_write_json(HERE / "results" / "bench_train.json", res)
    atomic_write_text(HERE / "results" / "bench_train.md", to_markdown(res))
    print(to_markdown(res))


def to_markdown(r: dict) -> str:
    env = r["environment"]
    lines = [
        "# Training throughput (benchmarks/bench_train.py)",
        "",
        f"{r['created']}; {env['cpu']} ({env['cpu_cores']} cores, {env['threads']} threads), torch {env['torch']}.",
        "Images/s of one training epoch; batch 64 everywhere; (d) is a plain DataLoader loop with a teacher "
        "forward every step.",
        "",
        "| pair | (a) student alone | (b) KD live teacher | (c) KD cached teacher | (d) plain loop | "
        "KD cost vs student (cached) | kdexport (c) vs plain (d) | cached = live accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in ("mnist_mlp", "cifar_resnet50_resnet18"):
        p = r[key]
        ips = [
            f"{p[k]['images_per_s']:.0f}"
            for k in ("a_student_alone", "b_kd_live_teacher", "c_kd_cached_teacher", "d_plain_loop")
        ]
        lines.append(
            f"| {key} | " + " | ".join(ips) + f" | {p['ratios']['cached_kd_epoch_cost_vs_student_alone']:.2f}x"
            f" | {p['ratios']['kdexport_cached_vs_plain_loop']:.2f}x | {p['cached_equals_live_accuracy']} |"
        )
    if "seed_mnist_end_to_end" in r:
        e = r["seed_mnist_end_to_end"]
        lines += [
            "",
            f"Seed MNIST experiment end to end (teacher, baseline, 3 distilled students at 6 epochs, "
            f"export + benchmark; batch {e['batch_size']}): **{e['seconds']:.0f} s** (target {e['target_seconds']} s).",
            f"Command: `{e['command']}`",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    prefer_kept()  # as the CLI does: see kdexport/allocator.py
    main()
