"""safemax.models.pipelines on a tiny offline pipeline of every supported family (tests/tiny_pipelines.py):
conditions in their documented form and equal to the pipeline's own (encode_prompt, the denoiser's
inputs, generation fed them back), the latent conventions, generated data, and the errors."""
import pytest
import torch

pytest.importorskip("transformers")
from diffusers import DDPMPipeline, StableDiffusionImg2ImgPipeline, UNet2DModel  # noqa: E402
from tiny_pipelines import (  # noqa: E402
    CLIP_WIDTH,
    GEMMA_WIDTH,
    SIZES,
    T5_WIDTH,
    tiny_flux_pipeline,
    tiny_pixart_pipeline,
    tiny_sana_pipeline,
    tiny_sd3_pipeline,
    tiny_sdxl_pipeline,
)
from tiny_sd import HIDDEN, MAX_LENGTH, tiny_sd_pipeline  # noqa: E402

import safemax.models.pipelines  # noqa: E402
from safemax.data import ConditionedImages  # noqa: E402
from safemax.models.pipelines import (
    decode_latents,
    encode_images,
    family,
    pipeline_data,
    prompt_embeddings,
)

SEQ = 8  # max_sequence_length of the T5/Gemma encoders in most tests (their defaults are 256-512)
PROMPTS = ["a church", "a photo of a dog"]

# name -> (builder, family, call options for 16x16 generation, form of one prompt's condition)
CASES = {
    "sd": (tiny_sd_pipeline, "sd", {}, (MAX_LENGTH, HIDDEN)),
    "sdxl": (tiny_sdxl_pipeline, "sdxl", {},
             {"prompt_embeds": (MAX_LENGTH, 2 * CLIP_WIDTH), "pooled_prompt_embeds": (CLIP_WIDTH,),
              "add_time_ids": (6,)}),
    "sd3": (tiny_sd3_pipeline, "sd3", {"max_sequence_length": SEQ},
            {"prompt_embeds": (MAX_LENGTH + SEQ, T5_WIDTH), "pooled_prompt_embeds": (2 * CLIP_WIDTH,)}),
    "flux-dev": (tiny_flux_pipeline, "flux", {**SIZES["flux"], "max_sequence_length": SEQ},
                 {"prompt_embeds": (SEQ, T5_WIDTH), "pooled_prompt_embeds": (CLIP_WIDTH,), "guidance": ()}),
    "flux-schnell": (lambda: tiny_flux_pipeline(guidance_embeds=False), "flux",
                     {**SIZES["flux"], "max_sequence_length": SEQ},
                     {"prompt_embeds": (SEQ, T5_WIDTH), "pooled_prompt_embeds": (CLIP_WIDTH,)}),
    "pixart-sigma": (tiny_pixart_pipeline, "pixart", {**SIZES["pixart"], "max_sequence_length": SEQ},
                     {"prompt_embeds": (SEQ, T5_WIDTH), "prompt_attention_mask": (SEQ,)}),
    "pixart-alpha": (lambda: tiny_pixart_pipeline(alpha=True), "pixart",
                     {**SIZES["pixart"], "max_sequence_length": SEQ},
                     {"prompt_embeds": (SEQ, T5_WIDTH), "prompt_attention_mask": (SEQ,),
                      "resolution": (2,), "aspect_ratio": (1,)}),
    "sana": (tiny_sana_pipeline, "sana", {**SIZES["sana"], "max_sequence_length": SEQ},
             {"prompt_embeds": (SEQ, GEMMA_WIDTH), "prompt_attention_mask": (SEQ,)}),
}
NAMES = list(CASES)
_PIPES = {}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models are all overhead: on a loaded 2-core machine intra-op threads made them ~50x
    slower than one thread does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pipe_of(name):
    if name not in _PIPES:
        _PIPES[name] = CASES[name][0]()
    return _PIPES[name]


def denoiser(pipe):
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def generate(pipe, opts, seed=0, **kw):
    """Two steps, classifier-free guidance off (Flux has none to turn off: its guidance_scale is
    the dev model's guidance embedding)."""
    kw.setdefault("guidance_scale", 3.5 if family(pipe) == "flux" else 1.0)
    return pipe(num_inference_steps=2, generator=torch.Generator().manual_seed(seed), **opts, **kw).images


def unpacked(pipe, latents, opts):
    if family(pipe) != "flux":
        return latents
    return pipe._unpack_latents(latents, opts["height"], opts["width"], pipe.vae_scale_factor)


