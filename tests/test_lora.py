"""LoRA adapters (peft): only the adapter trains, the teacher is the model with the adapter off
(no copy), checkpoints hold the adapter, and the saved adapter loads back where diffusers loads
LoRA (the Stable Diffusion pipeline) or as a merged model (class-conditional models)."""
import copy
import json
import sys

import pytest
import torch
from safetensors import safe_open

peft = pytest.importorskip("peft")
from problems import params, tiny_data, tiny_scheduler, tiny_unet  # noqa: E402

from safemax import Unlearner  # noqa: E402
from safemax.methods import SelectiveAmnesia  # noqa: E402
from safemax.training.checkpoint import FILENAME  # noqa: E402

SA_SMALL = dict(n_replay=8, n_fisher=2, fisher_timesteps=2, sample_steps=2)


def attn_unet(seed=0):
    """tiny_unet with attention in a down and an up block (and its mid block's)."""
    return tiny_unet(seed=seed, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                     up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def base_and_adapter(u):
    base = {n: p.detach().clone() for n, p in u.unet.named_parameters() if "lora_" not in n}
    adapter = {n: p.detach().clone() for n, p in u.unet.named_parameters() if "lora_" in n}
    return base, adapter


def test_lora_settings_are_checked():
    s = tiny_scheduler()
    with pytest.raises(ValueError, match="not both"):
        Unlearner(attn_unet(), s, [1], lora_rank=2, lora=peft.LoraConfig(r=2))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="lora_rank must be an integer >= 1"):
            Unlearner(attn_unet(), s, [1], lora_rank=bad)
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        Unlearner(attn_unet(), s, [1], lora=_zero_rank_config())
    with pytest.raises(ValueError, match="peft.LoraConfig"):
        Unlearner(attn_unet(), s, [1], lora={"r": 2})
    # no attention anywhere: the error names the layers there are
    with pytest.raises(ValueError, match=r"none of the LoRA target modules .*conv1.*time_emb_proj"):
        Unlearner(tiny_unet(add_attention=False), s, [1], lora_rank=2)


def _zero_rank_config():
    c = peft.LoraConfig(r=1)
    c.r = 0
    return c


def test_missing_peft_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(ImportError, match="pip install peft"):
        Unlearner(attn_unet(), tiny_scheduler(), [1], lora_rank=2)


def test_only_the_adapter_trains_and_the_teacher_is_the_model_with_it_off():
    unet = attn_unet().eval()  # (eval and train mode round differently)
    original = copy.deepcopy(unet)
    n_base = sum(p.numel() for p in unet.parameters())
    retain, forget = tiny_data()
    u = Unlearner(unet, tiny_scheduler(), [1], lr=1e-2, lora_rank=2)
    names = [n for n, _ in u.trainable()]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert {n.split(".lora_")[0].split(".")[-1] for n in names} >= {"to_q", "to_k", "to_v"}
    assert any(".to_out.0.lora_" in n for n in names)
    held = [p for g in u.optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in held} == {id(p) for _, p in u.trainable()}  # Adam: the adapter only
    # no copy: the teacher is the Unlearner's own model; nothing else holds parameters
    teacher = u.method.teacher
    assert not isinstance(teacher, torch.nn.Module) and teacher.model is u.unet
    assert not any(isinstance(v, torch.nn.Module) for v in vars(u.method).values())
    n_adapter = sum(p.numel() for _, p in u.trainable())
    assert sum(p.numel() for p in u.unet.parameters()) == n_base + n_adapter

    x, t, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 10, 30, 50, 70, 99]), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        want = original(x, t, class_labels=y).sample
        assert torch.equal(unet(x, t, class_labels=y).sample, want)  # B = 0: starts at the original
    u.fit(retain, forget, steps=2, batch_size=4, progress=False)
    with torch.no_grad():
        assert torch.equal(teacher(x, t, class_labels=y).sample, want)
        unet.train()
        assert torch.equal(teacher(x, t, class_labels=y).sample, want) and unet.training
        unet.eval()
        assert not torch.allclose(unet(x, t, class_labels=y).sample, want)  # trained, and the
    assert all(p.requires_grad for _, p in u.trainable())  # adapter is on again after the teacher


@pytest.mark.parametrize("method", ["safemax", "salun", "sa", "ga"])
def test_every_method_moves_only_the_adapter(method):
    unet = attn_unet()
    retain, forget = tiny_data()
    m = SelectiveAmnesia(**SA_SMALL) if method == "sa" else method
    u = Unlearner(unet, tiny_scheduler(), [1], method=m, lr=1e-2, lora_rank=2)
    base0, adapter0 = base_and_adapter(u)
    u.fit(retain, forget, steps=2, batch_size=4, progress=False)
    base1, adapter1 = base_and_adapter(u)
    assert base1.keys() == base0.keys() and all(torch.equal(base0[k], base1[k]) for k in base0)
    assert any(not torch.equal(adapter0[k], adapter1[k]) for k in adapter0)
    trainable = {n for n, _ in u.trainable()}
    if method == "salun":
        assert set(u.method.mask) == trainable
    if method == "sa":
        assert set(u.method.fisher) == trainable and set(u.method.original) == trainable


