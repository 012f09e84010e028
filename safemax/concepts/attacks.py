"""Adversarial prompts against an erased concept: does a prompt exist that brings it back?

Both attacks prepend ``k`` tokens to the concept's erasing prompts and fit them to the erased
model's own denoising loss on latents *of the concept*, E_t ‖ε_θ(x_t | tokens + prompt) − ε‖²
(UnlearnDiffAtk's objective, Zhang et al., ECCV 2024): tokens that make the model denoise the
concept well are the ones that make it draw it.

- ``soft``: the tokens are free continuous input embeddings (textual-inversion style, Pham et
  al. 2023) — the strongest white-box form; a user cannot type them.
- ``prefix``: the tokens must be words of the vocabulary (UnlearnDiffAtk's discrete prompt):
  continuous embeddings projected, in every forward pass, onto their nearest vocabulary tokens,
  the gradient at the projection applied to the continuous ones (PEZ's straight-through
  projection); the result is a plain text prompt.

The budget is the same for every method attacked: ``steps`` Adam steps at ``lr`` of ``batch``
latents, ``k`` tokens, initialised from the embedding of "a". Success is judged as
``safemax.concepts.evaluate`` judges forgetting: samples of the attacked prompts at guidance 7.5
classified (``attack success rate``: the share that is the concept).

Stable Diffusion 1.x/2.x pipelines (one CLIP text encoder, last hidden state), the family of
the pipelines trained here.
"""
import copy

import torch

KINDS = ("soft", "prefix")
BUDGET = dict(k=3, steps=100, lr=1e-2, batch=8)
"""Every attack's budget unless told otherwise: the same for every method attacked."""


def _attackable(pipe):
    from safemax.models.pipelines import family
    if family(pipe) != "sd":
        raise ValueError(f"the prompt attacks run on Stable Diffusion 1.x/2.x pipelines; a {type(pipe).__name__} "
                         "has other text encoders")


class AdversarialPrompt:
    """An attack's result: the ``prompts`` to sample (the concept's erasing prompts behind the
    found tokens), the pipeline to sample them with (``pipe``: with the new tokens for ``soft``,
    the erased pipeline itself for ``prefix``), the final loss and the loss of the plain prompts."""

    def __init__(self, kind, pipe, prompts, loss, plain_loss, tokens=None):
        self.kind, self.pipe, self.prompts, self.loss, self.plain_loss, self.tokens = \
            kind, pipe, prompts, loss, plain_loss, tokens

    def record(self) -> dict:
        return dict(kind=self.kind, prompts=self.prompts, loss=round(self.loss, 6),
                    plain_loss=round(self.plain_loss, 6), tokens=self.tokens)


class _ExtendedEmbedding(torch.nn.Module):
    """A text encoder's token embedding with ``k`` rows appended: the vocabulary's rows frozen,
    the new ones (``rows``, set before each forward pass) carrying the gradient."""

    def __init__(self, base: torch.nn.Embedding, k: int):
        super().__init__()
        self.weight_base = base.weight.detach()
        self.rows = torch.zeros(k, base.weight.shape[1], dtype=base.weight.dtype, device=base.weight.device)

    def forward(self, ids):
        return torch.nn.functional.embedding(ids, torch.cat([self.weight_base, self.rows.to(self.weight_base.dtype)]))


