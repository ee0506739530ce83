"""Slow tests on the real datasets in ../shared/datasets (skipped when absent)."""

import json

import pytest
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.data.datasets import load_dataset

from .conftest import shared_data

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_mnist_seed_experiment_end_to_end(tmp_path):
    root = shared_data("MNIST")
    out = tmp_path / "mnist"
    res = runner.invoke(app, ["distill-export", "--dataset", "mnist", "--data-dir", str(root.parent),
                              "--teacher", "mlp:1200,1200", "--student", "mlp:14", "--epochs", "2",
                              "--lr", "1e-3", "--batch-size", "128", "--bench-iters", "20",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    assert r["dataset"]["train_size"] == 60000 and r["dataset"]["test_size"] == 10000
    assert r["models"]["teacher"]["accuracy_onnx"] > 0.95
    assert r["models"]["student"]["accuracy_onnx"] > 0.88
    assert r["models"]["student"]["params"] == 784 * 14 + 14 + 14 * 10 + 10


def test_cifar10_jpeg_loads_as_imagefolder_and_as_cifar10():
    root = shared_data("cifar10-jpeg")
    ds = load_dataset("imagefolder", root)
    assert ds.input_shape == (3, 32, 32) and len(ds.y_train) == 50000 and len(ds.y_test) == 10000
    assert ds.class_names[:3] == ["airplane", "automobile", "bird"]
    assert abs(ds.mean[0] - 0.4913) < 0.002
    assert load_dataset("cifar10", root.parent).name == "cifar10"
