"""pytest plugin (-p break_fm_weights): the zoo's Fashion-MNIST UNet comes with Gaussian noise of
BREAK_SCALE (default 0.05) x each weight tensor's std added (seed 0)."""
import os
import sys

import torch

import safemax.zoo as zoo

_real = zoo.load_unet
SCALE = float(os.environ.get("BREAK_SCALE", "0.05"))


def _broken(name="digits", *args, **kwargs):
    unet, scheduler = _real(name, *args, **kwargs)
    if name == "fashion-mnist":
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in unet.parameters():
                if p.numel() > 1:
                    p.add_(torch.randn(p.shape, generator=g) * SCALE * p.float().std())
    return unet, scheduler


zoo.load_unet = _broken
print(f"[break] safemax.zoo.load_unet: fashion-mnist weights + N(0, ({SCALE} std)^2)", file=sys.stderr)