def test_a_resumed_lora_fit_equals_an_uninterrupted_one(tmp_path):
    retain, forget = tiny_data()

    def make(rank=2, seed_model=0):
        return Unlearner(attn_unet(seed=seed_model), tiny_scheduler(), [1], lr=1e-2, lora_rank=rank, seed=3)

    whole = make()
    whole.fit(retain, forget, steps=3, batch_size=4, progress=False)

    first = make()
    first.fit(retain, forget, steps=1, batch_size=4, progress=False, checkpoint_dir=str(tmp_path))
    with safe_open(str(tmp_path / FILENAME), framework="pt") as f:
        model_keys = {k[len("model."):] for k in f.keys() if k.startswith("model.")}
        meta = json.loads(f.metadata()["meta"])
    assert model_keys == {n for n, _ in first.trainable()}  # the adapter, not the frozen base
    assert meta["config"]["lora_rank"] == 2
    adapter_bytes = sum(p.numel() * 4 for _, p in first.trainable())
    base_bytes = sum(p.numel() * 4 for n, p in first.unet.named_parameters() if "lora_" not in n)
    assert (tmp_path / FILENAME).stat().st_size < 4 * adapter_bytes + 100_000 < base_bytes

    resumed = make()
    resumed.fit(retain, forget, steps=3, batch_size=4, progress=False, checkpoint_dir=str(tmp_path),
                resume=True)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    for (n, a), (m, b) in zip(whole.unet.named_parameters(), resumed.unet.named_parameters()):
        assert n == m and torch.equal(a, b), n

    with pytest.raises(ValueError, match="other settings"):  # other LoRA settings
        make(rank=3).fit(retain, forget, steps=4, batch_size=4, progress=False,
                         checkpoint_dir=str(tmp_path), resume=True)
    with pytest.raises(ValueError, match="other settings"):  # no LoRA
        Unlearner(attn_unet(), tiny_scheduler(), [1], lr=1e-2, seed=3).fit(
            retain, forget, steps=4, batch_size=4, progress=False, checkpoint_dir=str(tmp_path), resume=True)
    with pytest.raises(ValueError, match="another model"):  # another base model
        make(seed_model=1).fit(retain, forget, steps=4, batch_size=4, progress=False,
                               checkpoint_dir=str(tmp_path), resume=True)


def test_class_conditional_models_are_saved_merged_with_the_adapter_beside(tmp_path):
    from diffusers import UNet2DModel
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    retain, forget = tiny_data()
    u = Unlearner(attn_unet(), tiny_scheduler(), [1], lr=1e-2, lora_rank=2)
    u.fit(retain, forget, steps=2, batch_size=4, progress=False)
    u.save_pretrained(str(tmp_path))
    info = json.loads((tmp_path / "safemax.json").read_text())
    assert info["lora_rank"] == 2 and info["lora_saved_as"] == "merged"
    assert info["lora_target_modules"] == ["to_k", "to_out.0", "to_q", "to_v"]
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([5, 40, 80, 99]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        want = u.unet(x, t, class_labels=y).sample
        merged = UNet2DModel.from_pretrained(str(tmp_path))
        torch.testing.assert_close(merged(x, t, class_labels=y).sample, want, rtol=1e-5, atol=1e-5)
        # the adapter alone, in peft format, on the original model
        base = attn_unet().eval()
        inject_adapter_in_model(LoraConfig.from_pretrained(str(tmp_path)), base)
        set_peft_model_state_dict(base, load_file(str(tmp_path / "adapter_model.safetensors")))
        assert torch.equal(base(x, t, class_labels=y).sample, want)
    assert any("lora_" in n for n, _ in u.unet.named_parameters())


def test_the_stable_diffusion_pipeline_loads_the_saved_adapter(tmp_path):
    pytest.importorskip("transformers")
    from tiny_sd import tiny_sd_pipeline

    from safemax.models.pipelines import pipeline_data, prompt_embeddings

    pipe = tiny_sd_pipeline(seed=0)
    church = prompt_embeddings(pipe, ["a church", "a photo of a church"])
    retain = pipeline_data(pipe, ["a dog", ""], n_per_prompt=2, num_inference_steps=2, progress=False)
    u = Unlearner(pipe.unet, pipe.scheduler, forget={"church": church}, lr=1e-2, lora_rank=4)
    before = params(u.unet)
    u.fit(retain=retain, forget=None, steps=2, batch_size=2, progress=False)
    assert all(torch.equal(before[k], v) for k, v in u.unet.state_dict().items() if "lora_" not in k)
    u.save_pretrained(str(tmp_path))
    assert (tmp_path / "pytorch_lora_weights.safetensors").exists()
    assert not (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    info = json.loads((tmp_path / "safemax.json").read_text())
    assert info["lora_rank"] == 4 and info["lora_saved_as"] == "pipeline"
    assert info["lora_target_modules"] == ["to_k", "to_out.0", "to_q", "to_v"]

    fresh = tiny_sd_pipeline(seed=0)
    fresh.load_lora_weights(str(tmp_path))
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100, 900])
    emb = church[:2]
    with torch.no_grad():
        want = u.unet(x, t, encoder_hidden_states=emb).sample
        got = fresh.unet(x, t, encoder_hidden_states=emb).sample
        original = tiny_sd_pipeline(seed=0).unet(x, t, encoder_hidden_states=emb).sample
    assert torch.equal(got, want) and not torch.allclose(got, original)
    image = fresh("a photo of a church", num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 16, 16) and torch.isfinite(image).all()


