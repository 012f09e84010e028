"""Tiny, randomly initialised pipelines of every diffusers family safemax supports, for tests.

Like ``tiny_sd.py`` (Stable Diffusion 1.x) these are assembled offline — random weights, tokenizers
built in code — as float32 CPU pipelines in eval mode with progress bars disabled, reproducible per
``seed``. Each generates from 4x8x8 latents with 2 inference steps in a fraction of a second.

| builder | pipeline | denoiser | images | latents (denoiser space) | condition of one prompt |
| --- | --- | --- | --- | --- | --- |
| ``tiny_sdxl_pipeline`` | ``StableDiffusionXLPipeline`` | UNet, ``addition_embed_type="text_time"`` | 16x16 | 4x8x8 | prompt_embeds [16, 32] (two CLIPs, 16 + 16), pooled [16], add_time_ids [6] |
| ``tiny_sd3_pipeline`` | ``StableDiffusion3Pipeline`` | SD3 transformer, patch 2 | 16x16 | 4x8x8, VAE shift + scale | prompt_embeds [16 + T5 length, 32], pooled [32] (16 + 16) |
| ``tiny_flux_pipeline`` | ``FluxPipeline`` | Flux transformer on packed 2x2 patches (16 tokens of 16) | 16x16 | 4x8x8 unpacked, VAE shift + scale | prompt_embeds [T5 length, 32], pooled [16], dev: guidance |
| ``tiny_pixart_pipeline`` | ``PixArtSigmaPipeline`` (``alpha=True``: ``PixArtAlphaPipeline`` with micro-conditions) | PixArt transformer, patch 2, learned variance (8 out channels) | 16x16 | 4x8x8 | prompt_embeds [T5 length, 32], attention mask; α: resolution [2], aspect ratio [1] |
| ``tiny_sana_pipeline`` | ``SanaPipeline`` | Sana transformer, patch 1 | 32x32 | 4x8x8 (``AutoencoderDC``, factor 4) | prompt_embeds [Gemma length, 16], attention mask |

Text widths: the CLIP encoders are 16 wide (with 16-wide projections where the family pools), the
T5 encoders 32, Gemma2 16. CLIP tokenizers pad to ``MAX_LENGTH`` = 16 tokens; the T5 and Gemma
lengths are the pipelines' own ``max_sequence_length`` defaults (SD3 256, Flux 512, PixArt-Σ 300,
PixArt-α 120, Sana 300, after its complex human instruction), so pass e.g.
``max_sequence_length=8`` to keep tests quick.

Generation sizes: SDXL and SD3 generate at their default size (the denoiser's ``sample_size`` 8
times the VAE's factor 2). Flux's and Sana's defaults are fixed in diffusers (1024 px), Sana wants
multiples of 32, and PixArt's and Sana's resolution binning only knows the real models' sample
sizes, so ``SIZES[family]`` holds the call options for the table's image size (``height``/``width``,
and ``use_resolution_binning=False`` for PixArt and Sana).
"""
import string

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SanaPipeline,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tiny_sd import tiny_clip_tokenizer
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    Gemma2Config,
    Gemma2Model,
    GemmaTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

IMAGE_SIZE = 16   # pixels; the KL VAEs here downsample by 2, so latents are 8x8
SANA_IMAGE_SIZE = 32  # Sana wants sizes divisible by 32; its AutoencoderDC downsamples by 4: 8x8
LATENT_CHANNELS = 4
CLIP_WIDTH = 16   # hidden size (and projection size) of every CLIP text encoder
T5_WIDTH = 32     # d_model of the T5 encoders
GEMMA_WIDTH = 16  # hidden size of Sana's Gemma2 encoder

# Call options each family needs to generate at 16x16 (see the module docstring).
SIZES = {
    "sdxl": {},
    "sd3": {},
    "flux": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    "pixart": {"height": IMAGE_SIZE, "width": IMAGE_SIZE, "use_resolution_binning": False},
    "sana": {"height": SANA_IMAGE_SIZE, "width": SANA_IMAGE_SIZE, "use_resolution_binning": False},
}

