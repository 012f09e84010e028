"""benchmarks/memory_accounting.py: its counts and bytes equal what a real Unlearner holds."""
import os
import sys

import pytest
import torch

pytest.importorskip("peft")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import memory_accounting as acc  # noqa: E402
from problems import tiny_scheduler  # noqa: E402

from safemax import Unlearner  # noqa: E402

TINY = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=2,
            cross_attention_dim=16, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def tiny(device="cpu"):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    with torch.device(device):
        return UNet2DConditionModel(**TINY)


def fitted(**kw):
    """An Unlearner on the tiny UNet after one step (Adam's state exists)."""
    from torch.utils.data import TensorDataset
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(4, 6, 16, generator=g)
    data = TensorDataset(torch.randn(4, 4, 8, 8, generator=g), emb[torch.arange(4) % 3 + 1])
    u = Unlearner(tiny(), tiny_scheduler(), forget={"c": emb[:1]}, **kw)
    u.fit(data, data, steps=1, batch_size=2, progress=False)
    return u


def nbytes(tensors):
    seen = {}
    for t in tensors:  # each storage once
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def held(u):
    """Bytes of the model, the teacher copy and Adam's state the Unlearner holds."""
    model = nbytes([*u.unet.parameters(), *u.unet.buffers()])
    teacher = u.method.teacher
    teacher = nbytes([*teacher.parameters(), *teacher.buffers()]) if isinstance(teacher, torch.nn.Module) else 0
    adam = nbytes([v for s in u.optimizer.state.values() for v in s.values() if torch.is_tensor(v)])
    return model, teacher, adam


def test_counts_equal_the_built_model_and_an_independent_lora_count():
    meta, real = tiny("meta"), tiny()
    c = acc.counts(meta)
    assert c["params"] == sum(v.numel() for v in real.state_dict().values()) == sum(
        p.numel() for p in real.parameters())
    for r in (1, 4):
        linears = [m for n, m in real.named_modules() if isinstance(m, torch.nn.Linear)
                   and any(n == t or n.endswith("." + t) for t in acc.LORA_TARGETS)]
        assert linears
        assert acc.lora_parameters(meta, r) == sum(r * (m.in_features + m.out_features) for m in linears)


@pytest.mark.parametrize("kw", [dict(), dict(retain_target="noise"), dict(lora_rank=4)])
def test_weight_side_bytes_equal_what_the_unlearner_holds(kw):
    u = fitted(**kw)
    w = acc.weight_side(tiny("meta"), lora_rank=kw.get("lora_rank"),
                        retain_target=kw.get("retain_target", "distill"))
    assert w["trainable"] == sum(p.numel() for _, p in u.trainable())  # what peft made trainable
    model, teacher, adam = held(u)
    assert model == w["weights_bytes"] + w["adapter_bytes"]
    assert teacher == w["teacher_bytes"]
    assert adam == w["adam_bytes"]
    assert w["grad_bytes"] == 4 * w["trainable"]
    assert w["resident_bytes"] == model + teacher + adam


def test_lower_precision_weights_and_autocast_copies():
    meta = tiny("meta")
    full = acc.weight_side(meta, mixed_precision="bf16")
    lora = acc.weight_side(meta, lora_rank=2, weights="bf16")
    assert lora["weights_bytes"] * 2 == full["weights_bytes"] and lora["teacher_bytes"] == 0
    assert lora["autocast_copies_bytes"] == 0 < full["autocast_copies_bytes"] <= full["weights_bytes"] // 2
    with pytest.raises(ValueError, match="float32 weights"):
        acc.weight_side(meta, weights="bf16")


def test_published_sizes():
    # the parameter counts of the published checkpoints (meta device: no memory)
    assert acc.counts(acc.build("sdxl"))["params"] == 2_567_463_684
    assert acc.counts(acc.build("sd3-medium"))["params"] == 2_028_328_000
    assert acc.counts(acc.build("flux-dev"))["params"] == 11_901_408_320
    assert acc.counts(acc.build("sd3-medium/2"))["params"] < 2_028_328_000 / 8


def test_fit_table_is_exact_where_the_weights_decide_and_measured_elsewhere():
    run = dict(model="sd3-medium", latent=128, batch=1, device="cuda", config="fp32", lora_rank=16,
               weights="bf16", retain_target="distill", peak_gib=30.0)
    lines = acc.fits([run], models=("sd3-medium",))
    full = next(x for x in lines if "| full, bf16 autocast + checkpointing |" in x)
    assert full.endswith("| ✗ | ✗ | ? | ? |")  # 42 GiB before any activation: the rest decide
    lora = next(x for x in lines if "| LoRA r=16, bf16 weights |" in x)
    assert lora.endswith("| ✗ | ✓ | ✓ | ✓ |") and "| 30.0 |" in lora  # measured


