import pytest
import torch

from kdexport.errors import ConfigError, ModelError, UnknownNameError
from kdexport.models.builders import MODELS, ModelSpec, build_model, count_flops, count_params

# The smallest square input each torchvision classifier takes (32 unless listed); a ViT's is its patch
# multiple (the builder sizes its position embedding to the data).
_SIZES = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 224, "vit_h_14": 28}
# Over ~60M parameters or a second to build on 2 cores: the slow suite builds them.
_HEAVY = {"convnext_base", "convnext_large", "efficientnet_v2_l", "maxvit_t", "regnet_x_32gf", "regnet_y_16gf",
          "regnet_y_32gf", "regnet_y_128gf", "resnext101_32x8d", "resnext101_64x4d", "swin_b", "swin_v2_b",
          "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32", "wide_resnet50_2", "wide_resnet101_2",
          "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"}


def _arch(name: str) -> str:
    return {"mlp": "mlp:16,8", "timm": "timm:resnet10t", "ensemble": "ensemble:2xresnet8"}.get(name, name)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _HEAVY else n
                                  for n in MODELS.names()])
def test_every_registered_model_forward_shape(name):
    if name == "timm":
        pytest.importorskip("timm")
    size = _SIZES.get(name, 32)
    spec = ModelSpec(_arch(name), num_classes=7, input_shape=(3, size, size))
    model = build_model(spec).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_every_torchvision_classifier_is_registered():
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    assert len(names) >= 80 and set(names) <= set(MODELS.names())
    assert {"densenet121", "squeezenet1_1", "convnext_tiny"} <= set(MODELS.names())


def test_a_fixed_size_architecture_says_which_image_size_it_needs():
    with pytest.raises(ModelError, match=r"at least 224x224: pass --image-size 224"):
        build_model(ModelSpec("maxvit_t", 10, (3, 32, 32)))


def test_cifar_stem_applies_or_says_why_not():
    notes = []
    m = build_model(ModelSpec("vgg11", 10, (3, 32, 32), cifar_stem=True), log=notes.append)
    assert notes == ["--cifar-stem does not apply to vgg11 (its first conv already has stride 1); built unchanged"]
    m = build_model(ModelSpec("mobilenet_v3_small", 10, (3, 32, 32), cifar_stem=True), log=notes.append)
    assert m.features[0][0].stride == (1, 1) and len(notes) == 1
    with pytest.raises(ConfigError, match="patch embedding"):
        build_model(ModelSpec("convnext_tiny", 10, (3, 32, 32), cifar_stem=True))


def test_timm_models_by_name():
    pytest.importorskip("timm")
    m = build_model(ModelSpec("timm:resnet10t", 5, (1, 32, 32))).eval()
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 5)
    with pytest.raises(ConfigError, match="timm has no model 'nonexistent_net'"):
        build_model(ModelSpec("timm:nonexistent_net", 5, (3, 32, 32)))


def test_timm_missing_gives_one_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_timm(name, *a, **k):
        if name == "timm":
            raise ImportError("no timm")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ModelError, match=r"needs timm, which is not installed: pip install 'kdexport\[timm\]'"):
        build_model(ModelSpec("timm:resnet10t", 5, (3, 32, 32)))


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

    monkeypatch.setattr(torchvision.models, "get_model_weights", offline)
    with pytest.raises(ModelError, match="pretrained weights for resnet18"):
        build_model(ModelSpec("resnet18", 10, (3, 32, 32)), pretrained=True)


class _FakeWeights:
    """Stands in for torchvision's download: the weights of a 1000-class model."""

    def __init__(self, name):
        import torchvision

        torch.manual_seed(123)
        self.state = torchvision.models.get_model(name, num_classes=1000).state_dict()
        self.DEFAULT = self

    def get_state_dict(self, progress=True):
        return self.state


@pytest.mark.parametrize("name,head", [("mobilenet_v3_small", "classifier.3.weight"),
                                       ("squeezenet1_1", "classifier.1.weight")])  # a Linear and a Conv head
def test_pretrained_weights_load_all_but_the_head(monkeypatch, name, head):
    import torchvision

    fake = _FakeWeights(name)
    monkeypatch.setattr(torchvision.models, "get_model_weights", lambda n: fake)
    m = build_model(ModelSpec(name, 5, (3, 32, 32)), pretrained=True)
    sd = m.state_dict()
    assert sd[head].shape[0] == 5  # sized for this data's classes
    loaded = [k for k, v in fake.state.items() if k in sd and sd[k].shape == v.shape]
    assert loaded and all(torch.equal(sd[k], fake.state[k]) for k in loaded)


# -- kdexport's own small-image models (CIFAR ResNets, fastcifar) --------------------------------------------
def test_cifar_resnet20_has_the_hand_counted_parameters():
    from kdexport.models.builders import count_params

    # stem 3*16*9 + BN 32 = 464; stage 1: 3 blocks of 2 x (16*16*9 + BN 32) = 14,016; stage 2: 16*32*9 + 32*32*9
    # + 2 BN 128 + 1x1 shortcut 16*32 + BN 64 = 14,528, then 2 x (2 x 32*32*9 + 128) = 37,120; stage 3 likewise
    # 57,728 + 147,968; head 64*10 + 10 = 650. Total 272,474 (He et al.: "0.27M").
    m = build_model(ModelSpec("resnet20", 10, (3, 32, 32)))
    assert count_params(m) == 464 + 14_016 + 14_528 + 37_120 + 57_728 + 147_968 + 650 == 272_474
    assert count_params(build_model(ModelSpec("resnet8x4", 100, (3, 32, 32)))) > 1_200_000  # CRD: 1.23M


