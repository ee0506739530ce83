"""``kdexport check``: gate a report.json against a baseline report (accuracy, latency, size).

Exit codes (set by the CLI): 0 all gates pass, 1 a regression, 2 unusable input.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from ..config import GateConfig
from ..errors import ReportError
from .entry import ModelEntry, model_entries


@dataclass
class Gate:
    model: str
    metric: str
    baseline: float | None
    current: float
    limit: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def load_report(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"report {str(path)!r} does not exist") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"report {str(path)!r} is not readable JSON: {e}") from None


def _get(report: dict, keys: list[str], which: str) -> Any:
    cur: Any = report
    for i, k in enumerate(keys):
        if not isinstance(cur, dict) or k not in cur:
            raise ReportError(f"{which} report has no key {'.'.join(keys[: i + 1])}")
        cur = cur[k]
    return cur


def _number(value: Any, which: str, key: str, *, lo: float | None = None, hi: float | None = None) -> float:
    """A metric from a report: present, a real number (not a string, bool or NaN) and within [lo, hi];
    anything else makes the report unusable (exit 2), never a pass or a regression."""
    if value is None:
        raise ReportError(f"{which} report has no key {key}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportError(f"{which} report: {key} is not a number ({value!r})")
    v = float(value)
    if not math.isfinite(v):
        raise ReportError(f"{which} report: {key} is {v} (not a finite number)")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        span = f"[{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
        raise ReportError(f"{which} report: {key} = {v:g} is outside {span}")
    return v


@dataclass
class RuntimeRow:
    """A row of a report's ``runtimes`` section (``distill-export --targets``) as ``check`` gates it: named
    ``TARGET:PRECISION`` in ``--models`` (``litert:int8``, ``openvino:fp32``)."""

    arch: str | None
    accuracy_onnx: float | None  # the file's accuracy in its own runtime
    onnx_bytes: int | None  # the file's bytes (all of its files)
    latency_ms: dict | None

    def p50(self, batch: int = 1) -> float | None:
        lat = (self.latency_ms or {}).get(f"batch_{batch}")
        return lat.get("p50") if isinstance(lat, dict) else None


def _runtime_row(report: dict, name: str, which: str) -> RuntimeRow:
    target, _, precision = name.partition(":")
    rows = (report.get("runtimes") or {}).get("rows") if isinstance(report.get("runtimes"), dict) else None
    if not isinstance(rows, list):
        raise ReportError(f"{which} report has no runtimes section (run distill-export with --targets) to gate "
                          f"{name!r} in")
    for row in rows:
        if isinstance(row, dict) and row.get("target") == target and row.get("precision") == precision:
            if not row.get("path"):
                raise ReportError(f"{which} report: {name} was not kept ({row.get('error') or row.get('note')})")
            if row.get("runs_here") is False:
                raise ReportError(f"{which} report: {name} was checked, not run (no accuracy or latency to gate)")
            student = (report.get("models") or {}).get("student") or {}
            return RuntimeRow(student.get("arch"), row.get("accuracy"), row.get("bytes"), row.get("latency_ms"))
    have = ", ".join(f"{r.get('target')}:{r.get('precision')}" for r in rows if isinstance(r, dict))
    raise ReportError(f"{which} report has no runtime row {name!r} (it has: {have})")


def _entry(report: dict, role: str, which: str) -> ModelEntry | RuntimeRow:
    if ":" in role:
        return _runtime_row(report, role, which)
    entries = model_entries(report, which)
    if role not in entries:
        raise ReportError(f"{which} report has no key models.{role}")
    return entries[role]


def check_reports(current: dict, baseline: dict, gates: GateConfig = GateConfig()) -> list[Gate]:
    """Compare two reports; return one Gate per model and metric. Raises ReportError (exit 2)."""
    skip = gates.skip
    base_ds = _get(baseline, ["dataset", "name"], "baseline")
    cur_ds = _get(current, ["dataset", "name"], "current")
    if base_ds != cur_ds:
        raise ReportError(f"reports are for different datasets: baseline {base_ds!r}, current {cur_ds!r}")
    out: list[Gate] = []
    for m in gates.models or ("student",):
        b, c = _entry(baseline, m, "baseline"), _entry(current, m, "current")
        if b.arch != c.arch:
            raise ReportError(f"models.{m} is a {c.arch} in the current report but a {b.arch} in the baseline")
        if "accuracy" not in skip:
            key = f"models.{m}.accuracy_onnx" if ":" not in m else f"runtimes {m} accuracy"
            b_acc = _number(b.accuracy_onnx, "baseline", key, lo=0, hi=1)
            c_acc = _number(c.accuracy_onnx, "current", key, lo=0, hi=1)
            drop = (b_acc - c_acc) * 100
            out.append(Gate(m, "accuracy", b_acc, c_acc, f"drop <= {gates.max_accuracy_drop:g} pt",
                            drop <= gates.max_accuracy_drop + 1e-9, f"{0.0 - drop:+.2f} points"))
            if gates.min_accuracy is not None:
                out.append(Gate(m, "min accuracy", None, c_acc, f">= {gates.min_accuracy:g}",
                                c_acc >= gates.min_accuracy, f"{c_acc:.4f}"))
        if "latency" not in skip:
            key = f"models.{m}.latency_ms.batch_1.p50" if ":" not in m else f"runtimes {m} latency_ms.batch_1.p50"
            b_lat = _number(b.p50(1), "baseline", key, lo=0)
            c_lat = _number(c.p50(1), "current", key, lo=0)
            ratio = c_lat / b_lat if b_lat > 0 else float("inf")
            out.append(Gate(m, "latency p50 @1 (ms)", b_lat, c_lat, f"ratio <= {gates.max_latency_ratio:g}",
                            ratio <= gates.max_latency_ratio, f"{ratio:.2f}x"))
        if "size" not in skip:
            key = f"models.{m}.onnx_bytes" if ":" not in m else f"runtimes {m} bytes"
            b_sz = int(_number(b.onnx_bytes, "baseline", key, lo=0))
            c_sz = int(_number(c.onnx_bytes, "current", key, lo=0))
            ratio = c_sz / b_sz if b_sz > 0 else float("inf")
            out.append(Gate(m, "ONNX bytes" if ":" not in m else "file bytes", b_sz, c_sz,
                            f"ratio <= {gates.max_size_ratio:g}",
                            ratio <= gates.max_size_ratio, f"{ratio:.3f}x"))
    if "int8-speed" not in skip:
        out += int8_speed_gates(current)
    return out


def int8_speed_gates(current: dict) -> list[Gate]:
    """Every INT8 file of ``current`` against its FP32 source, timed in the same rounds: a gate that fails when
    INT8 is slower at batch 1 in every round, beyond timing noise (onnxruntime's student_int8: its best per-round
    speed-up below 1; each ``--targets`` runtime's int8 row against its fp32 row: their p50 spreads apart).
    Reports without INT8 files give none."""
    out = []
    limit = ">= 1 in some round (--skip int8-speed)"
    q = ((current.get("models") or {}).get("student_int8") or {}).get("quantization")
    if isinstance(q, dict) and q.get("speedup_vs_fp32_batch_1") is not None:
        key = "models.student_int8.quantization.speedup_vs_fp32_batch_1"
        sp = _number(q["speedup_vs_fp32_batch_1"], "current", key, lo=0)
        spread = q.get("speedup_vs_fp32_batch_1_spread")
        best = _number(spread[1], "current", f"{key}_spread", lo=0) if isinstance(spread, list) and len(spread) == 2 \
            else sp
        out.append(Gate("student_int8", "INT8 speed-up vs FP32 @1", None, sp, limit, best >= 1,
                        f"{sp:.2f}x (best round {best:.2f}x)"))
    rows = (current.get("runtimes") or {}).get("rows") if isinstance(current.get("runtimes"), dict) else None
    for row in rows if isinstance(rows, list) else []:
        if not (isinstance(row, dict) and row.get("precision") == "int8" and row.get("path")
                and row.get("target") != "onnx" and row.get("runs_here") is not False):
            continue
        name = f"{row['target']}:int8"
        fp = next((r for r in rows if isinstance(r, dict) and r.get("target") == row["target"]
                   and r.get("precision") == "fp32" and r.get("path")), None)
        if fp is None:
            continue
        p8, p32 = (RuntimeRow(None, None, None, r.get("latency_ms")).p50(1) for r in (row, fp))
        if p8 is None or p32 is None:
            continue
        p8 = _number(p8, "current", f"runtimes {name} latency_ms.batch_1.p50", lo=0)
        p32 = _number(p32, "current", f"runtimes {row['target']}:fp32 latency_ms.batch_1.p50", lo=0)
        sp = p32 / p8 if p8 > 0 else float("inf")
        s8, s32 = (((r.get("latency_ms") or {}).get("batch_1") or {}).get("spread") for r in (row, fp))
        if isinstance(s8, list) and isinstance(s32, list) and len(s8) == len(s32) == 2:
            faster_once = _number(s8[0], "current", f"runtimes {name} spread", lo=0) <= \
                _number(s32[1], "current", f"runtimes {row['target']}:fp32 spread", lo=0)
        else:
            faster_once = sp >= 1
        out.append(Gate(name, "INT8 speed-up vs FP32 @1", None, sp, limit, faster_once, f"{sp:.2f}x"))
    return out


def _fmt(v: float | None, metric: str) -> str:
    if v is None:
        return "-"
    if metric.endswith("accuracy"):
        return f"{v * 100:.2f}%"
    if metric.endswith("bytes"):
        return f"{int(v):,}"
    if metric.startswith("INT8 speed-up"):
        return f"{v:.2f}x"
    return f"{v:.4f}"


def rows(gates: list[Gate]) -> list[list[str]]:
    return [[g.model, g.metric, _fmt(g.baseline, g.metric), _fmt(g.current, g.metric), g.limit, g.detail,
             "PASS" if g.passed else "FAIL"] for g in gates]


HEADER = ["model", "metric", "baseline", "current", "limit", "change", "result"]


def to_markdown(gates: list[Gate], current: str, baseline: str) -> str:
    ok = all(g.passed for g in gates)
    lines = [f"### kdexport check: {'PASS' if ok else 'FAIL'}", "",
             f"`{current}` against baseline `{baseline}`.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r[:-1] + [("✅ PASS" if r[-1] == "PASS" else "❌ FAIL")]) + " |" for r in rows(gates)]
    return "\n".join(lines) + "\n"


def to_junit(gates: list[Gate]) -> str:
    suite = ET.Element("testsuite", name="kdexport check", tests=str(len(gates)),
                       failures=str(sum(not g.passed for g in gates)), errors="0")
    for g, r in zip(gates, rows(gates)):
        case = ET.SubElement(suite, "testcase", classname=f"kdexport.check.{g.model}", name=g.metric)
        msg = f"{g.model} {g.metric}: baseline {r[2]}, current {r[3]}, limit {g.limit} ({g.detail})"
        if not g.passed:
            ET.SubElement(case, "failure", message=msg, type="regression").text = msg
        else:
            ET.SubElement(case, "system-out").text = msg
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
