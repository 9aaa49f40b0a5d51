"""The Patch-GAN's networks as plain modules: the masked-image reconstructor R and the PatchGAN
discriminator D (Chen et al., eq. 1-3). No training code here; see ``patchgan_fast.models.training``."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm: an image's reconstruction never depends on the other images of its batch.
    return nn.GroupNorm(min(8, channels), channels)


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), _norm(cout), nn.SiLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(cout), nn.SiLU(inplace=True),
        )


class Reconstructor(nn.Module):
    """Encoder-decoder that fills in the hidden regions of a masked image.

    The encoder halves the resolution ``depth`` times (so H and W must be multiples of ``2**depth``),
    doubling the width up to ``max_width``; the decoder mirrors it with nearest-neighbour upsampling.
    Skip connections are optional and off by default: they let the decoder copy visible pixels,
    which also repairs anomalies (see ``shared/QUALITY-NOTES.md``).

    Args:
        channels: 1 (MRI, X-ray) or 3 (dermoscopy, histology).
        width: channels of the first stage.
        depth: number of stride-2 stages.
        max_width: cap on the channel count.
        skips: add U-Net skip connections.

    Shape:
        ``[N, C, H, W] -> [N, C, H, W]``, in the normalized intensity space of its inputs.
    """

    def __init__(self, channels: int = 1, width: int = 32, depth: int = 4, max_width: int = 256, skips: bool = False):
        super().__init__()
        if channels < 1 or width < 1 or depth < 1:
            raise ValueError(f"expected channels, width, depth >= 1, got {channels}, {width}, {depth}")
        self.channels, self.depth, self.skips = channels, depth, skips
        widths = [min(width * 2**i, max_width) for i in range(depth + 1)]
        self.stem = _Block(channels, widths[0])
        self.down = nn.ModuleList(_Block(widths[i], widths[i + 1], stride=2) for i in range(depth))
        self.bottleneck = _Block(widths[-1], widths[-1])
        self.up = nn.ModuleList(
            _Block(widths[i + 1] + (widths[i] if skips else 0), widths[i]) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], channels, 1)
        self.stride = 2**depth

    def _encode(self, x: Tensor) -> list[Tensor]:
        """The stem's and every stage's outputs, then the bottleneck's."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected input [N, {self.channels}, H, W], got {tuple(x.shape)}")
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"expected H and W multiples of the network stride {self.stride}, got {tuple(x.shape[-2:])}")
        h = self.stem(x)
        feats = [h]
        for block in self.down:
            h = block(h)
            feats.append(h)
        feats.append(self.bottleneck(h))
        return feats

    def encode(self, x: Tensor) -> Tensor:
        """The bottleneck features of ``x``: ``[N, C, H, W] -> [N, min(width * 2**depth, max_width), H / 2**depth,
        W / 2**depth]``."""
        return self._encode(x)[-1]

    def forward(self, x: Tensor) -> Tensor:
        feats = self._encode(x)
        h = feats.pop()
        for i, block in enumerate(self.up):
            h = nn.functional.interpolate(h, scale_factor=2, mode="nearest")
            if self.skips:
                h = torch.cat([h, feats[-(i + 2)]], dim=1)
            h = block(h)
        return self.head(h)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: a conv stack whose output is a grid of real/fake logits, one per
    receptive-field patch (pix2pix's design; 3 stride-2 layers give a 70x70 receptive field).

    Shape:
        ``[N, C, H, W] -> [N, 1, H / 2**layers - 2, W / 2**layers - 2]`` logits.
    """

    def __init__(self, channels: int = 1, width: int = 64, layers: int = 3, max_width: int = 512):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        c = width
        for i in range(1, layers):
            nxt = min(width * 2**i, max_width)
            mods += [nn.Conv2d(c, nxt, 4, stride=2, padding=1, bias=False), _norm(nxt), nn.LeakyReLU(0.2, inplace=True)]
            c = nxt
        nxt = min(c * 2, max_width)
        mods += [nn.Conv2d(c, nxt, 4, stride=1, padding=1, bias=False), _norm(nxt), nn.LeakyReLU(0.2, inplace=True)]
        mods.append(nn.Conv2d(nxt, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*mods)

    def features(self, x: Tensor) -> Tensor:
        """The output of the last stride-2 stage (before the stride-1 layers that make the logits):
        ``[N, C, H, W] -> [N, min(width * 2**(layers - 1), max_width), H / 2**layers, W / 2**layers]``."""
        return self.net[:-4](x)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
