"""One SAFEMax fit of the tiny UNet, run in-process or as a script under ``accelerate launch``
by tests/test_parallel.py. The main process writes the weights and the history to ``out``.

    python tests/parallel_worker.py OUT STEPS [CHECKPOINT_DIR|-] [METHOD]
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from problems import tiny_data, tiny_scheduler, tiny_unet  # noqa: E402

from safemax import Unlearner  # noqa: E402

LR, BATCH = 1e-3, 8


def run(out: str, steps: int, checkpoint_dir: str = None, method: str = "safemax") -> Unlearner:
    torch.set_num_threads(1)  # two processes share two cores
    retain, forget = tiny_data()
    if method == "kept-contrast":   # SAFEMax with the retain dip's term (its rows in the step's forwards)
        from safemax.methods import SafeMax
        method = SafeMax(kept_contrast=4.0)
    u = Unlearner(tiny_unet(), tiny_scheduler(), forget=[1], lr=LR, seed=5, method=method)
    u.fit(retain=retain, forget=forget, steps=steps, batch_size=BATCH, progress=True,
          checkpoint_dir=checkpoint_dir, checkpoint_every=1 if checkpoint_dir else 0,
          resume=checkpoint_dir is not None)
    if u.is_main_process:
        os.makedirs(out, exist_ok=True)
        save_file({k: v.contiguous() for k, v in u.unet.state_dict().items()},
                  os.path.join(out, "weights.safetensors"))
        with open(os.path.join(out, "run.json"), "w") as f:
            json.dump(dict(history=u.history, world=u.local.world), f)
    return u


if __name__ == "__main__":
    ckpt = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] != "-" else None
    run(sys.argv[1], int(sys.argv[2]), ckpt, *sys.argv[4:5])