def test_fastcifar_width_and_input_channels():
    m = build_model(ModelSpec("fastcifar:0.5", 10, (3, 32, 32)))
    assert m.group1.conv1.out_channels == 32 and m.group3.conv2.out_channels == 128
    assert m.whiten.out_channels == 24 and not m.whiten.weight.requires_grad  # 2 x 3 x 2 x 2, frozen
    g = build_model(ModelSpec("fastcifar", 10, (1, 28, 28)))
    assert g.whiten.out_channels == 8 and g(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match="width multiplier"):
        build_model(ModelSpec("fastcifar:wide", 10, (3, 32, 32)))
    with pytest.raises(ModelError, match="no pretrained weights"):
        build_model(ModelSpec("resnet20", 10, (3, 32, 32)), pretrained=True)
    with pytest.raises(ConfigError, match="takes no ':' arguments"):
        build_model(ModelSpec("resnet20:2", 10, (3, 32, 32)))


def test_fastcifar_whitening_init_decorrelates_patches():
    torch.manual_seed(0)
    base = torch.randn(200, 1, 16, 16)
    x = torch.cat([base, 0.9 * base + 0.1 * torch.randn_like(base), torch.randn(200, 1, 16, 16) * 3], 1)
    m = build_model(ModelSpec("fastcifar", 10, (3, 16, 16)))
    m.data_init(x, eps=1e-9)  # (the default eps damps the tiniest eigen-directions a little, as airbench does)
    with torch.no_grad():
        y = torch.nn.functional.conv2d(x, m.whiten.weight[:12])  # the first half: eigenvectors / sqrt(lambda)
    f = y.permute(1, 0, 2, 3).reshape(12, -1)
    cov = (f @ f.T) / f.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=1e-3)  # whitened: unit variance, no correlation
    assert torch.equal(m.whiten.weight[12:], -m.whiten.weight[:12])


def test_fit_initializes_from_data_unless_told_not_to(digits):
    from kdexport.config import TrainConfig
    from kdexport.distill.train import fit

    spec = ModelSpec("fastcifar:0.25", 10, (1, 8, 8))
    with pytest.raises(ModelError):  # 8x8 is too small for three pooling stages: one clear line
        build_model(spec)
    import dataclasses

    data = dataclasses.replace(digits, x_train=torch.nn.functional.interpolate(
        digits.x_train[:64].float(), size=32).to(digits.x_train.dtype), y_train=digits.y_train[:64],
        x_test=torch.nn.functional.interpolate(digits.x_test[:16].float(), size=32).to(digits.x_test.dtype),
        y_test=digits.y_test[:16])
    spec = ModelSpec("fastcifar:0.25", 10, (1, 32, 32))
    for data_init in (True, False):
        torch.manual_seed(0)
        m = build_model(spec)
        w0 = m.whiten.weight.clone()
        fit(m, data, TrainConfig(epochs=1, batch_size=32), data_init=data_init)
        assert torch.equal(w0, m.whiten.weight) != data_init  # frozen: only data_init changes it


def test_fastcifar_pool_is_a_global_max_that_older_onnx_exporters_translate():
    from kdexport.models.cifar import _GlobalMaxPool

    x = torch.tensor([[[[1.0, 5.0], [5.0, -2.0]], [[-3.0, -1.0], [-4.0, -2.0]]]], requires_grad=True)
    y = _GlobalMaxPool()(x)
    assert y.shape == (1, 2, 1, 1) and y.flatten().tolist() == [5.0, -1.0]
    y.sum().backward()  # like AdaptiveMaxPool2d(1): the gradient goes to one maximum, a tie is not split
    assert x.grad.flatten().tolist().count(1.0) == 2 and x.grad.sum().item() == 2.0
    assert x.grad[0, 1].flatten().tolist() == [0.0, 1.0, 0.0, 0.0]
    z = torch.randn(3, 4, 5, 5)
    assert torch.equal(_GlobalMaxPool()(z), torch.nn.AdaptiveMaxPool2d(1)(z))
    # torch 2.11's ONNX exporter (the GPU machine's) fails on aten.adaptive_max_pool2d: the graph holds none
    m = build_model(ModelSpec("fastcifar:0.25", 10, (3, 32, 32))).eval()
    graph = torch.export.export(m, (torch.randn(2, 3, 32, 32),)).graph
    assert not [n for n in graph.nodes if "adaptive_max_pool" in str(n.target)]


@pytest.mark.parametrize("arch", ["resnet8", "fastcifar:0.25"])
def test_small_image_models_export_with_parity(arch, tmp_path):
    from kdexport.export.onnx import export_onnx

    torch.manual_seed(0)
    m = build_model(ModelSpec(arch, 10, (3, 32, 32))).eval()
    if hasattr(m, "data_init"):
        m.data_init(torch.randn(64, 3, 32, 32))
    res = export_onnx(m, tmp_path / "m.onnx", torch.randn(16, 3, 32, 32))
    assert res.top1_agreement == 1.0


def test_select_offers_small_image_models_for_small_images_only():
    from kdexport.bench.select import SMALL_IMAGE_CANDIDATES, default_candidates

    assert set(SMALL_IMAGE_CANDIDATES) <= set(default_candidates((3, 32, 32)))
    assert not set(SMALL_IMAGE_CANDIDATES) & set(default_candidates((3, 224, 224)))
