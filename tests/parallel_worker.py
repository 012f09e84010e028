"""One SAFEMax fit of the tiny UNet, run in-process or as a script under ``accelerate launch``
by tests/test_parallel.py and tests/test_fsdp.py. The model is written by ``save_pretrained``
(every process calls it: under FSDP the shards are gathered) to ``out/model``, the history by the
main process to ``out/run.json``.

    python tests/parallel_worker.py OUT STEPS [CHECKPOINT_DIR|-] [METHOD[,METHOD...]]

Several methods run one after another in the same processes, each into ``OUT/METHOD``.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from problems import tiny_data, tiny_scheduler, tiny_unet  # noqa: E402

from safemax import Unlearner  # noqa: E402

LR, BATCH = 1e-3, 8
# the test's launches set this: run an FSDP config on CPU processes (see fsdp_on_cpu)
FSDP_ON_CPU = "SAFEMAX_TEST_FSDP_ON_CPU"


def fsdp_on_cpu():
    """Under an FSDP launch of CPU processes (``FSDP_ON_CPU`` set, no GPU): an Accelerator
    switched to FSDP; None otherwise (the Unlearner makes its own).

    Accelerate 1.16 turns an FSDP config on for GPU-family processes only: its AcceleratorState
    sets ``DistributedType.FSDP`` in the branch for MULTI_GPU/NPU/XPU/..., so CPU processes over
    gloo stay MULTI_CPU — plain DDP — whatever the config says (and the Unlearner refuses that).
    torch's ``fully_shard`` itself runs on CPU over gloo, so once Accelerate has set up the gloo
    group this switches its state to FSDP with the launch's own plugin (its ``FSDP_*`` settings);
    everything after — ``prepare`` (``fsdp2_prepare_model`` → ``fully_shard``), backward, reduce,
    the state-dict gathering — is Accelerate's and torch's own FSDP2 code."""
    if os.environ.get(FSDP_ON_CPU) != "1" or torch.cuda.is_available():
        return None
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator(cpu=True)
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":   # as AcceleratorState's FSDP branch does
        plugin.set_mixed_precision(accelerator.mixed_precision)
    AcceleratorState._shared_state.update(distributed_type=DistributedType.FSDP, fsdp_plugin=plugin)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return accelerator


def held(u) -> dict:
    """``{part: (share, bytes)}``: what this process holds of the model (parameters and buffers),
    the teacher and Adam's state — the share of their elements (1.0 unsharded) and the bytes."""
    def part(tensors):
        local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
        return (sum(t.numel() for t in local) / sum(t.numel() for t in tensors),
                sum(t.numel() * t.element_size() for t in local))
    teacher = getattr(u.method, "teacher", None)
    return dict(model=part([*u.unet.parameters(), *u.unet.buffers()]),
                teacher=part([*teacher.parameters(), *teacher.buffers()]) if teacher is not None else None,
                adam=part([v for s in u.optimizer.state.values() for v in s.values()]))


def text_problem(method: str):
    """A tiny text-conditional UNet whose fit trains part of its weights: ``"cross-attention"``
    (SAFEMax on the attn2 weights) or ``"esd-x"``; ``(unet, forget, retain, data, options)``."""
    from diffusers import UNet2DConditionModel
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=2,
                                cross_attention_dim=16, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(5, 6, 16, generator=g)   # concepts: 0 forgotten, 1-3 kept, 4 the empty prompt
    forget = TensorDataset(torch.randn(16, 4, 8, 8, generator=g), emb[:1].expand(16, 6, 16))
    retain = TensorDataset(torch.randn(16, 4, 8, 8, generator=g), emb[torch.arange(16) % 3 + 1])
    if method == "esd-x":
        from safemax.methods import ESDx
        return unet, forget, None, emb[:1], dict(method=ESDx(unconditional=emb[4:], ddim_steps=4), lr=LR)
    return unet, forget, retain, emb[:1], dict(train="cross-attention", lr=LR)


def run(out: str, steps: int, checkpoint_dir: str = None, method: str = "safemax", accelerator=None,
        device: str = None) -> Unlearner:
    torch.set_num_threads(1)  # two processes share two cores
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # (on a GPU: exact float32)
    retain, forget = tiny_data()
    unet, target, options = tiny_unet(), [1], dict(lr=LR, method=method)
    if method == "kept-contrast":   # SAFEMax with the retain dip's term (its rows in the step's forwards)
        from safemax.methods import SafeMax
        options["method"] = SafeMax(kept_contrast=4.0)
    elif method == "checkpointed":   # SAFEMax with gradient checkpointing
        options = dict(lr=LR, gradient_checkpointing=True)
    elif method == "bf16":   # SAFEMax under bf16 (a launch gives its Accelerator the same)
        options = dict(lr=LR, mixed_precision="bf16")
    elif method in ("cross-attention", "esd-x"):   # part of a text-conditional model's weights
        unet, forget, retain, concept, options = text_problem(method)
        target = {"concept": concept}
    u = Unlearner(unet if device is None else unet.to(device), tiny_scheduler(), forget=target, seed=5,
                  accelerator=accelerator, **options)
    u.fit(retain=retain, forget=forget, steps=steps, batch_size=BATCH, progress=True,
          checkpoint_dir=checkpoint_dir, checkpoint_every=1 if checkpoint_dir else 0,
          resume=checkpoint_dir is not None)
    u.save_pretrained(os.path.join(out, "model"))
    if u.is_main_process:
        with open(os.path.join(out, "run.json"), "w") as f:
            json.dump(dict(history=u.history, world=u.local.world, held=held(u),
                           sharded=u.sharded is not None), f)
    return u


if __name__ == "__main__":
    ckpt = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] != "-" else None
    methods = sys.argv[4].split(",") if len(sys.argv) > 4 else ["safemax"]
    accelerator = fsdp_on_cpu()
    for m in methods:
        run(os.path.join(sys.argv[1], m) if len(methods) > 1 else sys.argv[1], int(sys.argv[2]), ckpt, m,
            accelerator=accelerator)
