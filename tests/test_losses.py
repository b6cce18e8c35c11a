"""The chapter's cross-entropy, computed faster than torch does it, must be torch's: the same loss to float
rounding and the same gradient to the bit, so training is unchanged."""

import pytest
import torch
import torch.nn.functional as F

from aelab.losses import bce_mean, bce_per_image


@pytest.mark.parametrize("shape", [(512, 1, 28, 28), (7, 3, 32, 32), (5, 13)])
def test_bce_matches_torch_to_rounding_and_its_gradient_to_the_bit(shape):
    torch.manual_seed(0)
    logits, x = torch.randn(shape) * 6, torch.rand(shape)
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    mean, expected = bce_mean(ours, x), F.binary_cross_entropy_with_logits(theirs, x)
    mean.backward(), expected.backward()
    assert mean.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(ours.grad, theirs.grad)

    ours.grad = theirs.grad = None
    weights = torch.randn(shape[0])
    rows = bce_per_image(ours, x)
    expected = F.binary_cross_entropy_with_logits(theirs, x, reduction="none").flatten(1).sum(1)
    (rows * weights).sum().backward(), (expected * weights).sum().backward()
    torch.testing.assert_close(rows, expected, rtol=1e-6, atol=0)
    assert torch.equal(ours.grad, theirs.grad)


def test_bce_holds_at_extreme_logits():
    logits = torch.tensor([[-100.0, -20, -5, 0, 5, 20, 100, 1e-3]] * 2)
    x = torch.tensor([[0, 1, 0.5, 0.3, 1, 0, 1, 0.0]] * 2)
    expected = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
    torch.testing.assert_close(bce_per_image(logits, x), expected, rtol=1e-6, atol=0)
    assert torch.isfinite(bce_mean(logits, x))
