"""Training a text-conditional denoiser's cross-attention alone (``Unlearner(..., train="cross-attention")``).

In a Stable-Diffusion-type UNet (and PixArt's, Sana's transformer) the text reaches the image only
through the cross-attention layers, ``attn2``: their query, key, value and output projections. A
concept fit that trains those alone (as ESD-x does) leaves every convolution, self-attention and
time embedding the original's, so what it can change is how the image attends to text — the
concept's tokens above all — and much less of what the model does for every prompt.
"""


def is_cross_attention(name: str) -> bool:
    """Whether the parameter ``name`` belongs to a text cross-attention layer (``attn2``)."""
    return "attn2." in name


def train_cross_attention_only(model) -> int:
    """Freeze every weight of ``model`` outside its cross-attention; returns how many parameters
    still train. A clear error for a model without cross-attention (a class-conditional UNet, or
    SD3's and Flux's joint attention, whose text and image share one attention)."""
    names = [n for n, _ in model.named_parameters() if is_cross_attention(n)]
    if not names:
        raise ValueError(f'train="cross-attention" trains the text cross-attention (attn2 layers); '
                         f"{type(model).__name__} has none: train all of it (train=\"all\") or a LoRA adapter")
    for n, p in model.named_parameters():
        if not is_cross_attention(n):
            p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
