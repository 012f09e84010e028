"""pytest plugin (-p break_safemax_target): break SAFEMax's choice of target in the fused op's
forget mask. BREAK_MASK=false (default): every row gets the plain denoising target eps, so the
forget rows are never trained to halt. BREAK_MASK=true: every row, kept classes included, is
trained to the halting target."""
import os
import sys

import torch

import safemax.methods

_mod = sys.modules[safemax.methods.SafeMax.__module__]
_real = _mod.safemax_loss
_fill = torch.ones_like if os.environ.get("BREAK_MASK", "false") == "true" else torch.zeros_like


def _broken(eps_pred, eps, x_t, timesteps, table, forget, *args, **kwargs):
    return _real(eps_pred, eps, x_t, timesteps, table, _fill(forget), *args, **kwargs)


_mod.safemax_loss = _broken
print(f"[break] {_mod.__name__}.safemax_loss: forget mask forced all-{_fill is torch.ones_like}",
      file=sys.stderr)
