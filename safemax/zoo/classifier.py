"""The evaluation classifiers of the embedded models: the data set's 10 classes plus a "not a
digit" / "not a garment" class.

A plain classifier labels pure Gaussian noise as some class far above chance, so argmax forget
accuracy alone would overstate what a noise image "is". Class 10 is trained on Gaussian, uniform
and blurred noise so that noise can be called noise.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

NOT_A_CLASS = 10
"""The index of the "not a digit" / "not a garment" class, the same in every embedded classifier."""
NOT_A_DIGIT = NOT_A_CLASS
NOT_A_GARMENT = NOT_A_CLASS
NUM_CLASSES = 11


class ImageClassifier(nn.Module):
    """Small CNN on ``1×size×size`` images in [-1, 1], ``size`` divisible by 4: three convolutions
    (the last two halve the side), a ``feature_dim``-wide penultimate layer (``features``, what
    the Fréchet distance compares) and an 11-way head (``dropout`` on its input while training)."""

    def __init__(self, size: int = 16, widths=(32, 64, 64), feature_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        if size % 4:
            raise ValueError(f"the classifier's image side must be divisible by 4, not {size}")
        a, b, c = widths
        self.size, self.feature_dim, self.dropout = size, feature_dim, dropout
        self.body = nn.Sequential(
            nn.Conv2d(1, a, 3, padding=1), nn.GroupNorm(8, a), nn.SiLU(),
            nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU(),   # side / 2
            nn.Conv2d(b, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.SiLU(),   # side / 4
            nn.Flatten(), nn.Linear(c * (size // 4) ** 2, feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.dropout(self.body(x), self.dropout, self.training))


class DigitClassifier(ImageClassifier):
    """The digits model's classifier: 16×16 images, 10 digits + "not a digit"."""

    def __init__(self):
        super().__init__(size=16)


def noise_images(n: int, size: int = 16, generator: torch.Generator = None) -> torch.Tensor:
    """``n`` images of no class in [-1, 1]: clipped Gaussian, uniform and blurred noise, mixed."""
    g = generator
    kinds = torch.randint(0, 3, (n,), generator=g)
    gauss = torch.randn(n, 1, size, size, generator=g).mul(torch.rand(n, 1, 1, 1, generator=g) * 1.5 + 0.3)
    uniform = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    coarse = torch.randn(n, 1, size // 4, size // 4, generator=g)
    blurred = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    blurred = blurred / blurred.flatten(1).std(1).clamp_min(1e-6).view(n, 1, 1, 1)
    out = torch.where((kinds == 0).view(n, 1, 1, 1), gauss, torch.where((kinds == 1).view(n, 1, 1, 1), uniform, blurred))
    return out.clamp(-1, 1)