def attack(pipe, erase_prompts, latents: torch.Tensor, kind: str = "soft", k: int = BUDGET["k"],
           steps: int = BUDGET["steps"], lr: float = BUDGET["lr"], batch: int = BUDGET["batch"],
           seed: int = 0) -> AdversarialPrompt:
    """Fit ``k`` prefix tokens (``kind``: ``"soft"`` or ``"prefix"``, see the module's docstring)
    to the pipeline's denoising loss on ``latents`` (the concept's, in the denoiser's space) under
    the ``erase_prompts``; the pipeline is not changed."""
    from safemax.models.denoiser import make_denoiser
    if kind not in KINDS:
        raise ValueError(f"attack kind must be one of {', '.join(KINDS)}, not {kind!r}")
    _attackable(pipe)
    if len(latents) == 0:
        raise ValueError("the attack needs latents of the concept")
    g = torch.Generator().manual_seed(seed)
    tokenizer = copy.deepcopy(pipe.tokenizer)
    names = [f"<adv{i}>" for i in range(k)]
    tokenizer.add_tokens(names)
    encoder = copy.deepcopy(pipe.text_encoder).requires_grad_(False).eval()
    base = encoder.get_input_embeddings()
    vocab = base.weight.detach()
    if tokenizer.convert_tokens_to_ids(names) != list(range(len(vocab), len(vocab) + k)):
        raise ValueError("the tokenizer's new tokens do not follow its vocabulary: cannot attack this pipeline")
    extended = _ExtendedEmbedding(base, k)
    encoder.set_input_embeddings(extended)
    start = vocab[tokenizer("a", add_special_tokens=False)["input_ids"][0]]
    free = start.repeat(k, 1).clone().float().requires_grad_(True)
    prompts = [" ".join(names) + " " + p for p in erase_prompts]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")["input_ids"]
    denoiser = make_denoiser(pipe.unet, type(pipe.scheduler).from_config(pipe.scheduler.config))
    device = denoiser.device()
    optimizer = torch.optim.Adam([free], lr=lr)

    allowed = typeable(pipe.tokenizer, len(vocab))

    def nearest_ids(e):
        return allowed[torch.cdist(e.detach().to(vocab.dtype), vocab[allowed]).argmin(1)]

    def nearest(e):
        return vocab[nearest_ids(e)].float()

    def loss_of(rows, draw):
        extended.rows = rows
        return _denoising_loss(denoiser, latents, encoder(ids[draw[0]].to(device))[0], draw)

    def draw_batch():
        n = min(batch, len(latents))
        return (torch.randint(0, len(prompts), (n,), generator=g),
                torch.randint(0, denoiser.num_train_timesteps, (n,), generator=g),
                torch.randn((n, *latents.shape[1:]), generator=g), torch.randint(0, len(latents), (n,), generator=g))

    check = [draw_batch() for _ in range(4)]   # fixed draws the losses are reported on

    def measured(rows):
        with torch.no_grad():
            return sum(float(loss_of(rows, d)) for d in check) / len(check)

    plain = _plain_loss(denoiser, pipe, erase_prompts, latents, check)
    for _ in range(steps):
        rows = free if kind == "soft" else free + (nearest(free) - free).detach()   # straight through
        loss = loss_of(rows, draw_batch())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if kind == "soft":
        extended.rows = free.detach()
        attacked = type(pipe)(**dict(pipe.components, tokenizer=tokenizer, text_encoder=encoder))
        attacked.set_progress_bar_config(disable=True)
        return AdversarialPrompt(kind, attacked, prompts, measured(free.detach()), plain)
    tokens = nearest_ids(free).tolist()
    words = " ".join(pipe.tokenizer.decode([t]).strip() for t in tokens)
    return AdversarialPrompt(kind, pipe, [f"{words} {p}" for p in erase_prompts], measured(vocab[tokens].float()),
                             plain, tokens=words)


def typeable(tokenizer, n: int) -> torch.Tensor:
    """The ids (< ``n``) of the tokens a user can type: printable, not special, and read back as
    themselves when their text is tokenised alone — what the discrete attack may choose from."""
    special = set(tokenizer.all_special_ids)
    keep = []
    for i in range(n):
        text = tokenizer.decode([i]).strip()
        if i not in special and text and text.isprintable() and \
                tokenizer(text, add_special_tokens=False)["input_ids"] == [i]:
            keep.append(i)
    if not keep:
        raise ValueError("the tokenizer has no typeable token: cannot run the discrete attack")
    return torch.tensor(keep)


def _denoising_loss(denoiser, latents, cond, draw) -> torch.Tensor:
    """The attacks' objective on one draw ``(prompt rows, t, ε, latent rows)``: the model's
    denoising loss on the concept's latents under the conditions ``cond`` (one row a draw)."""
    _, t, eps, which = draw
    device = denoiser.device()
    x_t, target = denoiser.noisy(latents[which].to(device), t.to(device), eps.to(device))
    return torch.nn.functional.mse_loss(denoiser.predict(x_t, t.to(device), cond).float(), target.float())


@torch.no_grad()
def _plain_loss(denoiser, pipe, prompts, latents, draws) -> float:
    """The same loss for the erasing prompts themselves (what the attack starts from beating)."""
    from safemax.models.pipelines import prompt_embeddings
    cond = prompt_embeddings(pipe, prompts)
    return sum(float(_denoising_loss(denoiser, latents, cond[d[0]].to(denoiser.device()), d)) for d in draws) / len(draws)


__all__ = ["KINDS", "BUDGET", "AdversarialPrompt", "attack", "typeable"]
