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
    return {"mlp": "mlp:16,8", "timm": "timm:resnet10t"}.get(name, name)


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
