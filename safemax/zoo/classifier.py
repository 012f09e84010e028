"""The evaluation classifier of the embedded default: 10 digits plus a "not a digit" class.

A plain digit classifier labels pure Gaussian noise as some digit far above chance, so argmax
forget accuracy alone would overstate what a noise image "is". Class 10 is trained on Gaussian,
uniform and blurred noise so that noise can be called noise.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

NOT_A_DIGIT = 10
NUM_CLASSES = 11


class DigitClassifier(nn.Module):
    """Small CNN on 1×16×16 images in [-1, 1]. ``features`` is the 128-d penultimate layer."""

    feature_dim = 128

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),   # 8×8
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),   # 4×4
            nn.Flatten(), nn.Linear(64 * 4 * 4, self.feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(self.feature_dim, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def noise_images(n: int, size: int = 16, generator: torch.Generator = None) -> torch.Tensor:
    """``n`` non-digit images in [-1, 1]: clipped Gaussian, uniform and blurred noise, mixed."""
    g = generator
    kinds = torch.randint(0, 3, (n,), generator=g)
    gauss = torch.randn(n, 1, size, size, generator=g).mul(torch.rand(n, 1, 1, 1, generator=g) * 1.5 + 0.3)
    uniform = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    coarse = torch.randn(n, 1, size // 4, size // 4, generator=g)
    blurred = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    blurred = blurred / blurred.flatten(1).std(1).clamp_min(1e-6).view(n, 1, 1, 1)
    out = torch.where((kinds == 0).view(n, 1, 1, 1), gauss, torch.where((kinds == 1).view(n, 1, 1, 1), uniform, blurred))
    return out.clamp(-1, 1)
