"""Residual-stream equalization before static INT8 (kdexport.export.equalize)."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from kdexport.config import QuantConfig
from kdexport.data.datasets import Dataset
from kdexport.export.equalize import equalize_residual_streams, find_streams
from kdexport.export.onnx import export_onnx
from kdexport.models.builders import ModelSpec, build_model
from kdexport.runtimes.ort import ort_logits, ort_session, read_metadata


def _data(n: int = 64, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset("imagefolder", x, y, x[:32], y[:32], [str(i) for i in range(10)], (0.5,) * 3, (0.25,) * 3)


def _resnet18_with_outlier_channel() -> nn.Module:
    """A CIFAR-stem resnet18 whose layer2 stream has one channel ~30x the others, as trained ResNets do."""
    torch.manual_seed(0)
    m = build_model(ModelSpec("resnet18", 10, (3, 32, 32), cifar_stem=True)).eval()
    with torch.no_grad():
        m.layer2[0].downsample[1].weight[5] *= 30
        m.layer2[0].bn2.weight[5] *= 30
        m.layer2[1].bn2.weight[5] *= 30
    return m


def _logits(path, x: np.ndarray) -> np.ndarray:
    return ort_logits(ort_session(path, threads=2), x)


def test_equalization_is_exact_and_flattens_the_outlier_channel(tmp_path):
    data = _data()
    x = data.normalize(data.x_test).numpy()
    export_onnx(_resnet18_with_outlier_channel(), tmp_path / "r.onnx", torch.from_numpy(x[:8]))
    model = onnx.load(str(tmp_path / "r.onnx"))
    streams = find_streams(model.graph)
    # one stream per stage; layer1's includes the stem conv (its ReLU output is the first shortcut)
    assert [(len(s.producers), len(s.consumers)) for s in streams] == [(3, 4), (3, 3), (3, 3), (3, 2)]
    before = _logits(tmp_path / "r.onnx", x)
    res = equalize_residual_streams(model, [x[:32]])
    onnx.save(model, str(tmp_path / "eq.onnx"))
    after = _logits(tmp_path / "eq.onnx", x)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    assert (res.streams, res.tensors) == (4, 29)
    assert res.range_ratio_before > 20 and res.range_ratio_after < res.range_ratio_before / 4


@pytest.mark.slow  # two static quantizations of a resnet18 (CI's slow stage)
def test_equalized_int8_tracks_fp32_better(tmp_path):
    """Same calibration, same quantizer: equalizing the stream first brings the INT8 logits closer to FP32."""
    from kdexport.export.quantize import quantize_onnx

    data = _data()
    x = data.normalize(data.x_test).numpy()
    export_onnx(_resnet18_with_outlier_channel(), tmp_path / "r.onnx", torch.from_numpy(x[:8]))
    fp32 = _logits(tmp_path / "r.onnx", x)
    err = {}
    for eq in (False, True):
        out = tmp_path / f"r8-{eq}.onnx"
        r = quantize_onnx(tmp_path / "r.onnx", out, data, mode="static",
                          quant=QuantConfig(calibration_samples=64, max_accuracy_drop=100, equalize=eq))
        assert (r.equalization is not None) == eq
        recorded = read_metadata(out)["quantization"]["equalization"]
        assert (recorded["streams"] if eq else recorded) == (4 if eq else None)
        err[eq] = float(np.sqrt(((_logits(out, x) - fp32) ** 2).mean()))
    assert err[True] < 0.8 * err[False]  # 0.107 vs 0.154 when written


class _Residual(nn.Module):
    def __init__(self, tail: str):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.fc, self.tail = nn.Linear(8, 4), tail

    def forward(self, x):
        h = torch.relu(self.stem(x))
        y = torch.relu(self.b(torch.relu(self.a(h))) + h)
        if self.tail == "sigmoid":  # a consumer that does not commute with per-channel scaling
            y = torch.sigmoid(y)
        if self.tail == "channel-mean":  # pooling across channels mixes them
            return self.fc(y.mean(dim=1).flatten(1)[:, :8])
        return self.fc(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("tail,found", [("pool", 1), ("sigmoid", 0), ("channel-mean", 0)])
def test_streams_with_other_consumers_are_left_alone(tmp_path, tail, found):
    torch.manual_seed(0)
    export_onnx(_Residual(tail).eval(), tmp_path / "m.onnx", torch.randn(4, 3, 8, 8))
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert len(find_streams(model.graph)) == found
    x = np.random.RandomState(0).randn(4, 3, 8, 8).astype(np.float32)
    before = _logits(tmp_path / "m.onnx", x)
    res = equalize_residual_streams(model, [x])
    onnx.save(model, str(tmp_path / "eq.onnx"))
    assert res.streams == found
    np.testing.assert_allclose(_logits(tmp_path / "eq.onnx", x), before, rtol=1e-4, atol=1e-5)
