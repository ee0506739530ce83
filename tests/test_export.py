import numpy as np
import pytest
import torch

from kdexport.errors import ParityError
from kdexport.export.onnx import check_parity, export_onnx
from kdexport.models.builders import ModelSpec, build_model
from kdexport.runtimes.ort import ort_logits, ort_session, read_metadata


@pytest.fixture()
def tiny(digits):
    torch.manual_seed(0)
    return build_model(ModelSpec("mlp:16", 10, (1, 8, 8))).eval()


def test_export_parity_dynamic_batch_and_metadata(tiny, digits, tmp_path):
    x = digits.normalize(digits.x_test[:64])
    res = export_onnx(tiny, tmp_path / "m.onnx", x, metadata={"class_names": digits.class_names,
                                                                "mean": list(digits.mean)})
    assert res.max_abs_diff < 1e-5 and res.top1_agreement == 1.0 and res.onnx_bytes > 1000
    sess = ort_session(tmp_path / "m.onnx")
    for b in (1, 3, 64):
        out = ort_logits(sess, x[:b].numpy())
        np.testing.assert_allclose(out, tiny(x[:b]).detach().numpy(), atol=1e-5)
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["mean"] == list(digits.mean)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_parity_failure_keeps_no_file(tiny, digits, tmp_path, monkeypatch):
    import kdexport.export.onnx as ex

    monkeypatch.setattr(ex, "check_parity", lambda *a, **k: (0.5, 0.9, 1.0))
    with pytest.raises(ParityError, match="not kept"):
        export_onnx(tiny, tmp_path / "m.onnx", digits.normalize(digits.x_test[:8]))
    assert list(tmp_path.iterdir()) == []


def test_parity_tolerance_scales_with_the_logits_unless_overridden(tiny, digits, tmp_path, monkeypatch):
    import kdexport.export.onnx as ex

    # a trained large-logit model: diff 0.05 at logit scale 100 is 5e-4 relative, within the default 1e-3
    monkeypatch.setattr(ex, "check_parity", lambda *a, **k: (0.05, 1.0, 100.0))
    res = export_onnx(tiny, tmp_path / "m.onnx", digits.normalize(digits.x_test[:8]))
    assert res.tolerance == pytest.approx(0.1) and res.parity()["logit_scale"] == 100.0
    with pytest.raises(ParityError, match="--parity-atol 0.001"):
        export_onnx(tiny, tmp_path / "n.onnx", digits.normalize(digits.x_test[:8]), atol=1e-3)
    assert ex.parity_tolerance(0.2, 1e-3, None) == pytest.approx(1e-3)  # small logits: the scale counts as 1


def test_check_parity_detects_a_different_model(tiny, digits, tmp_path):
    x = digits.normalize(digits.x_test[:32])
    export_onnx(tiny, tmp_path / "m.onnx", x)
    with torch.no_grad():
        tiny.net[-1].bias += 1.0
    diff, _, _ = check_parity(tmp_path / "m.onnx", tiny, x)
    assert diff == pytest.approx(1.0, abs=1e-4)


def test_export_cnn_parity(tmp_path):
    torch.manual_seed(0)
    m = build_model(ModelSpec("mobilenet_v3_small", 10, (3, 32, 32))).eval()
    res = export_onnx(m, tmp_path / "cnn.onnx", torch.randn(8, 3, 32, 32))
    assert res.top1_agreement == 1.0 and res.max_abs_diff < 1e-3
