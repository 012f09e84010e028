"""UCE — Unified Concept Editing (Gandikota et al., WACV 2024, arXiv 2308.14761): a closed-form
edit of every cross-attention key and value projection, the field's fastest concept-erasure
baseline (no training: seconds).

Each projection ``W`` (``attn2.to_k`` / ``attn2.to_v`` of a UNet: text-token embeddings ``c`` in,
keys or values out) is replaced by the least-squares solution of "map each erased concept's
embedding ``c_i`` to its guide's output ``v_i* = W_old c_i*``, keep each preserved embedding's
output ``W_old c_j``, stay near ``W_old``":

    W = (e Σ_i v_i* c_iᵀ + p Σ_j W_old c_j c_jᵀ + λ W_old) (e Σ_i c_i c_iᵀ + p Σ_j c_j c_jᵀ + λ I)⁻¹

with ``e`` = ``erase_scale``, ``p`` = ``preserve_scale`` and ``λ`` = ``lamb`` (the official
code's defaults 1, 1 and 0.5). As the official code (rohitgandikota/unified-concept-editing,
``trainscripts/uce_sd_erase.py``) does, a prompt's embedding ``c`` is its text encoder's output
at its last token before the end token (the concept's word), and an object's guide is the empty
prompt (its start token's output).

Stable Diffusion 1.x/2.x and SDXL (UNets with ``attn2`` cross-attention). SD3/3.5's MMDiT has no
projection from the text states to keys and values that the prompt alone determines: its joint
blocks' context projections (``add_k_proj``/``add_v_proj``) read a context stream that the
timestep's modulation and the image tokens have already changed. What the prompt alone feeds are
two linear maps, and on SD3 UCE's closed form edits those instead: ``context_embedder`` (every
token state in, the context stream out) and the pooled prompt's first projection
(``time_text_embed.text_embedder.linear_1``: the pooled CLIP embeddings in, towards every block's
modulation), the concept's pooled embedding mapped to the guide's and the kept prompts' kept.
This is this project's extension, not the published method. Flux, PixArt and Sana are refused.
"""
import time

import torch

FAMILIES = ("sd", "sdxl", "sd3")


def uce_weight(w_old: torch.Tensor, erase_c, guide_v, keep_c, erase_scale: float = 1.0,
               preserve_scale: float = 1.0, lamb: float = 0.5) -> torch.Tensor:
    """The edited projection of the module's docstring, computed in float64 and returned in
    ``w_old``'s dtype. ``w_old [out, d]``; ``erase_c [n_e, d]`` erased embeddings with
    ``guide_v [n_e, out]`` the outputs they should give; ``keep_c [n_k, d]`` preserved
    embeddings (their outputs stay ``W_old c``)."""
    w = w_old.double()
    d = w.shape[1]
    erase_c, guide_v, keep_c = (torch.as_tensor(x).double().reshape(-1, s)
                                for x, s in ((erase_c, d), (guide_v, w.shape[0]), (keep_c, d)))
    if len(erase_c) != len(guide_v):
        raise ValueError(f"{len(erase_c)} erased embeddings but {len(guide_v)} guide outputs")
    left = lamb * w + erase_scale * guide_v.T @ erase_c + preserve_scale * (w @ keep_c.T) @ keep_c
    right = lamb * torch.eye(d, dtype=torch.float64) + erase_scale * erase_c.T @ erase_c \
        + preserve_scale * keep_c.T @ keep_c
    return torch.linalg.solve(right, left.T).T.to(w_old.dtype)   # left @ right⁻¹ (right is symmetric)


def text_projections(pipe) -> dict:
    """``{name: (Linear, kind)}`` of what UCE edits in ``pipe``'s denoiser: each reads every token
    state (kind ``"tokens"``) or the pooled prompt embedding (``"pooled"``) — see the module."""
    from safemax.concepts.loading import denoiser_of
    from safemax.models.pipelines import family
    denoiser = denoiser_of(pipe)
    if family(pipe) == "sd3":
        return {"context_embedder": (denoiser.context_embedder, "tokens"),
                "time_text_embed.text_embedder.linear_1": (denoiser.time_text_embed.text_embedder.linear_1, "pooled")}
    return {name: (m, "tokens") for name, m in cross_attention_projections(denoiser).items()}


def cross_attention_projections(denoiser) -> dict:
    """``{name: Linear}`` of every cross-attention key and value projection UCE edits."""
    return {name: m for name, m in denoiser.named_modules()
            if "attn2" in name and (name.endswith("to_k") or name.endswith("to_v"))}


@torch.no_grad()
def _token_states(pipe, prompts) -> torch.Tensor:
    """``[N, L, D]``: each prompt's token states as the pipeline's denoiser reads them (a text
    family's ``prompt_embeds``; SD3's: the CLIP states, then the T5 ones)."""
    from safemax.models.pipelines import prompt_embeddings
    emb = prompt_embeddings(pipe, list(prompts))
    return emb["prompt_embeds"] if isinstance(emb, dict) else emb