def as_call_kwargs(pipe, cond):
    """The pipeline's own call arguments that carry a condition."""
    if family(pipe) == "sd":
        return {"prompt_embeds": cond}
    kw = {k: v for k, v in cond.items()
          if k in ("prompt_embeds", "pooled_prompt_embeds", "prompt_attention_mask")}
    if "guidance" in cond:
        kw["guidance_scale"] = float(cond["guidance"][0])
    return kw


def captured_inputs(pipe, opts, prompt):
    """The keyword inputs of the denoiser's first call in ``pipe(prompt, ...)``, guidance off."""
    seen = []

    def hook(module, args, kwargs):
        if not seen:
            seen.append({k: v for k, v in kwargs.items()})

    handle = denoiser(pipe).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        generate(pipe, opts, prompt=prompt, output_type="latent")
    finally:
        handle.remove()
    return seen[0]


# ----------------------------------------------------------------------------- the builders

@pytest.mark.parametrize("name", NAMES)
def test_each_tiny_pipeline_generates_reproducibly(name):
    builder, fam, opts, _ = CASES[name]
    pipe = pipe_of(name)
    assert family(pipe) == fam
    lat = unpacked(pipe, generate(pipe, opts, prompt="a church", output_type="latent"), opts)
    assert lat.shape == (1, 4, 8, 8) and lat.dtype == torch.float32 and torch.isfinite(lat).all()
    image = generate(pipe, opts, prompt="a church", output_type="pt")
    side = opts.get("height", 16)
    assert image.shape == (1, 3, side, side) and torch.isfinite(image).all()
    again = unpacked(pipe, generate(builder(), opts, prompt="a church", output_type="latent"), opts)
    torch.testing.assert_close(again, lat, rtol=0, atol=0)  # same seed, same weights


# ----------------------------------------------------------------------------- conditions

@torch.no_grad()
def direct_encoding(pipe, prompts, opts):
    """The condition written out from each pipeline's encode_prompt (and __call__'s defaults)."""
    fam, dev, seq = family(pipe), "cpu", opts.get("max_sequence_length")
    if fam == "sd":
        return pipe.encode_prompt(prompts, dev, 1, False)[0]
    if fam == "sdxl":
        emb, _, pooled, _ = pipe.encode_prompt(prompts, device=dev, do_classifier_free_guidance=False)
        return {"prompt_embeds": emb, "pooled_prompt_embeds": pooled}
    if fam == "sd3":
        emb, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=dev,
                                               do_classifier_free_guidance=False, max_sequence_length=seq)
        return {"prompt_embeds": emb, "pooled_prompt_embeds": pooled}
    if fam == "flux":
        emb, pooled, _ = pipe.encode_prompt(prompts, device=dev, max_sequence_length=seq)
        return {"prompt_embeds": emb, "pooled_prompt_embeds": pooled}
    kw = {"clean_caption": True} if fam == "pixart" else {}  # PixArt's __call__ default
    if fam == "sana":
        import inspect
        kw["complex_human_instruction"] = inspect.signature(type(pipe).__call__).parameters[
            "complex_human_instruction"].default
        assert kw["complex_human_instruction"]  # Sana prepends its instruction by default
    emb, mask, _, _ = pipe.encode_prompt(prompts, False, device=dev, max_sequence_length=seq, **kw)
    return {"prompt_embeds": emb, "prompt_attention_mask": mask}


@pytest.mark.parametrize("name", NAMES)
def test_prompt_embeddings_have_the_documented_form_and_are_the_pipelines_own(name):
    _, fam, opts, form = CASES[name]
    pipe = pipe_of(name)
    cond = prompt_embeddings(pipe, PROMPTS, **opts)
    direct = direct_encoding(pipe, PROMPTS, opts)
    if fam == "sd":
        assert cond.shape == (2, *form) and cond.dtype == torch.float32 and cond.device.type == "cpu"
        torch.testing.assert_close(cond, direct, rtol=0, atol=0)
        return
    assert set(cond) == set(form)
    for k, shape in form.items():
        assert cond[k].shape == (2, *shape), k
        assert cond[k].device.type == "cpu"
        assert cond[k].dtype == (torch.int64 if k == "prompt_attention_mask" else torch.float32), k
    for k, v in direct.items():
        torch.testing.assert_close(cond[k], v.to(cond[k].dtype), rtol=0, atol=0)
    if "guidance" in cond:
        assert cond["guidance"].tolist() == [3.5, 3.5]
        assert prompt_embeddings(pipe, "x", guidance_scale=2.0, **opts)["guidance"].tolist() == [2.0]
    one = prompt_embeddings(pipe, PROMPTS[1], **opts)  # a single string
    assert all(one[k].shape == (1, *cond[k].shape[1:]) for k in cond)