def test_cli_unlearn_with_lora_rank(tmp_path):
    from diffusers import UNet2DModel

    from safemax.cli import main

    out = tmp_path / "no3"
    main(["unlearn", "--lora-rank", "2", "--forget", "3", "--steps", "2", "--batch-size", "4",
          "--out", str(out), "--checkpoint-every", "1"])
    info = json.loads((out / "safemax.json").read_text())
    assert info["lora_rank"] == 2 and info["steps"] == 2 and info["lora_saved_as"] == "merged"
    assert (out / "adapter_model.safetensors").exists()
    with safe_open(str(out / "checkpoint" / FILENAME), framework="pt") as f:
        assert all(".lora_" in k for k in f.keys() if k.startswith("model."))
    UNet2DModel.from_pretrained(str(out))  # the merged model loads as any diffusers UNet
    main(["sample", "--model", str(out), "--label", "3", "--n", "1", "--steps", "2",
          "--out", str(tmp_path / "s.png")])
    assert (tmp_path / "s.png").exists()


def test_a_transformer_family_gets_its_pipelines_lora_file(tmp_path):
    """A tiny SD3 transformer's adapter is written as StableDiffusion3Pipeline's LoRA file
    (keys under "transformer."): it loads back into a fresh transformer bit for bit."""
    from diffusers import SD3Transformer2DModel

    from safemax.models import lora

    def tiny():
        torch.manual_seed(0)
        return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1,
                                     attention_head_dim=4, num_attention_heads=2,
                                     joint_attention_dim=8, caption_projection_dim=8,
                                     pooled_projection_dim=8, out_channels=4)

    model, config = tiny(), lora.make_config(lora_rank=2)
    lora.add_adapter(model, config, seed=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    assert lora.save(model, config, str(tmp_path)) == "pipeline"
    fresh = tiny()
    fresh.load_lora_adapter(str(tmp_path), prefix="transformer", use_safetensors=True, adapter_name="default")
    want = {n: p for n, p in model.named_parameters() if "lora_" in n}
    got = {n: p for n, p in fresh.named_parameters() if "lora_" in n}
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_dit_trains_an_adapter_and_saves_merged(tmp_path):
    import diffusers
    from test_model_families import tiny_dit

    retain, forget = tiny_data()
    u = Unlearner(tiny_dit(), tiny_scheduler(), [1], lr=1e-2, lora_rank=2)
    base0, adapter0 = base_and_adapter(u)
    assert {n.split(".lora_")[0].split(".")[-1] for n in adapter0} >= {"to_q", "to_k", "to_v"}
    u.fit(retain, forget, steps=2, batch_size=4, progress=False)
    base1, adapter1 = base_and_adapter(u)
    assert all(torch.equal(base0[k], base1[k]) for k in base0)
    assert any(not torch.equal(adapter0[k], adapter1[k]) for k in adapter0)
    u.save_pretrained(str(tmp_path))
    merged = diffusers.DiTTransformer2DModel.from_pretrained(str(tmp_path)).eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 50]), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(merged(x, t, class_labels=y).sample,
                                   u.unet(x, t, class_labels=y).sample, rtol=1e-5, atol=1e-5)


def test_an_adapter_on_bf16_weights_trains_in_float32():
    """As diffusers' LoRA scripts do (cast_training_params): the base stays bf16, the adapter and
    hence Adam's state are float32, and a fit runs and moves the adapter."""
    retain, forget = tiny_data()
    unet = tiny_unet().to(torch.bfloat16)
    u = Unlearner(unet, tiny_scheduler(), [1], lr=1e-2, lora_rank=2)
    trainable = [p for _, p in u.trainable()]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.dtype == torch.bfloat16 for n, p in unet.named_parameters() if "lora_" not in n)
    before = [p.detach().clone() for p in trainable]
    u.fit(retain, forget, steps=2, batch_size=4, progress=False)
    assert all(torch.isfinite(p).all() for p in trainable)
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable))
