"""--config FILE and --print-config: a file gives values, the command line overrides them, every bad file is one
line (exit 2), and the run-config.json a run records reruns it exactly."""

import json

import pytest
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import RunConfig, to_file_dict

from .conftest import FAST

runner = CliRunner()


def _print(*args: str) -> dict:
    res = runner.invoke(app, [*args, "--print-config"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_print_config_without_a_file_is_the_default_config():
    assert _print("distill-export") == to_file_dict(RunConfig())


def test_file_values_nested_flat_or_flag_spelled_and_the_command_line_wins(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("teacher: mlp:64\nkd:\n  temperature: 2\ntrain: {epochs: 3, lr: 0.01}\nkd-loss: dkd\n"
                 "batch_size: 32\ncandidates: [mlp:8, mlp:16]\n")
    d = _print("distill-export", "--config", str(f), "--epochs", "5", "--student", "mlp:8")
    assert d["teacher"] == "mlp:64" and d["kd"]["temperature"] == 2.0 and d["kd"]["loss"] == "dkd"
    assert d["train"]["lr"] == 0.01 and d["train"]["batch_size"] == 32 and d["candidates"] == ["mlp:8", "mlp:16"]
    assert d["train"]["epochs"] == 5 and d["student"] == "mlp:8"  # given on the command line: they win
    assert d["kd"]["soft_weight"] == RunConfig().kd.soft_weight  # in neither: the default


def test_json_files_and_list_options_as_lists_or_text(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"seeds": [3, 4], "temperature": "2,8", "scale_t2": [True, False], "epochs": 2}))
    d = _print("sweep", "--config", str(f))
    assert d["seeds"] == [3, 4] and d["temperatures"] == [2.0, 8.0] and d["scale_t2"] == [True, False]
    assert "temperature" not in d["kd"] and d["train"]["epochs"] == 2  # the grid replaces the single values
    b = tmp_path / "b.yaml"
    b.write_text("batch_sizes: [1, 8]\nthreads: 1\n")
    d = _print("bench", "m.onnx", "--config", str(b))
    assert d["batch_sizes"] == [1, 8] and d["threads"] == [1]  # one value: a list of one


@pytest.mark.parametrize("text,name,msg", [
    ("epochs: ten\n", "c.yaml", "config file '{f}': epochs must be an integer, got 'ten'"),
    ("train: {epoch: 3}\n", "c.yaml", "config file '{f}': 'train.epoch' is not an option of kdexport distill-export"),
    ("temperature: [1, 2]\n", "c.yaml", "temperature must be a number, got [1, 2]"),
    ("- 1\n- 2\n", "c.yaml", "must hold a mapping of option names to values, not a list"),
    ("teacher: [unclosed\n", "c.yaml", "is not valid YAML"),
    ('{"epochs": 3,}', "c.json", "is not valid JSON"),
    ("epochs: 3\ntrain: {epochs: 4}\n", "c.yaml", "gives 'epochs' twice"),
    ("dataset: svhn\n", "c.yaml", "unknown dataset 'svhn'; choose one of:"),
    ("kd: {temperature: -1}\n", "c.yaml", "temperature must be > 0"),
])
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path, text, name, msg):
    f = tmp_path / name
    f.write_text(text)
    res = runner.invoke(app, ["distill-export", "--config", str(f), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert res.output.count("error:") == 1 and "Traceback" not in res.output
    assert msg.format(f=f) in " ".join(res.output.split())
    assert not (tmp_path / "o").exists()


def test_a_missing_file_and_an_argument_in_a_file(tmp_path):
    res = runner.invoke(app, ["distill-export", "--config", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.output
    f = tmp_path / "q.yaml"
    f.write_text("model: m.onnx\n")
    res = runner.invoke(app, ["quantize", "m.onnx", "--out", "q.onnx", "--config", str(f)])
    assert res.exit_code == 2 and "a positional argument: give it on the command line" in res.output


def test_a_sweep_refuses_the_single_values_its_grid_replaces(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("kd: {temperature: 4}\n")
    res = runner.invoke(app, ["sweep", "--config", str(f)])
    assert res.exit_code == 2 and "'kd.temperature' is not an option of kdexport sweep" in res.output


def test_a_recorded_run_config_reruns_the_run_exactly(finished_run, tmp_path):
    """run-config.json holds every option but where the run was written; --config reruns it into a new folder
    with the same config and, on this CPU, the same accuracies bit for bit."""
    recorded = json.loads((finished_run.out / "run-config.json").read_text())
    assert not {"out", "overwrite", "resume"} & set(recorded)
    res = runner.invoke(app, ["distill-export", "--config", str(finished_run.out / "run-config.json"),
                              "--out", str(tmp_path / "again")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    first = finished_run.report
    assert {**again["config"], "out": None} == {**first["config"], "out": None}
    for role in ("teacher", "baseline", "student", "student_int8"):
        assert again["models"][role]["accuracy_onnx"] == first["models"][role]["accuracy_onnx"], role


def test_a_sweep_records_its_grid(tmp_path):
    out = tmp_path / "s"
    res = runner.invoke(app, ["sweep", "--out", str(out), *FAST, "--temperature", "4", "--soft-weight", "0.5",
                              "--seeds", "0"])
    assert res.exit_code == 0, res.output
    recorded = json.loads((out / "run-config.json").read_text())
    assert recorded["temperatures"] == [4.0] and recorded["seeds"] == [0] and "temperature" not in recorded["kd"]
    assert _print("sweep", "--config", str(out / "run-config.json")) == {**recorded, "out": None, "overwrite": False,
                                                                        "shard": None, "merge": False,
                                                                        "resume": False}