@pytest.mark.parametrize("name", NAMES)
def test_the_condition_is_what_the_denoiser_is_fed(name):
    _, fam, opts, _ = CASES[name]
    pipe = pipe_of(name)
    cond = prompt_embeddings(pipe, PROMPTS[1], **opts)
    got = captured_inputs(pipe, opts, PROMPTS[1])
    if fam == "sd":
        torch.testing.assert_close(got["encoder_hidden_states"], cond, rtol=0, atol=0)
        return
    expect = {"prompt_embeds": got["encoder_hidden_states"]}
    if fam == "sdxl":
        expect["pooled_prompt_embeds"] = got["added_cond_kwargs"]["text_embeds"]
        expect["add_time_ids"] = got["added_cond_kwargs"]["time_ids"]
    if fam in ("sd3", "flux"):
        expect["pooled_prompt_embeds"] = got["pooled_projections"]
    if fam == "flux" and "guidance" in cond:
        expect["guidance"] = got["guidance"]
    if fam in ("pixart", "sana"):
        expect["prompt_attention_mask"] = got["encoder_attention_mask"]
    if fam == "pixart" and got["added_cond_kwargs"]["resolution"] is not None:
        expect["resolution"] = got["added_cond_kwargs"]["resolution"]
        expect["aspect_ratio"] = got["added_cond_kwargs"]["aspect_ratio"]
    assert set(expect) == set(cond)
    for k, v in expect.items():
        torch.testing.assert_close(cond[k], v.to(cond[k].dtype), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_feeding_the_condition_back_reproduces_the_pipeline(name):
    _, _, opts, _ = CASES[name]
    pipe = pipe_of(name)
    cond = prompt_embeddings(pipe, PROMPTS, **opts)
    from_prompt = generate(pipe, opts, prompt=PROMPTS, output_type="latent")
    from_cond = generate(pipe, opts, output_type="latent", **as_call_kwargs(pipe, cond))
    torch.testing.assert_close(from_cond, from_prompt, rtol=0, atol=0)


def test_the_pipelines_default_text_lengths_and_instruction_are_used():
    """SD3's 256 and Flux's 512 T5 tokens, PixArt-Σ's 300 and PixArt-α's 120, Sana's 300 Gemma
    tokens after its complex human instruction: __call__'s defaults, not encode_prompt's."""
    lengths = {"sd3": MAX_LENGTH + 256, "flux-dev": 512, "pixart-sigma": 300, "pixart-alpha": 120,
               "sana": 300}
    for name, length in lengths.items():
        pipe, opts = pipe_of(name), {k: v for k, v in CASES[name][2].items() if k != "max_sequence_length"}
        cond = prompt_embeddings(pipe, PROMPTS[0], **opts)
        assert cond["prompt_embeds"].shape[1] == length, name
    sana = pipe_of("sana")
    plain, _, _, _ = sana.encode_prompt(PROMPTS[0], False, device="cpu")  # no instruction
    instructed = prompt_embeddings(sana, PROMPTS[0])["prompt_embeds"]
    assert not torch.allclose(instructed, plain)
    got = captured_inputs(sana, SIZES["sana"], PROMPTS[0])
    torch.testing.assert_close(instructed, got["encoder_hidden_states"], rtol=0, atol=0)


def test_size_options_of_sdxl_and_pixart_alpha():
    sdxl = pipe_of("sdxl")
    assert prompt_embeddings(sdxl, "x")["add_time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]]
    ids = prompt_embeddings(sdxl, ["x", "y"], size=(32, 24))["add_time_ids"]
    assert ids.tolist() == [[32, 24, 0, 0, 32, 24]] * 2
    ids = prompt_embeddings(sdxl, "x", height=32, width=24, original_size=(64, 48),
                            crops_coords_top_left=(2, 4))["add_time_ids"]
    assert ids.tolist() == [[64, 48, 2, 4, 32, 24]]
    alpha = pipe_of("pixart-alpha")
    cond = prompt_embeddings(alpha, "x", height=16, width=32, use_resolution_binning=False)
    assert cond["resolution"].tolist() == [[16.0, 32.0]] and cond["aspect_ratio"].tolist() == [[0.5]]
    binned = prompt_embeddings(alpha, "x", height=16, width=32)  # __call__ bins by default
    assert binned["resolution"].tolist() == [[704.0, 1408.0]]  # PixArt's 1024-px bin for ratio 0.5


# ----------------------------------------------------------------------------- latents

def independent_latents(pipe, images):
    """The family's training-script convention, written out (one batch, generator seed 0)."""
    vae, fam = pipe.vae, family(pipe)
    if fam == "sana":
        return vae.encode(images).latent * vae.config.scaling_factor
    z = vae.encode(images).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    shift = vae.config.shift_factor if fam in ("sd3", "flux") else 0.0
    if fam in ("sd3", "flux"):
        assert shift > 0  # the tiny VAEs carry SD3's / Flux's constants
    return (z - shift) * vae.config.scaling_factor


@pytest.mark.parametrize("name", NAMES)
def test_encode_and_decode_follow_the_familys_latent_convention(name):
    _, fam, opts, _ = CASES[name]
    pipe = pipe_of(name)
    side = opts.get("height", 16)
    g = torch.Generator().manual_seed(3)
    images = torch.rand(3, 3, side, side, generator=g) * 2 - 1
    with torch.no_grad():
        lat = encode_images(pipe, images)
        torch.testing.assert_close(lat, independent_latents(pipe, images))
    assert lat.shape == (3, 4, 8, 8) and lat.dtype == torch.float32
    torch.testing.assert_close(encode_images(pipe, images, batch_size=2)[:2], lat[:2])  # batch 1 = same draws
    decoded = decode_latents(pipe, lat, batch_size=2)
    assert decoded.shape == images.shape and decoded.min() >= -1 and decoded.max() <= 1
    # decode_latents is the pipeline's own decoding: its "pt" images are (x + 1) / 2
    latent = unpacked(pipe, generate(pipe, opts, prompt="a dog", output_type="latent"), opts)
    image = generate(pipe, opts, prompt="a dog", output_type="pt")
    torch.testing.assert_close((decode_latents(pipe, latent) + 1) / 2, image, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"scaled to \[-1, 1\]"):
        encode_images(pipe, images * 200)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        encode_images(pipe, images[0])
    with pytest.raises(ValueError, match="multiples of"):
        encode_images(pipe, images[..., :side - 1, :side - 1])
    with pytest.raises(ValueError, match=r"\[N, 4, h, w\]"):
        decode_latents(pipe, lat[:, :3])


def test_an_sdxl_vae_with_per_channel_latent_statistics():
    """VAEs with latents_mean/latents_std (Playground-style SDXL): the pipeline decodes
    latents·std/scale + mean, so the latents are (z − mean)·scale/std."""
    pipe = tiny_sdxl_pipeline()
    mean, std = [0.1, -0.2, 0.3, 0.0], [0.5, 1.5, 1.0, 2.0]
    pipe.vae.register_to_config(latents_mean=mean, latents_std=std)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        z = pipe.vae.encode(images).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    m, s = torch.tensor(mean).view(1, 4, 1, 1), torch.tensor(std).view(1, 4, 1, 1)
    lat = encode_images(pipe, images)
    torch.testing.assert_close(lat, (z - m) * pipe.vae.config.scaling_factor / s)
    latent = generate(pipe, {}, prompt="a dog", output_type="latent")
    image = generate(pipe, {}, prompt="a dog", output_type="pt")
    torch.testing.assert_close((decode_latents(pipe, latent) + 1) / 2, image, rtol=1e-5, atol=1e-5)


def test_sd3_without_t5_and_sana_with_its_shipped_scheduler():
    sd3 = tiny_sd3_pipeline(t5=False)  # diffusers feeds zeros in T5's place
    cond = prompt_embeddings(sd3, PROMPTS, max_sequence_length=SEQ)
    assert cond["prompt_embeds"].shape == (2, MAX_LENGTH + SEQ, T5_WIDTH)
    assert (cond["prompt_embeds"][:, MAX_LENGTH:] == 0).all()
    opts = {"max_sequence_length": SEQ}
    torch.testing.assert_close(generate(sd3, opts, output_type="latent", **as_call_kwargs(sd3, cond)),
                               generate(sd3, opts, prompt=PROMPTS, output_type="latent"), rtol=0, atol=0)
    sana = tiny_sana_pipeline(dpm_solver=True)
    opts = {**SIZES["sana"], "max_sequence_length": SEQ}
    data = pipeline_data(sana, ["a dog"], n_per_prompt=2, num_inference_steps=2, progress=False, **opts)
    assert len(data) == 2 and data[1][0].shape == (4, 8, 8) and torch.isfinite(data.images).all()


def test_a_lora_scale_in_the_attention_kwargs_reaches_the_text_encoder():
    from peft import LoraConfig, inject_adapter_in_model
    pipe = tiny_sdxl_pipeline()
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
                            pipe.text_encoder)
    plain = prompt_embeddings(pipe, "a dog")["prompt_embeds"]
    half = prompt_embeddings(pipe, "a dog", cross_attention_kwargs={"scale": 0.5})["prompt_embeds"]
    assert not torch.allclose(plain, half)
    got = captured_inputs(pipe, {"cross_attention_kwargs": {"scale": 0.5}}, "a dog")
    torch.testing.assert_close(half, got["encoder_hidden_states"], rtol=0, atol=0)


# ----------------------------------------------------------------------------- generated data

@pytest.mark.parametrize("name", NAMES)
def test_pipeline_data_items_have_the_documented_form(name):
    _, fam, opts, form = CASES[name]
    pipe = pipe_of(name)
    data = pipeline_data(pipe, PROMPTS, n_per_prompt=3, num_inference_steps=2, batch_size=2,
                         progress=False, **opts)
    assert len(data) == 6
    cond = prompt_embeddings(pipe, PROMPTS, **opts)
    latent, c = data[4]  # the second prompt's second latent
    assert latent.shape == (4, 8, 8) and latent.dtype == torch.float32
    if fam == "sd":
        from torch.utils.data import TensorDataset
        assert isinstance(data, TensorDataset) and c.shape == form
        torch.testing.assert_close(c, cond[1])
    else:
        assert isinstance(data, ConditionedImages) and set(c) == set(form)
        for k, shape in form.items():
            assert c[k].shape == shape
            torch.testing.assert_close(c[k], cond[k][1])
        batch = next(iter(torch.utils.data.DataLoader(data, batch_size=4)))
        assert batch[0].shape == (4, 4, 8, 8) and batch[1]["prompt_embeds"].shape[0] == 4
    # latent k is the pipeline's own output, alone, from seed 0 + k (batching changes only rounding)
    gs = {"sd": 7.5, "sdxl": 5.0, "sd3": 7.0, "flux": 3.5, "pixart": 4.5, "sana": 4.5}[fam]
    for k in (0, 4):
        own = pipe(PROMPTS[k // 3], num_inference_steps=2, guidance_scale=gs, output_type="latent",
                   generator=torch.Generator().manual_seed(k), **opts).images
        torch.testing.assert_close(data[k][0], unpacked(pipe, own, opts)[0], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- errors

def test_an_unsupported_pipeline_gets_one_clear_error():
    sd = pipe_of("sd")
    img2img = StableDiffusionImg2ImgPipeline(**sd.components)
    ddpm = DDPMPipeline(unet=UNet2DModel(sample_size=8, in_channels=3, out_channels=3,
                                         block_out_channels=(8, 16), norm_num_groups=4,
                                         layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                                         up_block_types=("UpBlock2D",) * 2), scheduler=sd.scheduler)
    for pipe in (img2img, ddpm, object()):
        for call in (lambda: family(pipe), lambda: prompt_embeddings(pipe, "x"),
                     lambda: encode_images(pipe, torch.zeros(1, 3, 16, 16)),
                     lambda: pipeline_data(pipe, ["x"], 1)):
            with pytest.raises(ValueError, match="supports the text-to-image pipelines "
                                                 "StableDiffusionPipeline .*SanaPipeline"):
                call()


def test_clear_errors_for_bad_inputs():
    sdxl = pipe_of("sdxl")
    with pytest.raises(ValueError, match="at least one prompt"):
        prompt_embeddings(sdxl, [])
    with pytest.raises(ValueError, match="prompts must be strings"):
        prompt_embeddings(sdxl, ["a dog", None])
    with pytest.raises(ValueError, match="takes no option max_sequence_lenght="):
        prompt_embeddings(pipe_of("sd3"), "x", max_sequence_lenght=8)
    with pytest.raises(ValueError, match="prompt_embeds= is set by safemax"):
        prompt_embeddings(sdxl, "x", prompt_embeds=torch.zeros(1, 16, 32))
    with pytest.raises(ValueError, match="not both"):
        prompt_embeddings(sdxl, "x", size=(16, 16), height=16)
    with pytest.raises(ValueError, match="n_per_prompt must be at least 1"):
        pipeline_data(sdxl, ["x"], 0)
    with pytest.raises(ValueError, match="no prompt_2="):
        pipeline_data(sdxl, ["x"], 1, prompt_2=["y"])
    with pytest.raises(ValueError, match="at least one image"):
        encode_images(sdxl, torch.zeros(0, 3, 16, 16))


def test_the_old_module_still_exports_the_helpers():
    import safemax.models.pipelines as new
    for name in ("prompt_embeddings", "encode_images", "decode_latents", "pipeline_data"):
        assert getattr(safemax.models.pipelines, name) is getattr(new, name)
