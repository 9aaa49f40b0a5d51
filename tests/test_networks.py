"""The networks' shapes, and the feature maps nearest-neighbour scoring reads from them."""

import pytest
import torch

from patchgan_fast.models import PatchDiscriminator, Reconstructor


@pytest.mark.parametrize("skips", [False, True])
def test_reconstructor_encodes_to_its_bottleneck_and_reconstructs_the_input_shape(skips):
    r = Reconstructor(3, width=8, depth=2, skips=skips)
    x = torch.randn(2, 3, 32, 24)
    assert r.encode(x).shape == (2, 32, 8, 6) and r(x).shape == x.shape
    with pytest.raises(ValueError, match=r"expected H and W multiples of the network stride 4, got \(30, 24\)"):
        r.encode(x[..., :30, :])


def test_discriminator_features_are_its_last_stride_2_stage():
    d = PatchDiscriminator(1, width=8, layers=3)
    x = torch.randn(2, 1, 32, 32)
    assert d.features(x).shape == (2, 32, 4, 4) and d(x).shape == (2, 1, 2, 2)
    torch.testing.assert_close(d.net[-4:](d.features(x)), d(x))
