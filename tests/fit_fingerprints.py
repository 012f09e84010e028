"""Fingerprints of short fits, one per method and mode, to prove that restructuring the code
changes no result: ``tests/data/fit_fingerprints.json`` holds the numbers (first recorded before
the Unlearner was split into modules), and tests/test_fit_fingerprints.py compares against them —
bit for bit on the arithmetic that recorded them (``arithmetic()``), within rounding elsewhere.

Regenerate only when a change is *meant* to alter results (and say so in the commit):
    .venv/bin/python tests/fit_fingerprints.py
"""
import json
import os

import torch
from problems import tiny_data, tiny_scheduler, tiny_unet
from torch.utils.data import TensorDataset

from safemax.harness.store import machine as _machine

PATH = os.path.join(os.path.dirname(__file__), "data", "fit_fingerprints.json")


def _class_fit(method="safemax", forget_data=True, **kwargs):
    from safemax import Unlearner

    retain, forget = tiny_data()
    unet = tiny_unet()
    u = Unlearner(unet, tiny_scheduler(), forget=[1], lr=1e-3, seed=3, method=method, **kwargs)
    history = u.fit(retain, forget if forget_data else None, steps=3, batch_size=8, progress=False)
    return unet, history


def _concept_fit(method="safemax"):
    from diffusers import UNet2DConditionModel

    from safemax import Unlearner

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                attention_head_dim=4)
    g = torch.Generator().manual_seed(1)
    concepts = torch.randn(4, 5, 16, generator=g)
    retain = TensorDataset(torch.randn(24, 4, 8, 8, generator=g), concepts[1:][torch.arange(24) % 3])
    forget = TensorDataset(torch.randn(8, 4, 8, 8, generator=g), concepts[:1].expand(8, -1, -1))
    u = Unlearner(unet, tiny_scheduler(), forget={"c": concepts[:1]}, lr=1e-3, seed=3, method=method)
    history = u.fit(retain, forget, steps=3, batch_size=4, progress=False)
    return unet, history


def _sa():
    from safemax.methods import SelectiveAmnesia

    return _class_fit(SelectiveAmnesia(n_replay=8, n_fisher=4, fisher_timesteps=3, sample_steps=3))


CASES = {
    "safemax": lambda: _class_fit(early_fraction=0.5),
    "safemax-noise-vlb-snr": lambda: _class_fit(retain_target="noise", weighting="vlb", max_snr=1.0,
                                                forget_weight=2.0),
    "safemax-data-free": lambda: _class_fit(forget_data=False),
    "salun": lambda: _class_fit("salun"),
    "sa": _sa,
    "ga": lambda: _class_fit("ga"),
    "safemax-concept": lambda: _concept_fit(),
    "salun-concept": lambda: _concept_fit("salun"),
}


def arithmetic() -> dict:
    """What decides a fit's last bits on the CPU: the torch build, the processor (its name alone is
    not enough — two "AMD EPYC" VMs of different generations round apart: family/model/stepping),
    the vector ISA torch dispatches to, and the thread count (it splits the reductions)."""
    ident = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("cpu family", "model", "stepping"):
                    ident.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return dict(torch=torch.__version__, cpu=_machine()["cpu"], cpu_id=ident,
                capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads())


def fingerprint(case: str) -> dict:
    """Per-tensor float64 sum and sum of squares of the weights after the fit, and the losses."""
    unet, history = CASES[case]()
    weights = {k: [float(v.double().sum()), float(v.double().square().sum())]
               for k, v in unet.state_dict().items()}
    return dict(weights=weights, loss=[h["loss"] for h in history])


if __name__ == "__main__":
    os.makedirs(os.path.dirname(PATH), exist_ok=True)
    out = {case: fingerprint(case) for case in CASES}
    with open(PATH, "w") as f:
        json.dump(dict(arithmetic=arithmetic(), cases=out), f, indent=1)
    print(f"wrote {PATH} ({len(out)} cases, {arithmetic()})")
