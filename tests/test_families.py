"""The Unlearner on every text-to-image family, each on its tiny offline pipeline
(tests/tiny_pipelines.py): the model is called exactly as the family's own pipeline calls it, a
fit forgets a concept while a kept one moves far less, the result loads back into the pipeline
and generates, and a LoRA adapter round-trips through ``pipe.load_lora_weights``."""
import copy

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
from test_pipelines import CASES, denoiser, generate, pipe_of, unpacked  # noqa: E402

from safemax import Unlearner
from safemax.data import (
    ConditionedImages,  # noqa: E402
    rows,  # noqa: E402
)
from safemax.models.families import Flux, family_of  # noqa: E402
from safemax.models.pipelines import prompt_embeddings  # noqa: E402
from safemax.models.sampling import sample  # noqa: E402

NAMES = [n for n in CASES if n != "sd"]  # SD 1.x: tests/test_stable_diffusion.py
FORGET, KEEP = "a church", "a photo of a dog"
RETAIN = ["a photo of a dog", "a tree", "a car in the rain", ""]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a busy machine
    yield
    torch.set_num_threads(threads)


def conditions(name, prompts):
    """The conditions for the same call options the pipeline generates with (prompt length, size)."""
    return prompt_embeddings(pipe_of(name), prompts, **CASES[name][2])


def latent_shape(name):
    return (4, 8, 8)  # every tiny pipeline: 4×8×8 latents (tests/tiny_pipelines.py)


def fresh_model(name):
    """A fresh copy of the pipeline's denoiser (the module-wide pipelines stay untouched)."""
    return copy.deepcopy(denoiser(pipe_of(name))).train()


