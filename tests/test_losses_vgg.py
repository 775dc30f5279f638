"""Losses and the VGG19 layer map, against hand computations."""

import pytest
import torch
from torchvision.models import vgg19

from nst_watch.engine import LAYER_NAMES, ContentLoss, FeatureExtractor, StyleLoss, TVLoss, gram_matrix, layer_index
from nst_watch.engine.vgg import build_features
from nst_watch.engine.weights import load_weights


def test_gram_matrix_matches_hand_computation():
    # One image, two channels, 2x2 positions.
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, -1.0]]]])
    f0, f1 = [1, 2, 3, 4], [0, 1, 0, -1]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    expected = torch.tensor([[dot(f0, f0), dot(f0, f1)], [dot(f1, f0), dot(f1, f1)]]) / 4
    assert torch.allclose(gram_matrix(features)[0], expected)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_gram_gradient_matches_plain_autograd(memory_format):
    # The Gram has a hand-written one-matmul backward; it must agree with
    # autograd's own two-matmul derivative, in double precision and as used.
    features = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=memory_format)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: gram_matrix(f.float()).double(), (features,), eps=1e-3, atol=1e-2)
    x = torch.randn(2, 16, 6, 7).contiguous(memory_format=memory_format).requires_grad_(True)
    weight = torch.randn(2, 16, 16)
    (gram_matrix(x) * weight).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    flat = reference.reshape(2, 16, 42)
    ((flat @ flat.transpose(1, 2) / 42) * weight).sum().backward()
    assert torch.allclose(x.grad, reference.grad, atol=1e-5)


def test_gram_is_float32_even_under_bf16_autocast():
    features = torch.randn(1, 8, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gram_matrix(features).dtype == torch.float32


def test_content_and_style_losses_are_zero_for_identical_inputs_and_positive_otherwise():
    a, b = torch.rand(2, 1, 16, 8, 8).unbind(0)
    assert ContentLoss(a)(a).item() == 0
    assert ContentLoss(a)(b).item() > 0
    assert StyleLoss(gram_matrix(a)[0])(a).item() == pytest.approx(0, abs=1e-12)
    assert StyleLoss(gram_matrix(a)[0])(b).item() > 0


def test_losses_are_per_image():
    target = torch.rand(1, 4, 6, 6)
    batch = torch.cat([target, torch.rand(1, 4, 6, 6)])
    loss = ContentLoss(target)(batch)
    assert loss.shape == (2,) and loss[0] == 0 and loss[1] > 0


def test_tv_loss_is_zero_for_flat_image_and_grows_with_noise():
    flat = torch.full((1, 3, 8, 8), 0.5)
    assert TVLoss()(flat).item() == 0
    assert TVLoss()(flat + 0.1 * torch.rand_like(flat)).item() > 0


def test_layer_names_map_to_torchvision_indices():
    assert layer_index("relu4_2") == 22
    assert layer_index("relu5_1") == 29
    assert layer_index("relu1_1") == 1 and layer_index("conv4_2") == 21 and layer_index("pool5") == 36
    reference = vgg19(weights=None).features
    assert len(LAYER_NAMES) == len(reference)
    for name, module in zip(LAYER_NAMES, reference):
        kind = {"conv": torch.nn.Conv2d, "relu": torch.nn.ReLU, "pool": torch.nn.MaxPool2d}[name[:4]]
        assert isinstance(module, kind), name


@pytest.fixture(scope="module")
def features():
    weights = load_weights("random")
    return weights, build_features(weights.state_dict, padding="zeros")


def test_extractor_stops_at_deepest_requested_layer(features):
    weights, net = features
    extractor = FeatureExtractor(net, ["relu1_1", "relu3_1"], weights.preprocess)
    assert len(extractor.net) == layer_index("relu3_1") + 1
    out = extractor(torch.rand(1, 3, 32, 32))
    assert set(out) == {"relu1_1", "relu3_1"}
    assert out["relu3_1"].shape == (1, 256, 8, 8)


def test_extractor_matches_torchvision_and_conv_outputs_survive_relu(features):
    weights, net = features
    reference = vgg19(weights=None).features.eval()
    reference.load_state_dict({k[len("features."):]: v for k, v in weights.state_dict.items()})
    image = torch.rand(1, 3, 32, 32)
    out = FeatureExtractor(net, ["conv4_2", "relu4_2"], weights.preprocess)(image)
    x = weights.preprocess.apply(image)
    with torch.no_grad():
        expected = reference[:23](x)
        conv = reference[:22](x)
    assert torch.allclose(out["relu4_2"], expected, atol=1e-5)
    # torchvision's in-place ReLU would have clobbered the conv4_2 capture.
    assert (out["conv4_2"] < 0).any()
    assert torch.allclose(out["conv4_2"], conv, atol=1e-5)


def test_network_is_frozen_and_avg_pooling_keeps_magnitude(features):
    weights, net = features
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.training
    avg = build_features(weights.state_dict, pooling="avg")
    image = torch.rand(1, 3, 32, 32)
    max_out = FeatureExtractor(net, ["relu5_1"], weights.preprocess)(image)["relu5_1"]
    avg_out = FeatureExtractor(avg, ["relu5_1"], weights.preprocess)(image)["relu5_1"]
    # Unscaled average pooling would shrink relu5_1 by ~16x (2 per pool);
    # the rescaled version stays within a small factor of max pooling.
    ratio = avg_out.abs().mean() / max_out.abs().mean()
    assert 0.1 < ratio < 10


def test_replicate_padding_on_first_conv_only(features):
    weights, _ = features
    net = build_features(weights.state_dict, padding="replicate")
    assert net[0].padding_mode == "replicate"
    assert net[2].padding_mode == "zeros"