_CHARS = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
_WORDS = ["a", "an", "the", "of", "photo", "painting", "church", "dog", "cat", "tree", "car", "in"]


# --------------------------------------------------------------------------- text encoders

def _clip(seed_offset: int, with_projection: bool, tokenizer):
    torch.manual_seed(seed_offset)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=CLIP_WIDTH, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        projection_dim=CLIP_WIDTH, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A T5 (SentencePiece-Unigram) tokenizer over ASCII characters and a few whole words.

    Layout as T5's: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2; "▁word" pieces score better than
    spelling the word out, so common words are one token; other ASCII is spelt; the rest is <unk>.
    """
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -5.0) for c in _CHARS] + [("▁" + w, -3.0) for w in _WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_t5_encoder(tokenizer, seed: int = 0) -> T5EncoderModel:
    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=T5_WIDTH, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id))


def tiny_gemma_tokenizer() -> GemmaTokenizer:
    """A Gemma (byte-fallback BPE) tokenizer: the 256 byte tokens, ASCII characters, a few merges.

    It prepends ``<bos>`` like Gemma's; any text tokenises (unknown characters fall back to bytes).
    """
    merges = [("t", "h"), ("▁", "th"), ("▁th", "e"), ("▁", "a"), ("o", "f"), ("▁", "of")]
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for tok in [f"<0x{i:02X}>" for i in range(256)] + ["▁"] + list(_CHARS) + ["".join(m) for m in merges]:
        vocab.setdefault(tok, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


# --------------------------------------------------------------------------- VAEs

def _vae_kl(latent_channels=LATENT_CHANNELS, **config) -> AutoencoderKL:
    return AutoencoderKL(
        sample_size=IMAGE_SIZE, in_channels=3, out_channels=3, latent_channels=latent_channels,
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        **config)


def _done(pipe):
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # as from_pretrained leaves them: T5 and Gemma2 have dropout
    pipe.set_progress_bar_config(disable=True)
    return pipe  # built on the CPU in float32 (torch defaults)


# --------------------------------------------------------------------------- pipelines

def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL: a text_time UNet, ``CLIPTextModel`` + ``CLIPTextModelWithProjection`` (16 + 16 wide)."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=2,
        cross_attention_dim=2 * CLIP_WIDTH, transformer_layers_per_block=(1, 1),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + CLIP_WIDTH)  # 6 time ids + text_encoder_2's pool
    torch.manual_seed(seed + 1)
    vae = _vae_kl(scaling_factor=0.13025)  # SDXL's VAE scale
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, steps_offset=1,
                              timestep_spacing="leading")
    return _done(StableDiffusionXLPipeline(
        vae=vae, text_encoder=_clip(seed + 2, False, tokenizer), tokenizer=tokenizer,
        text_encoder_2=_clip(seed + 3, True, tokenizer_2), tokenizer_2=tokenizer_2, unet=unet,
        scheduler=scheduler, add_watermarker=False))


def tiny_sd3_pipeline(seed: int = 0, t5: bool = True) -> StableDiffusion3Pipeline:
    """SD3: an SD3 transformer, two ``CLIPTextModelWithProjection`` and a T5 (``t5=False``: none,
    which diffusers allows: the pipeline then feeds zeros in T5's place)."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=IMAGE_SIZE // 2, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
        caption_projection_dim=16, pooled_projection_dim=2 * CLIP_WIDTH,
        out_channels=LATENT_CHANNELS, pos_embed_max_size=IMAGE_SIZE // 2)
    torch.manual_seed(seed + 1)
    vae = _vae_kl(scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                  use_post_quant_conv=False)  # SD3's VAE constants
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    tokenizer_3 = tiny_t5_tokenizer() if t5 else None
    return _done(StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=_clip(seed + 2, True, tokenizer), tokenizer=tokenizer,
        text_encoder_2=_clip(seed + 3, True, tokenizer_2), tokenizer_2=tokenizer_2,
        text_encoder_3=tiny_t5_encoder(tokenizer_3, seed + 4) if t5 else None,
        tokenizer_3=tokenizer_3))