def retain_data(name, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = conditions(name, RETAIN)
    pick = torch.arange(n) % rows.count(cond)
    return ConditionedImages(torch.randn(n, *latent_shape(name), generator=g), rows.take(cond, pick))


# ------------------------------------------------------------------ the calling convention

@pytest.mark.parametrize("name", NAMES)
def test_the_family_calls_the_model_as_its_pipeline_does(name):
    """The denoiser's first call inside ``pipe(...)`` (captured with a hook: its inputs and its
    output) is reproduced by ``family.call`` from unpacked latents, our condition rows and the
    time input our convention gives for the scheduler's first timestep."""
    pipe, opts = pipe_of(name), CASES[name][2]
    model, seen = denoiser(pipe), {}

    def hook(module, args, kwargs, output):
        if not seen:
            seen.update(args=args, kwargs=dict(kwargs), out=output[0] if isinstance(output, tuple) else output.sample)

    cond = conditions(name, [FORGET])
    call = {k: v for k, v in cond.items() if k in ("prompt_embeds", "pooled_prompt_embeds", "prompt_attention_mask")}
    if "guidance" in cond:
        call["guidance_scale"] = float(cond["guidance"][0])
    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        generate(pipe, opts, output_type="latent", **call)
    finally:
        handle.remove()
    args, kwargs = seen["args"], seen["kwargs"]
    x = kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))
    time = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    family = family_of(model)
    scheduler_t = pipe.scheduler.timesteps[0]
    if family.name in ("sd3", "flux", "sana"):  # flow: our time input for the scheduler's T·σ
        ours = family.flow_input(torch.full((len(x),), float(scheduler_t)), pipe.scheduler.config.num_train_timesteps)
        torch.testing.assert_close(ours, time.float().expand(len(x)), rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(time.long().expand(len(x)), torch.full((len(x),), int(scheduler_t)))
    x_unpacked = unpacked(pipe, x, opts)
    with torch.no_grad():
        out = family.call(model.eval(), x_unpacked, time, cond)
    torch.testing.assert_close(out, unpacked(pipe, seen["out"], opts), rtol=1e-5, atol=1e-5)


def test_flux_packing_round_trips_and_matches_the_pipeline():
    pipe = pipe_of("flux-dev")
    x = torch.randn(2, 4, 8, 8)
    packed = pipe._pack_latents(x, 2, 4, 8, 8)
    assert torch.equal(pipe._unpack_latents(packed, 16, 16, pipe.vae_scale_factor), x)
    seen = {}
    model = denoiser(pipe)

    def hook(module, args, kwargs):
        seen.update(kwargs)

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        cond = conditions("flux-dev", [FORGET, KEEP])
        with torch.no_grad():
            Flux(model).call(model, x, torch.full((2,), 0.5), cond)
    finally:
        handle.remove()
    assert torch.equal(seen["hidden_states"], packed)  # our packing is diffusers' own
    want = pipe._prepare_latent_image_ids(2, 4, 4, x.device, x.dtype)
    assert torch.equal(seen["img_ids"], want)


# ------------------------------------------------------------------ forgetting

def prediction_gap(u, cond, x0, t, eps):
    """Mean squared distance of the prediction from the max-entropy target (ε* or v*)."""
    d = u.denoiser
    x_t, _ = d.noisy(x0, t, eps)
    with torch.no_grad():
        pred = d.predict(x_t, t, rows.take(cond, torch.zeros(len(t), dtype=torch.long)))
    if d.parametrization == "flow":
        s = d.table[t].view(-1, 1, 1, 1)
        target = (2 * s - 1) / ((1 - s) ** 2 + s ** 2) * x_t
    else:
        target = (1 - d.table[t]).sqrt().view(-1, 1, 1, 1) * x_t
    return (pred.double() - target.double()).square().mean().item(), pred


@pytest.mark.parametrize("name", NAMES)
def test_a_fit_forgets_the_concept_and_keeps_the_others(name):
    pipe = pipe_of(name)
    model = fresh_model(name)
    forget, keep = conditions(name, [FORGET]), conditions(name, [KEEP])
    u = Unlearner(model, pipe.scheduler, forget={"church": forget}, lr=3e-3, early_fraction=1.0, seed=0)
    # forget latents ~ N(0, I) like the probe's x0 below (a random model's own samples — the
    # data-free set — can be far from that scale)
    forget_data = ConditionedImages(torch.randn(8, *latent_shape(name), generator=torch.Generator().manual_seed(2)),
                                    rows.take(forget, torch.zeros(8, dtype=torch.long)))
    g = torch.Generator().manual_seed(7)
    n = 8
    x0 = torch.randn(n, *latent_shape(name), generator=g)
    eps = torch.randn(n, *latent_shape(name), generator=g)
    t = torch.randint(0, u.denoiser.num_train_timesteps, (n,), generator=g)
    gap_before, _ = prediction_gap(u, forget, x0, t, eps)
    _, keep_before = prediction_gap(u, keep, x0, t, eps)
    history = u.fit(retain_data(name), forget_data, steps=30, batch_size=4, progress=False)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    gap_after, _ = prediction_gap(u, forget, x0, t, eps)
    _, keep_after = prediction_gap(u, keep, x0, t, eps)
    # measured (30 steps): the gap falls to 0.44-0.68 of its start, the kept concept moves
    # 0.1-0.4 as much as the forgotten one
    assert gap_after < 0.75 * gap_before, (gap_before, gap_after)
    moved_forget = gap_before - gap_after
    moved_keep = (keep_after - keep_before).double().square().mean().item()
    assert moved_keep < 0.5 * moved_forget, (moved_keep, moved_forget)


@pytest.mark.parametrize("name", ["flux-dev", "sana"])
def test_data_free_forgetting_samples_latents_of_the_retain_datas_shape(name):
    """A Flux transformer has no sample size: the data-free forget set takes the retain latents'."""
    pipe = pipe_of(name)
    u = Unlearner(fresh_model(name), pipe.scheduler, forget={"church": conditions(name, [FORGET])}, lr=1e-3)
    u.fit(retain_data(name), None, steps=1, batch_size=2, progress=False)
    assert u.forget_set.images.shape[1:] == latent_shape(name) and torch.isfinite(u.forget_set.images).all()
    assert set(u.forget_set.conditions) == set(conditions(name, [FORGET]))


# ------------------------------------------------------------------ back into the pipeline

@pytest.mark.parametrize("name", NAMES)
def test_the_saved_model_loads_into_its_pipeline_and_generates(name, tmp_path):
    pipe, opts = pipe_of(name), CASES[name][2]
    model = fresh_model(name)
    u = Unlearner(model, pipe.scheduler, forget={"church": conditions(name, [FORGET])}, lr=1e-3)
    u.fit(retain_data(name), retain_data(name, seed=1), steps=2, batch_size=2, progress=False)
    u.save_pretrained(str(tmp_path))
    loaded = type(model).from_pretrained(str(tmp_path), use_safetensors=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    other = copy.copy(pipe)  # a shallow copy: the module-wide pipeline keeps its own denoiser
    other.register_modules(**{"unet" if hasattr(pipe, "unet") else "transformer": loaded.eval()})
    out = generate(other, opts, output_type="latent", prompt=FORGET)
    assert torch.isfinite(out).all()
    assert unpacked(pipe, out, opts).shape[1:] == latent_shape(name)


@pytest.mark.parametrize("name", NAMES)
def test_a_lora_adapter_round_trips_through_the_pipeline(name, tmp_path):
    pipe, opts = pipe_of(name), CASES[name][2]
    model = fresh_model(name)
    u = Unlearner(model, pipe.scheduler, forget={"church": conditions(name, [FORGET])}, lr=1e-2, lora_rank=2)
    u.fit(retain_data(name), retain_data(name, seed=1), steps=3, batch_size=2, progress=False)
    u.save_pretrained(str(tmp_path))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, *latent_shape(name), generator=g)
    t = torch.tensor([3, 900])
    cond = conditions(name, [KEEP, FORGET])
    with torch.no_grad():
        want = u.denoiser.family.call(model.eval(), x, u.denoiser.model_time(t), cond)
    base = copy.deepcopy(denoiser(pipe))
    if u.denoiser.family.lora_pipeline is not None:
        other = copy.copy(pipe)
        other.register_modules(**{"unet" if hasattr(pipe, "unet") else "transformer": base})
        other.load_lora_weights(str(tmp_path))
        got_model = denoiser(other)
        assert any("lora_" in n for n, _ in got_model.named_parameters())
    else:  # PixArt: no LoRA loader in its pipelines; the merged model in diffusers format
        got_model = type(model).from_pretrained(str(tmp_path), use_safetensors=True)
    with torch.no_grad():
        got = u.denoiser.family.call(got_model.eval(), x, u.denoiser.model_time(t), cond)
        before = u.denoiser.family.call(denoiser(pipe).eval(), x, u.denoiser.model_time(t), cond)
    assert not torch.allclose(want, before)  # the adapter changed something
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    out = generate(other if u.denoiser.family.lora_pipeline is not None else pipe, opts,
                   output_type="latent", prompt=FORGET)
    assert torch.isfinite(out).all()


def test_an_unsupported_diffusers_model_gets_one_clear_error():
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                attention_head_dim=2, addition_embed_type="text",
                                encoder_hid_dim=16,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    with pytest.raises(ValueError, match="addition_embed_type='text'.*families that work: .*SDXL.*Flux"):
        Unlearner(unet, pipe_of("sdxl").scheduler, forget={"c": torch.randn(4, 16)})


def test_wrong_conditions_are_refused_with_the_expected_form():
    pipe = pipe_of("sdxl")
    cond = conditions("sdxl", [FORGET])
    unet = denoiser(pipe)
    with pytest.raises(ValueError, match="missing \\['add_time_ids'\\]"):
        Unlearner(unet, pipe.scheduler, forget={"c": {k: v for k, v in cond.items() if k != "add_time_ids"}})
    with pytest.raises(ValueError, match="takes a dict of conditions"):
        Unlearner(unet, pipe.scheduler, forget={"c": cond["prompt_embeds"]})
    with pytest.raises(ValueError, match="unknown \\['guidance'\\]"):
        Unlearner(unet, pipe.scheduler, forget={"c": {**cond, "guidance": torch.ones(1)}})
    with pytest.raises(ValueError, match="NaN"):
        Unlearner(unet, pipe.scheduler, forget={"c": {**cond, "pooled_prompt_embeds": cond["pooled_prompt_embeds"] * float("nan")}})
    flux = pipe_of("flux-dev")
    fc = conditions("flux-dev", [FORGET])
    with pytest.raises(ValueError, match="'pooled_prompt_embeds' must be \\[N, 16\\]"):
        Unlearner(denoiser(flux), flux.scheduler, forget={"c": {**fc, "pooled_prompt_embeds": torch.zeros(1, 5)}})
    u = Unlearner(fresh_model("flux-dev"), flux.scheduler, forget={"c": fc})
    with pytest.raises(ValueError, match="retain data must yield \\(latent, condition\\) items of the concepts' form"):
        u.fit([(torch.randn(4, 8, 8), {k: v[0, :3] if k == "prompt_embeds" else v[0] for k, v in fc.items()})],
              None, steps=1, batch_size=1, progress=False)
    with pytest.raises(ValueError, match="does not say its sample size"):
        sample(denoiser(flux), flux.scheduler, fc, num_inference_steps=1)


def test_sanas_shipped_dpm_solver_is_a_flow_scheduler_with_its_flow_shift():
    """Real Sana checkpoints ship DPMSolverMultistepScheduler(prediction_type="flow_prediction"):
    it has an alphas_cumprod but is a flow schedule, shifted by its flow_shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from tiny_pipelines import tiny_sana_pipeline

    from safemax.models.denoiser import make_denoiser
    from safemax.models.schedule import flow_sigmas

    pipe = tiny_sana_pipeline(dpm_solver=True)
    assert hasattr(pipe.scheduler, "alphas_cumprod")
    d = make_denoiser(pipe.transformer, pipe.scheduler)
    assert d.parametrization == "flow"
    shift = pipe.scheduler.config.flow_shift
    assert shift != 1
    torch.testing.assert_close(d.cpu_table, flow_sigmas(FlowMatchEulerDiscreteScheduler(shift=shift)))
    cond = prompt_embeddings(pipe, [FORGET, KEEP], **CASES["sana"][2])
    out = sample(pipe.transformer, pipe.scheduler, cond, num_inference_steps=2)
    assert out.shape == (2, *latent_shape("sana")) and torch.isfinite(out).all()
