"""Bring your own teacher, end to end on the CIFAR-10 JPEG copy as a user's ImageFolder.

Step 1 is what a user does outside kdexport, in plain PyTorch: train a torchvision ResNet18 on
``DATA/train`` (torchvision ImageFolder + DataLoader), save its ``state_dict`` (``torch.save`` and
safetensors) and export it with a plain ``torch.onnx.export`` (which writes ``teacher.onnx`` plus its
weights in ``teacher.onnx.data``, and no kdexport metadata). Step 2 hands each of the three forms to
``kdexport distill-export --dataset imagefolder`` and records what kdexport measured:

    python benchmarks/byo_teacher.py                       # data from ../shared/datasets/cifar10-jpeg
    python benchmarks/byo_teacher.py --teacher-epochs 2 --epochs 1

Writes benchmarks/results/byo_teacher.json and .md (stamped with hardware, versions, date, commit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torchvision.transforms import v2

from kdexport.envinfo import result_stamp, stamp_markdown
from kdexport.files import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # what the user trained with


def train_plain_teacher(data: Path, epochs: int, out: Path) -> dict:
    """The user's own script: nothing from kdexport."""
    from safetensors.torch import save_file

    tf = v2.Compose([v2.PILToTensor(), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(MEAN, STD)])
    ds = torchvision.datasets.ImageFolder(str(data / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True, num_workers=1,
                                         generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=epochs * len(loader))
    t0 = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"teacher epoch {epoch + 1}: last batch loss {loss.item():.3f}", flush=True)
    seconds = time.perf_counter() - t0
    model.eval()
    torch.save(model.state_dict(), out / "teacher.pth")
    save_file(model.state_dict(), str(out / "teacher.safetensors"))
    torch.onnx.export(model, (torch.zeros(2, 3, 32, 32),), str(out / "teacher.onnx"), input_names=["image"],
                      output_names=["logits"], dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    return {"arch": "torchvision resnet18 (ImageNet stem)", "epochs": epochs, "train_seconds": seconds,
            "files": sorted(p.name for p in out.iterdir())}


def distill(form: str, args: list[str], data: Path, epochs: int, student: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "kdexport", "distill-export", "--dataset", "imagefolder", "--data-dir", str(data),
           "--student", student, "--epochs", str(epochs), "--optimizer", "sgd", "--lr", "0.05",
           "--scheduler", "onecycle", "--batch-size", "128", "--bench-iters", "30", "--out", str(out / form), *args]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{form} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    report = json.loads((out / form / "report.json").read_text())
    m = report["models"]
    return {"command": "kdexport " + " ".join(cmd[3:]).replace(str(out), "OUT"),
            "wall_seconds": time.perf_counter() - t0,
            "teacher": {k: m["teacher"].get(k) for k in ("arch", "params", "onnx_bytes", "accuracy_onnx")}
            | {"p50_ms_batch_1": m["teacher"]["latency_ms"]["batch_1"]["p50"]},
            **{role: {"accuracy_onnx": m[role]["accuracy_onnx"], "p50_ms_batch_1":
                      m[role]["latency_ms"]["batch_1"]["p50"]} for role in ("baseline", "student")},
            "kd_gain_points": report["kd_gain_points"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"))
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the baseline and the distilled student")
    ap.add_argument("--student", default="mobilenet_v3_small")
    args = ap.parse_args()
    data = Path(args.data_dir)
    stamp = result_stamp("benchmarks/byo_teacher.py", torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        teacher = train_plain_teacher(data, args.teacher_epochs, out)
        mean, std = ",".join(map(str, MEAN)), ",".join(map(str, STD))
        forms = {
            "onnx": ["--teacher", str(out / "teacher.onnx"), "--teacher-mean", mean, "--teacher-std", std],
            "weights-pth": ["--teacher", "resnet18", "--teacher-weights", str(out / "teacher.pth")],
            "weights-safetensors": ["--teacher", "resnet18", "--teacher-weights", str(out / "teacher.safetensors")],
        }
        runs = {form: distill(form, a, data, args.epochs, args.student, out) for form, a in forms.items()}
    result = {**stamp, "data": str(data), "plain_teacher": teacher, "student": args.student,
              "student_epochs": args.epochs, "runs": runs}
    atomic_write_json(HERE / "results" / "byo_teacher.json", result)
    lines = ["# Bring your own teacher: CIFAR-10 JPEG copy as an ImageFolder", "",
             stamp_markdown(stamp), "",
             f"Teacher: {teacher['arch']}, trained by a plain PyTorch script for {teacher['epochs']} epoch(s) "
             f"({teacher['train_seconds']:.0f} s), then saved as {', '.join(teacher['files'])}. Student "
             f"{args.student}, {args.epochs} epoch(s) for baseline and distilled student alike.", "",
             "| teacher form | teacher acc (kdexport) | teacher p50 ms @1 | baseline acc | distilled acc | "
             "KD gain (points) | wall s |", "|---|---|---|---|---|---|---|"]
    for form, r in runs.items():
        lines.append(f"| {form} | {r['teacher']['accuracy_onnx'] * 100:.2f}% | {r['teacher']['p50_ms_batch_1']:.3f} "
                     f"| {r['baseline']['accuracy_onnx'] * 100:.2f}% | {r['student']['accuracy_onnx'] * 100:.2f}% "
                     f"| {r['kd_gain_points']:+.2f} | {r['wall_seconds']:.0f} |")
    lines += ["", "Commands (OUT is a temporary folder):", ""] + [f"- `{r['command']}`" for r in runs.values()]
    atomic_write_text(HERE / "results" / "byo_teacher.md", "\n".join(lines) + "\n")
    print(f"wrote {HERE / 'results' / 'byo_teacher.json'} and .md")


if __name__ == "__main__":
    main()
