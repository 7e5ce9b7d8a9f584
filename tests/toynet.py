"""A toy fully-convolutional segmentation net with a known receptive field, for exactness tests.

Layout (``f = factor``, ``c = width``)::

    stem   3x3 conv (in -> c), BatchNorm, ReLU                  full resolution
    down   f x f conv, stride f (c -> c)                        1/f resolution ("patchify")
    body   depth x [3x3 conv (c -> c), ReLU]                    1/f resolution
    up     nearest upsampling x f
    head   3x3 conv on concat(up, stem) (2c -> classes)         full resolution

Receptive-field radius: output pixel ``y`` depends on input pixels within ``rf_radius = f * (depth + 1) + 1``
of ``y`` on each axis (stem 1 + patch cell up to f - 1 + body f * depth + head re-centring 1; an upper bound,
reached by some pixels). A window margin >= ``rf_radius`` makes centre logits identical to whole-scene logits.

Output stride: ``f``. Window origins must be multiples of ``f`` for the patch cells to line up with the whole
scene's; input sizes must be multiples of ``f``.

The BatchNorm makes the norm policy matter: in train mode it uses each batch's statistics.
"""

import torch
from torch import nn


class ToyNet(nn.Module):
    """Tiny U-shaped conv net; see the module docstring for its receptive field and output stride."""

    def __init__(
        self, in_ch: int = 3, classes: int = 3, depth: int = 1, width: int = 6, factor: int = 8, seed: int = 0
    ):
        super().__init__()
        self.output_stride = factor
        self.rf_radius = factor * (depth + 1) + 1
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.down = nn.Conv2d(width, width, factor, stride=factor)
        body = []
        for _ in range(depth):
            body += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*body)
        self.up = nn.Upsample(scale_factor=factor, mode="nearest")
        self.head = nn.Conv2d(2 * width, classes, 3, padding=1)
        with torch.no_grad():  # non-trivial running statistics, so frozen BN is not the identity
            bn = self.stem[1]
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.8, 1.2)
            bn.bias.uniform_(-0.1, 0.1)
        torch.random.set_rng_state(generator_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        low = self.body(self.down(skip))
        return self.head(torch.cat([self.up(low), skip], dim=1))
