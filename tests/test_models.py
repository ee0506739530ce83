import pytest
import torch

from kdexport.errors import ConfigError, ModelError, UnknownNameError
from kdexport.models.builders import MODELS, ModelSpec, build_model, count_flops, count_params


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_forward_shape(name):
    arch = "mlp:16,8" if name == "mlp" else name
    spec = ModelSpec(arch, num_classes=7, input_shape=(3, 32, 32))
    model = build_model(spec).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_seed_mnist_pair_sizes():
    t = build_model(ModelSpec("mlp:1200,1200", 10, (1, 28, 28), dropout=0.5))
    s = build_model(ModelSpec("mlp:14", 10, (1, 28, 28)))
    assert count_params(t) == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10  # ~2.4M
    assert count_params(s) == 784 * 14 + 14 + 14 * 10 + 10  # ~11k
    assert any(isinstance(m, torch.nn.Dropout) for m in t.modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in s.modules())
    assert count_flops(s, (1, 28, 28)) == 2 * (784 * 14 + 14 * 10)


def test_cifar_stem_resnet():
    plain = build_model(ModelSpec("resnet18", 10, (3, 32, 32)))
    stem = build_model(ModelSpec("resnet18", 10, (3, 32, 32), cifar_stem=True))
    assert stem.conv1.kernel_size == (3, 3) and stem.conv1.stride == (1, 1)
    assert isinstance(stem.maxpool, torch.nn.Identity)
    assert count_flops(stem, (3, 32, 32)) > 10 * count_flops(plain, (3, 32, 32))


def test_grayscale_input_on_rgb_architecture():
    m = build_model(ModelSpec("resnet18", 10, (1, 28, 28))).eval()
    assert m.conv1.in_channels == 1
    assert m(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_unknown_model_lists_choices():
    with pytest.raises(UnknownNameError) as e:
        build_model(ModelSpec("resnet9000", 10, (3, 32, 32)))
    assert "resnet18" in str(e.value) and "mlp" in str(e.value)


def test_bad_mlp_spec_and_pretrained_offline(monkeypatch):
    with pytest.raises(ConfigError, match="mlp"):
        build_model(ModelSpec("mlp:abc", 10, (1, 8, 8)))

    import torchvision

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(ModelError, match="pretrained weights for resnet18"):
        build_model(ModelSpec("resnet18", 10, (3, 32, 32)), pretrained=True)


def test_pretrained_head_is_replaced(monkeypatch):
    import torchvision

    real = torchvision.models.get_model

    def fake(name, weights=None, **kw):  # stands in for the download: a 1000-class model
        assert weights is not None
        return real(name, num_classes=1000)

    monkeypatch.setattr(torchvision.models, "get_model", fake)
    m = build_model(ModelSpec("mobilenet_v3_small", 5, (3, 32, 32)), pretrained=True)
    assert m.classifier[-1].out_features == 5