def test_activations_extrapolate_linearly_in_depth():
    run = lambda depth, peak: dict(model=f"sd3-medium/{depth}", latent=128, batch=1, config="fp32",  # noqa: E731
                                   lora_rank=16, weights="bf16", retain_target="distill", step_peak_gib=peak)
    est = acc.activation_estimates([run(1, 3.0), run(2, 4.0)])
    assert est == {("sd3-medium", ("fp32", 16, "bf16", "distill")): (26.0, (1, 2))}  # 3 + 23·1
    line = next(x for x in acc.fits([], models=("sd3-medium",), estimated=est)
                if "| LoRA r=16, bf16 weights |" in x)
    assert line.endswith("| ✗ est. | ✓ est. | ✓ est. | ✓ est. |")  # 3.9 + 26 GiB


def test_without_a_teacher_the_fit_table_bounds_by_the_run_with_one():
    run = dict(model="sd3-medium", latent=128, batch=1, device="cuda", config="bf16 + checkpointing",
               lora_rank=0, weights="fp32", retain_target="distill", peak_gib=47.0)
    lines = acc.fits([run], models=("sd3-medium",))
    noise = next(x for x in lines if 'retain_target="noise"' in x)
    assert "≤ 39.2" in noise and noise.endswith("| ✗ | ? | ✓ | ✓ |")  # 47 − 7.77 GiB of teacher


def test_checkpointed_options_borrow_the_lora_estimate():
    est = {("sd3-medium", acc.CHECKPOINTED_PROXY): (2.0, (1, 2))}
    lines = acc.fits([], models=("sd3-medium",), estimated=est)
    full = next(x for x in lines if "| full, bf16 autocast + checkpointing |" in x)
    assert "| 44.0 |" in full and full.endswith("| ✗ | ✗ | ✓ est. | ✓ est. |")  # 42.0 + 2.0


@pytest.mark.parametrize("n", [2, 3])
def test_fsdp_shards_are_the_first_chunk_of_dim_0(n):
    # FSDP2 splits every parameter's dim 0 as torch.chunk does; the first rank holds the most
    meta = tiny("meta")
    s = acc.shard_counts(meta, n)
    assert s["params"] == sum(torch.chunk(p, n)[0].numel() for p in meta.parameters())
    # the units TRANSFORMER_BASED_WRAP makes from _no_split_modules, and the root's leftovers
    assert s["root"] + s["largest_unit"] <= acc.counts(meta)["params"]
    units = [m for m in meta.modules() if type(m).__name__ in meta._no_split_modules]
    assert units and s["largest_unit"] == max(
        sum(p.numel() for p in u.parameters()) - sum(p.numel() for v in u.modules() if v is not u
                                                     and v in units for p in v.parameters())
        for u in units)


def test_fsdp_side_shards_what_a_full_fit_holds_and_not_the_rest():
    meta = tiny("meta")
    one, two = acc.weight_side(meta), acc.fsdp_side(meta, 2)
    s = acc.shard_counts(meta, 2)
    assert two["weights_bytes"] == two["teacher_bytes"] == 4 * (s["params"] + acc.counts(meta)["buffers"])
    assert two["grad_bytes"] == 4 * s["params"] and two["adam_bytes"] == 8 * s["params"] + 4 * acc.counts(meta)["tensors"]
    assert one["resident_bytes"] / 2 <= two["resident_bytes"] < one["resident_bytes"] / 2 * 1.05
    assert acc.fsdp_side(meta, 2, retain_target="noise")["teacher_bytes"] == 0
    bf16 = acc.fsdp_side(meta, 2, mixed_precision="bf16")
    assert bf16["gathered_bytes"] * 2 == two["gathered_bytes"] == 4 * (2 * s["root"] + 4 * s["largest_unit"])


def test_flux_full_fine_tuning_fits_four_80_gib_gpus_sharded_and_the_docs_say_so():
    # Flux.1-dev: 221.7 GiB of weights, teacher, Adam and gradients, sharded over N, plus the
    # gathered units (the root's and 2 double blocks' weights and gradients, bf16): the FSDP columns
    lines = acc.fits([], models=("flux-dev",), fsdp=(2, 4, 8))
    full = next(x for x in lines if "| full, bf16 autocast + checkpointing |" in x)
    assert full.endswith("| ✗ (113.6) | ? (58.2) | ? (30.5) |")
    assert next(x for x in lines if "| LoRA r=16, bf16 weights |" in x).endswith("| — | — | — |")
    # docs/results/memory.md's table is this computation (its estimates change no Flux row), and so
    # are the figures its text and the scale-out tutorial quote
    def doc(*path):
        return open(os.path.join(os.path.dirname(__file__), "..", "docs", *path), encoding="utf-8").read()
    memory = doc("results", "memory.md")
    table = memory.split("<!-- fits -->\n")[1].split("<!-- /fits -->")[0].splitlines()
    assert table[0] == lines[0] and [x for x in table if x.startswith("| flux-dev |")] == lines[2:]
    per = {n: f"{acc.fsdp_side('flux-dev', n, mixed_precision='bf16')['step_without_activations_bytes'] / 2 ** 30:.1f}"
           for n in (2, 4, 8)}
    flat = lambda text: " ".join(text.split())  # noqa: E731
    assert f"it needs {per[2]} GiB per GPU over 2 GPUs (✗), {per[4]} over 4 and {per[8]} over 8" in flat(memory)
    assert f"it needs {per[4]} GiB per GPU over 4 GPUs and {per[8]} over 8" in flat(doc("tutorials", "scale-out.md"))