def tiny_flux_pipeline(guidance_embeds: bool = True, seed: int = 0) -> FluxPipeline:
    """Flux.1: ``guidance_embeds=True`` is FLUX.1-dev's guidance-distilled transformer, False is
    schnell's. A ``CLIPTextModel`` (the pooled 16) and a T5 (the sequence, 32 wide)."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=CLIP_WIDTH, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6))
    torch.manual_seed(seed + 1)
    vae = _vae_kl(scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                  use_post_quant_conv=False)  # Flux's VAE constants
    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1-dev's scheduler config
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    return _done(FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=_clip(seed + 2, False, tokenizer),
        tokenizer=tokenizer, text_encoder_2=tiny_t5_encoder(tokenizer_2, seed + 3),
        tokenizer_2=tokenizer_2, transformer=transformer))


def tiny_pixart_pipeline(alpha: bool = False, seed: int = 0):
    """PixArt-Σ (``alpha=True``: PixArt-α with its resolution/aspect-ratio micro-conditions): a
    PixArt transformer that learns its variance (out_channels = 2·4), DDPM betas, a T5."""
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        # PixArt-α's pipeline passes the micro-conditions only when sample_size == 128 (its 1024 px
        # model); the positional embedding is recomputed for the 8x8 latents actually given.
        sample_size=128 if alpha else IMAGE_SIZE // 2, num_layers=1, patch_size=2,
        attention_head_dim=8, num_attention_heads=3, caption_channels=T5_WIDTH,  # α: width 3·k
        in_channels=LATENT_CHANNELS, out_channels=2 * LATENT_CHANNELS, cross_attention_dim=24,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        use_additional_conditions=alpha)
    torch.manual_seed(seed + 1)
    vae = _vae_kl(scaling_factor=0.18215)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                              beta_schedule="linear", clip_sample=False)
    tokenizer = tiny_t5_tokenizer()
    cls = PixArtAlphaPipeline if alpha else PixArtSigmaPipeline
    return _done(cls(tokenizer=tokenizer, text_encoder=tiny_t5_encoder(tokenizer, seed + 2),
                     vae=vae, transformer=transformer, scheduler=scheduler))


def tiny_sana_pipeline(seed: int = 0, dpm_solver: bool = False) -> SanaPipeline:
    """Sana: a Sana transformer, a deep-compression ``AutoencoderDC`` and a Gemma2 encoder.

    The scheduler is a rectified-flow ``FlowMatchEulerDiscreteScheduler`` with Sana's flow shift 3
    (as diffusers' own Sana tests); ``dpm_solver=True`` gives what Sana checkpoints ship instead: a
    ``DPMSolverMultistepScheduler`` with ``prediction_type="flow_prediction"``.
    """
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_layers=1,
        num_attention_heads=2, attention_head_dim=4, num_cross_attention_heads=2,
        cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=GEMMA_WIDTH,
        sample_size=IMAGE_SIZE // 2)
    torch.manual_seed(seed + 1)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=LATENT_CHANNELS, attention_head_dim=2,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        downsample_block_type="conv", upsample_block_type="interpolate",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)
    if dpm_solver:
        scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                flow_shift=3.0)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    torch.manual_seed(seed + 2)
    tokenizer = tiny_gemma_tokenizer()
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=GEMMA_WIDTH, intermediate_size=32, head_dim=8,
        num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2,
        max_position_embeddings=2048, sliding_window=64, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        attn_implementation="eager"))
    return _done(SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                              transformer=transformer, scheduler=scheduler))


BUILDERS = {
    "sdxl": tiny_sdxl_pipeline,
    "sd3": tiny_sd3_pipeline,
    "flux": tiny_flux_pipeline,
    "pixart": tiny_pixart_pipeline,
    "sana": tiny_sana_pipeline,
}
