"""The in-memory sets: uint8 images made float one batch at a time, batches that cover every image once."""

from __future__ import annotations

import torch


def test_floats_and_batches_are_pixels_over_255_and_cover_every_image_once(fashion):
    _, test = fashion
    small = test.subset(1000)
    assert torch.equal(small.floats(slice(0, 3)), small.images[:3].float() / 255)
    seen = torch.cat(list(small.batches(300, torch.Generator().manual_seed(1))))
    assert [len(b) for b in small.batches(300)] == [300, 300, 300, 100]
    assert not torch.equal(seen, small.floats())  # reshuffled...
    as_bytes = lambda x: sorted(map(bytes, x.mul(255).round().to(torch.uint8).numpy()))
    assert as_bytes(seen) == as_bytes(small.floats())  # ...yet every image exactly once