@torch.no_grad()
def token_embeddings(pipe, prompts) -> torch.Tensor:
    """``[N, D]``: each prompt's text-encoder output at its last token before the end token
    (the empty prompt: its start token), as UCE takes a concept's embedding."""
    emb = _token_states(pipe, prompts)
    mask = pipe.tokenizer(list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt")["attention_mask"]
    last = (mask.sum(1) - 2).clamp_min(0)
    return emb[torch.arange(len(prompts)), last]


@torch.no_grad()
def states_from_the_word(pipe, erase_prompts, guide: str = ""):
    """``(erase_c [M, D], guide_c [M, D])``: each erasing prompt's states from its concept word
    on — the word, the end token, the padding, which a causal CLIP encoder lets know the concept
    (the states before the word are the same as a kept prompt's with that start) — each with
    the guide's state it is mapped to: the word to the guide's last state before its end token
    (as published), the end token to the guide's end token, each padding state to the guide's
    padding state at the same position."""
    prompts = list(erase_prompts) + [guide]
    emb = _token_states(pipe, prompts)
    length = pipe.tokenizer.model_max_length
    ends = pipe.tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                          return_tensors="pt")["attention_mask"].sum(1) - 1      # each prompt's end token
    g_end = int(ends[-1])
    erase_rows, guide_rows = [], []
    for i, end in enumerate(ends[:-1].tolist()):
        positions = list(range(end - 1, length))
        erase_rows += [emb[i, j] for j in positions]
        guide_rows += [emb[-1, max(g_end - 1, 0)], emb[-1, g_end]] + [emb[-1, max(j, g_end + 1)] for j in positions[2:]]
        # SD3's T5 states after the CLIP ones (a bidirectional encoder: each may know the concept),
        # each to the guide's at its position (without a T5 they are zeros and change nothing)
        erase_rows += list(emb[i, length:])
        guide_rows += list(emb[-1, length:])
    return torch.stack(erase_rows), torch.stack(guide_rows)


@torch.no_grad()
def pooled_embeddings(pipe, prompts) -> torch.Tensor:
    """``[N, P]``: each prompt's pooled embedding (SD3's ``pooled_prompt_embeds``)."""
    from safemax.models.pipelines import prompt_embeddings
    return prompt_embeddings(pipe, list(prompts))["pooled_prompt_embeds"]


@torch.no_grad()
def all_token_embeddings(pipe, prompts) -> torch.Tensor:
    """``[N·L, D]``: every token state of each prompt, prompt-major."""
    emb = _token_states(pipe, prompts)
    return emb.reshape(-1, emb.shape[-1])


@torch.no_grad()
def uce_edit(pipe, erase_prompts, keep_prompts=(), guide: str = "", erase_scale: float = 1.0,
             preserve_scale: float = 1.0, lamb: float = 0.5, tokens: str = "word") -> dict:
    """Edit ``pipe``'s UNet in place so that each erasing prompt's concept gives ``guide``'s
    keys and values, keeping ``keep_prompts``'; returns a record (modules edited, seconds).

    ``tokens="word"`` (the published method): one embedding per prompt, its concept word's.
    ``tokens="after"``: every state from the concept word on is mapped to its guide state
    (``states_from_the_word``) and every state of the kept prompts is preserved — for text
    encoders that carry the concept past its word (a CLIP's end and padding states hold its
    pooled meaning, and a UNet cross-attends to all of them)."""
    from safemax.models.pipelines import family
    fam = family(pipe)
    if fam not in FAMILIES:
        raise ValueError(f"UCE edits the cross-attention projections of Stable Diffusion 1.x/2.x and SDXL UNets "
                         f"(and SD3's text projections); a {type(pipe).__name__} ({fam}) has none it defines: use "
                         "another method")
    if tokens not in ("word", "after"):
        raise ValueError(f'tokens must be "word" (UCE as published) or "after" (the word and every state after '
                         f'it), got {tokens!r}')
    start = time.perf_counter()
    modules = text_projections(pipe)
    erase_prompts = list(erase_prompts)
    keep_prompts = [k for k in keep_prompts if k != guide]   # the guide keeps its own output anyway
    n = len(erase_prompts)
    if tokens == "word":
        emb = token_embeddings(pipe, erase_prompts + [guide] + keep_prompts)
        erase_c, guide_c, keep_c = emb[:n], emb[n:n + 1].expand(n, -1), emb[n + 1:]
    else:
        erase_c, guide_c = states_from_the_word(pipe, erase_prompts, guide)
        keep_c = all_token_embeddings(pipe, keep_prompts) if keep_prompts else erase_c[:0]
    rows_of = {"tokens": (erase_c, guide_c, keep_c)}
    if any(kind == "pooled" for _, kind in modules.values()):
        pooled = pooled_embeddings(pipe, erase_prompts + [guide] + keep_prompts)
        rows_of["pooled"] = (pooled[:n], pooled[n:n + 1].expand(n, -1), pooled[n + 1:])
    for m, kind in modules.values():
        e_c, g_c, k_c = rows_of[kind]
        w_old = m.weight.detach()
        dev = w_old.device
        guide_v = g_c.to(dev).double() @ w_old.double().T
        m.weight.copy_(uce_weight(w_old.cpu(), e_c, guide_v.cpu(), k_c, erase_scale, preserve_scale, lamb).to(dev))
    return dict(modules=len(modules), guide=guide, erase_scale=erase_scale, preserve_scale=preserve_scale,
                lamb=lamb, tokens=tokens, erase_prompts=n, keep_prompts=len(keep_prompts),
                seconds=round(time.perf_counter() - start, 3))


__all__ = ["FAMILIES", "uce_weight", "text_projections", "cross_attention_projections", "pooled_embeddings",
           "token_embeddings", "states_from_the_word", "all_token_embeddings", "uce_edit"]
