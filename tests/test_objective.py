"""The objective's closed-form gradients, and what one iteration costs in dispatched operations.

On a GPU every tensor operation is at least one kernel launch, so the
count of operations an iteration dispatches is the CPU-side proxy for
how close an iteration gets to a bare VGG19 pass (issue 20).
"""

from __future__ import annotations

import pytest
import torch

from conftest import dispatch_counter, synthetic_painting, synthetic_photo, to_tensor
from nst_watch.config import Preset
from nst_watch.engine import Engine, FeatureExtractor
from nst_watch.engine.losses import ContentLoss, StyleLoss, TVLoss, gram_matrix
from nst_watch.engine.objective import CONTENT, STYLE, TV, StyleTransferObjective, gray_to_rgb, identity

STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


@pytest.fixture(scope="module")
def fp64_engine():
    return Engine(device="cpu", weights="random", precision="fp64")


def build(engine, content, style, *, per_image: bool, luminance: bool = False, content_layers=("relu4_2",)):
    """An objective for `content` [N, 3, H, W] from the public loss modules, with the default weights' shape."""
    extractor = FeatureExtractor(engine.features, [*content_layers, *STYLE_LAYERS], engine.preprocess)
    seen = gray_to_rgb(content.mean(1, keepdim=True)) if luminance else content
    with torch.no_grad():
        content_features = extractor(seen)
        style_features = extractor(style)
    n = len(content)
    style_losses = {}
    for k, name in enumerate(STYLE_LAYERS):
        gram = gram_matrix(style_features[name])
        if per_image:  # one target per photo, as colour matching makes
            gram = torch.cat([gram * (1 + 0.1 * i) for i in range(n)])
        style_losses[name] = StyleLoss(gram, 5.0 * (k + 1) / 15)
    content_losses = {name: ContentLoss(content_features[name], 1.5) for name in content_layers}
    return StyleTransferObjective(extractor, content_losses, style_losses, TVLoss(5.0),
                                  gray_to_rgb if luminance else identity)


def autograd_reference(objective, image):
    """The same terms through the modules' plain forward definitions, differentiated by autograd."""
    leaf = image.detach().clone().requires_grad_(True)
    features = objective.extractor(objective.render(leaf))
    content = sum(loss(features[name]) for name, loss in objective.content.items())
    style = sum(loss(features[name]) for name, loss in objective.style.items())
    tv = objective.tv(leaf)
    (content + style + tv).sum().backward()
    return torch.stack([content, style, tv]).detach(), leaf.grad


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_closed_form_gradients_equal_autograd_through_the_plain_losses(fp64_engine, per_image, channels_last):
    g = torch.Generator().manual_seed(1)
    content = torch.rand(2, 3, 40, 56, generator=g, dtype=torch.float64)
    image = (content + 0.2 * torch.randn(2, 3, 40, 56, generator=g, dtype=torch.float64)).clamp(0, 1)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    style = torch.rand(1, 3, 48, 48, generator=g, dtype=torch.float64)
    objective = build(fp64_engine, content, style, per_image=per_image, content_layers=("relu4_2", "relu3_1"))
    terms, gradient = objective.terms_and_gradient(image)
    expected_terms, expected_gradient = autograd_reference(objective, image)
    assert terms.shape == (3, 2)
    assert torch.allclose(terms, expected_terms, rtol=1e-10)
    assert torch.allclose(terms, objective.terms(image), rtol=1e-10)
    assert torch.allclose(gradient, expected_gradient, rtol=1e-8, atol=1e-12 * expected_gradient.abs().max())
    assert float(terms[TV].min()) > 0 and float(terms[CONTENT].min()) > 0 and float(terms[STYLE].min()) > 0


def test_closed_form_gradient_of_a_luminance_only_image(fp64_engine):
    g = torch.Generator().manual_seed(2)
    content = torch.rand(1, 3, 32, 48, generator=g, dtype=torch.float64)
    image = torch.rand(1, 1, 32, 48, generator=g, dtype=torch.float64)
    style = torch.rand(1, 3, 32, 32, generator=g, dtype=torch.float64)
    objective = build(fp64_engine, content, style, per_image=False, luminance=True)
    terms, gradient = objective.terms_and_gradient(image)
    expected_terms, expected_gradient = autograd_reference(objective, image)
    assert gradient.shape == (1, 1, 32, 48)
    assert torch.allclose(terms, expected_terms, rtol=1e-10)
    assert torch.allclose(gradient, expected_gradient, rtol=1e-8, atol=1e-12 * expected_gradient.abs().max())


def per_iteration(engine, history: int) -> tuple[float, float]:
    """Operations dispatched per iteration of Engine.stylize, between its 20th and 40th iteration."""
    photo, painting = to_tensor(synthetic_photo(48, 64, seed=1)), to_tensor(synthetic_painting(48, 64, seed=2))
    preset = Preset(name="ops", styles=["s.png"], size=64, iterations=50, pyramid=None, early_stop=None,
                    history_size=history)
    seen = {}
    with dispatch_counter() as counter:
        engine.stylize([photo], preset, [painting], progress=lambda e: seen.setdefault(e.iteration, counter.totals()))
    (all_20, kernels_20), (all_40, kernels_40) = seen[20], seen[40]
    return (all_40 - all_20) / 20, (kernels_40 - kernels_20) / 20


def bare_pass(engine) -> tuple[int, int]:
    """Operations of a bare VGG19 forward and backward to relu5_1, on the engine's network."""
    x = torch.rand(1, 3, 48, 64).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    extractor = FeatureExtractor(engine.features, ["relu5_1"], engine.preprocess)
    with dispatch_counter() as counter:
        extractor(x)["relu5_1"].sum().backward()
    return counter.totals()


def test_an_iteration_costs_at_most_twice_the_kernels_of_a_bare_vgg_pass_whatever_the_history(random_engine):
    # As on a GPU: read the losses back every 10 iterations, not every one (a CPU reads each for free).
    every, random_engine.report_every = random_engine.report_every, 10
    try:
        counts = {history: per_iteration(random_engine, history) for history in (5, 50)}
    finally:
        random_engine.report_every = every
    bare_all, bare_kernels = bare_pass(random_engine)
    assert counts[5] == counts[50]  # independent of the L-BFGS history (the two-loop recursion: 11 per pair)
    all_ops, kernels = counts[50]
    assert kernels <= 2 * bare_kernels, f"{kernels} kernel launches an iteration against {bare_kernels}"
    # Views and autograd's bookkeeping launch nothing, but each costs a few microseconds on the host.
    assert all_ops <= 2.2 * bare_all, f"{all_ops} operations an iteration against {bare_all}"
