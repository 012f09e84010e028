"""``Unlearner``: SAFEMax (or a baseline) on a conditional diffusers UNet.

    u = Unlearner(unet, scheduler, forget=[3], early_fraction=0.5)       # classes
    u = Unlearner(sd_unet, scheduler, forget={"church": church_embeds})  # a text concept
    history = u.fit(retain=retain_ds, forget=forget_ds, steps=100, batch_size=64)
    u.save_pretrained("unet-without-3")

Each step draws ``batch_size`` forget and ``batch_size`` retain samples. Forget rows get
t ~ U[t_min, T) with t_min = ⌊(1 − early_fraction)·T⌋ and are trained towards the max-entropy
prediction √(1−ᾱ_t)·x_t; retain rows get t ~ U[0, T) and the original model's prediction. One
UNet forward runs on the concatenated batch and the fused ``safemax_loss`` op computes the loss.
``method="salun" | "sa" | "ga"`` runs a baseline in the same loop (see ``safemax.methods``).
Under ``accelerate launch`` the fit runs data-parallel (see ``safemax.parallel``).
"""
import contextlib
import json
import math
import os
import time

import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from . import __version__, checkpoint
from .data import Batches, balanced_labels
from .methods import Method, SafeMax, SelectiveAmnesia, make_method
from .parallel import Shard, make_accelerator
from .sampling import condition, epsilon_part, sample


def class_count(model):
    """How many class labels a class-conditional diffusers model takes: ``num_class_embeds``
    (UNet2DModel) or, for DiT (``DiTTransformer2DModel``, adaptive-norm-zero class
    conditioning), ``num_embeds_ada_norm``; None for an unconditional model."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "num_class_embeds", None) is not None:
        return cfg.num_class_embeds
    if getattr(cfg, "norm_type", None) == "ada_norm_zero":
        return getattr(cfg, "num_embeds_ada_norm", None)
    return None


def _class_ids(forget, num_classes) -> list:
    """Validate the class ids to forget → sorted unique list."""
    if num_classes is None:
        raise ValueError(
            "unet is not class-conditional (its config has no num_class_embeds, and it is not "
            "a DiT with num_embeds_ada_norm): give class ids for a class-conditional model, or "
            "forget={name: prompt embeddings} for a text-conditional UNet2DConditionModel")
    forget = [forget] if isinstance(forget, int) else list(forget)
    if not forget:
        raise ValueError("forget is empty: name at least one class id to forget")
    for c in forget:
        if not isinstance(c, int) or not 0 <= c < num_classes:
            raise ValueError(f"forget class {c!r} is not a class id of this UNet "
                             f"({num_classes} classes: ids 0..{num_classes - 1})")
    if len(set(forget)) == num_classes:
        raise ValueError("forget names every class: nothing would be left to keep")
    return sorted(set(forget))


def _concepts(forget: dict, unet) -> dict:
    """Validate text concepts ``{name: prompt embeddings [L, D] or [N, L, D]}`` → ``[N, L, D]``."""
    width = getattr(unet.config, "cross_attention_dim", None)
    if width is None:
        raise ValueError("forget was given as prompt embeddings, but the model has no "
                         "cross_attention_dim: a concept needs a text-conditional UNet "
                         "(UNet2DConditionModel); forget classes by id instead")
    if isinstance(width, (list, tuple)):
        if len(set(width)) != 1:
            raise ValueError(f"cross_attention_dim differs per block ({width}): not supported")
        width = width[0]
    if not forget:
        raise ValueError("forget is empty: name at least one concept")
    out = {}
    for name, emb in forget.items():
        if not isinstance(name, str):
            raise ValueError(f"concept names must be strings, got {name!r}")
        emb = torch.as_tensor(emb)
        if not emb.is_floating_point() or emb.dim() not in (2, 3) or emb.shape[-1] != width:
            raise ValueError(f"concept {name!r}: prompt embeddings must be a float tensor [L, {width}] "
                             f"or [N, L, {width}] (the UNet's cross_attention_dim), got "
                             f"{tuple(emb.shape)} {emb.dtype}; build them with "
                             "safemax.stable_diffusion.prompt_embeddings(pipe, prompts)")
        if not torch.isfinite(emb).all():
            raise ValueError(f"concept {name!r}: prompt embeddings contain NaN or Inf")
        out[name] = (emb if emb.dim() == 3 else emb.unsqueeze(0)).detach().float().cpu()
    lengths = {e.shape[1] for e in out.values()}
    if len(lengths) != 1:
        raise ValueError(f"all concepts' embeddings need the same length L, got {sorted(lengths)}")
    return out


def _checksum(model) -> float:
    """A cheap fingerprint of a model's weights (float64 sum of |w|), to match resumes."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


class Unlearner:
    """Forget classes of a class-conditional diffusers UNet, or concepts of a text-conditional
    one, with SAFEMax (or a baseline).

    Args:
        unet: the model, trained in place. Class-conditional: ``UNet2DModel`` with
            ``num_class_embeds``, or ``DiTTransformer2DModel`` (classes = ``num_embeds_ada_norm``),
            called as ``unet(x_t, t, class_labels=y)``. Text-conditional: ``UNet2DConditionModel``
            (e.g. Stable Diffusion's), called as ``unet(x_t, t, encoder_hidden_states=e)``; it
            denoises whatever space it was trained in (pixels or VAE latents), and so does the
            max-entropy target. ε-, v-prediction and variance-learning (2·C channels) models work.
        scheduler: a diffusers scheduler exposing ``alphas_cumprod`` (DDPM, DDIM, …); its
            ``prediction_type`` says what the model predicts.
        forget: class id or list of class ids; or, for a text-conditional UNet, a dict
            ``{concept name: prompt embeddings [L, D] or [N, L, D]}`` (N prompts of the concept,
            see ``safemax.stable_diffusion.prompt_embeddings``).
        early_fraction: τ in (0, 1]: forget rows are trained on the noisiest τ·T steps only.
        max_snr: alternatively, the window by noise level: forget rows are trained on the steps
            whose signal-to-noise ratio ᾱ_t/(1−ᾱ_t) is at most this (overrides early_fraction;
            transfers across schedules and resolutions better than a step count).
        forget_weight: weight of the forget rows in the loss (retain rows weigh 1).
        lr: Adam learning rate (default: the method's, 1e-4 for all four).
        seed: seeds every random draw of the fit (data, timesteps, noise).
        weighting: ``"simple"`` (mean squared error) or ``"vlb"`` (KL in nats).
        retain_target: ``"distill"`` (default): retain rows are pulled towards the frozen
            original model's own prediction, which is exactly where the model starts, so keeping
            the other classes adds no noise of its own; ``"noise"``: the ordinary target ε, whose
            variance slowly degrades a well-converged (e.g. EMA) model.
        method: ``"safemax"`` (default), or a baseline run in the same loop with the same
            data, batch and optimizer: ``"salun"``, ``"sa"`` (Selective Amnesia), ``"ga"``
            (gradient ascent), or a configured ``safemax.methods`` object such as
            ``SalUn(mask_fraction=0.3)``. The SAFEMax settings above apply to SAFEMax only.
        mixed_precision: ``"bf16"`` or ``"fp16"`` (GPU only): the forward passes run under
            Accelerate's autocast (fp16 with loss scaling); weights and optimizer stay float32.
        gradient_checkpointing: recompute the UNet's activations in the backward pass instead
            of storing them (less memory, about one more forward of time).
        accelerator: an ``accelerate.Accelerator`` to run under (DDP across processes, its mixed
            precision); by default one is made when ``mixed_precision`` is set or the script
            runs under ``accelerate launch`` / ``torchrun`` with several processes.
    """

    def __init__(self, unet, scheduler, forget, early_fraction: float = 1.0,
                 forget_weight: float = 1.0, lr: float = None, seed: int = 0,
                 weighting: str = "simple", max_snr: float = None, retain_target: str = "distill",
                 method="safemax", mixed_precision: str = None, gradient_checkpointing: bool = False,
                 accelerator=None):
        method = make_method(method)
        if not isinstance(method, SafeMax):
            changed = [k for k, v, d in (("early_fraction", early_fraction, 1.0),
                                         ("forget_weight", forget_weight, 1.0),
                                         ("weighting", weighting, "simple"), ("max_snr", max_snr, None),
                                         ("retain_target", retain_target, "distill")) if v != d]
            if changed:
                raise ValueError(f"{', '.join(changed)} configure SAFEMax, not method "
                                 f"{method.name!r}; configure a baseline through its object, "
                                 "e.g. method=safemax.methods.SalUn(mask_fraction=0.3)")
        lr = method.default_lr if lr is None else lr
        if isinstance(forget, dict):  # text concepts: prompt embeddings
            self.concepts, self.num_classes = _concepts(forget, unet), None
            forget = list(self.concepts)
            if isinstance(method, SelectiveAmnesia):
                raise ValueError("Selective Amnesia replays samples of the kept classes, which a "
                                 "text-conditional model does not enumerate: use method "
                                 '"safemax", "salun" or "ga" for concepts')
        else:
            self.concepts, self.num_classes = None, class_count(unet)
            forget = _class_ids(forget, self.num_classes)
        abar = getattr(scheduler, "alphas_cumprod", None)
        if not torch.is_tensor(abar) or abar.dim() != 1:
            raise TypeError(f"scheduler {type(scheduler).__name__} has no alphas_cumprod tensor; "
                            "use a diffusers DDPM/DDIM-style scheduler")
        self.prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {self.prediction_type!r} is not supported: the model "
                             "must predict the noise (epsilon) or v (v_prediction)")
        if not 0 < early_fraction <= 1:
            raise ValueError(f"early_fraction must be in (0, 1], got {early_fraction}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be positive, got {lr}")
        if not math.isfinite(forget_weight):
            raise ValueError(f"forget_weight must be finite, got {forget_weight}")
        if weighting not in ("simple", "vlb"):
            raise ValueError(f'weighting must be "simple" or "vlb", got {weighting!r}')
        if retain_target not in ("distill", "noise"):
            raise ValueError(f'retain_target must be "distill" or "noise", got {retain_target!r}')
        self.accelerator = make_accelerator(accelerator, mixed_precision)
        self.local = Shard(self.accelerator)
        if self.accelerator is not None:
            unet.to(self.accelerator.device)
        if gradient_checkpointing:
            if not getattr(unet, "_supports_gradient_checkpointing", False):
                raise ValueError(f"{type(unet).__name__} does not support gradient checkpointing")
            unet.enable_gradient_checkpointing()
        self.gradient_checkpointing = gradient_checkpointing

        self.num_train_timesteps = T = abar.shape[0]
        snr = abar.double() / (1 - abar.double())
        if max_snr is not None:
            if not max_snr > snr[-1]:
                raise ValueError(f"max_snr must exceed the SNR of the noisiest step ({snr[-1].item():.3g})")
            self.t_min = int(torch.nonzero(snr <= max_snr)[0])  # SNR falls with t
            early_fraction = (T - self.t_min) / T
        else:
            self.t_min = int(math.floor((1 - early_fraction) * T))
        self.snr_at_t_min = float(snr[self.t_min])
        self.unet, self.scheduler = unet, scheduler
        self.model = unet  # what a training step calls: the DDP-wrapped model during a fit
        self._wrapped, self._wrapped_optimizer = False, None
        self.forget = forget
        self.early_fraction, self.forget_weight, self.lr = early_fraction, forget_weight, lr
        self.seed, self.weighting = seed, weighting
        self.step = 0
        self.history = []
        self.optimizer = torch.optim.Adam([p for p in unet.parameters() if p.requires_grad], lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.retain_target = retain_target
        self._forget_cache = None
        self._resumed_scaler = None
        self._original_checksum = _checksum(unet)
        self.abar = scheduler.alphas_cumprod.to(device=self.device(), dtype=torch.float64)
        self.method = method
        self.prep_seconds = None  # set by _prepare(): the method's one-off cost, bind included
        start = time.perf_counter()
        method.bind(self)  # e.g. SAFEMax's frozen copy of the original model
        self._bind_seconds = time.perf_counter() - start

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes checkpoints and reports (always, without Accelerate)."""
        return self.accelerator is None or self.accelerator.is_main_process

    # ------------------------------------------------------------------ helpers for methods
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def trainable(self) -> list:
        """``[(name, parameter)]`` of the weights being trained."""
        return [(n, p) for n, p in self.unet.named_parameters() if p.requires_grad]

    def to_device(self, *tensors):
        device = self.device()
        return tuple(v.to(device) for v in tensors)

    def noisy(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
        """``(x_t, eps)`` in the model's dtype: x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (computed in float64)."""
        dtype = next(self.unet.parameters()).dtype
        s = self.abar[t].view(-1, *([1] * (x0.dim() - 1)))
        return (s.sqrt() * x0 + (1 - s).sqrt() * eps).to(dtype), eps.to(dtype)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, model=None):
        """The ε prediction of ``model`` (default: the model being trained) for conditions
        ``cond`` — class ids ``[B]`` or prompt embeddings ``[B, L, D]`` — in x_t's dtype. A
        v-prediction model's v becomes ε = √(1−ᾱ_t)·x_t + √ᾱ_t·v, so the max-entropy target
        ε* = √(1−ᾱ_t)·x_t means v* = 0 there."""
        model = self.model if model is None else model
        if cond.is_floating_point():
            cond = cond.to(x_t.dtype)
        out = epsilon_part(model(x_t, t, **condition(cond)).sample, x_t.shape[1]).to(x_t.dtype)
        if self.prediction_type == "v_prediction":
            s = self.abar[t].view(-1, *([1] * (x_t.dim() - 1)))
            out = (1 - s).sqrt().to(x_t.dtype) * x_t + s.sqrt().to(x_t.dtype) * out
        return out

    # ------------------------------------------------------------------ data
    def generate_forget_data(self, n: int, num_inference_steps: int = 50) -> TensorDataset:
        """Data-free forgetting: ``n`` images (or latents) the current (original) model draws
        for the forget classes or concepts (plain conditional sampling), generated once and reused."""
        if self.concepts is not None:
            prompts = torch.cat(list(self.concepts.values()))
            conds = prompts[torch.arange(n) % len(prompts)]
        else:
            conds = balanced_labels(self.forget, n)
        images = sample(self.unet, self.scheduler, conds, num_inference_steps=num_inference_steps,
                        seed=self.seed + 1)
        return TensorDataset(images, conds)

    def _check_data(self, retain: Batches, forget: Batches):
        if self.concepts is not None:
            self._check_text_data(retain, forget)
        elif retain is not None:
            self._check_class_data(retain, forget)
        if retain is None:  # a method that needs no real data
            return
        images, _ = retain.draw(1, torch.Generator().manual_seed(0))
        if images.shape[1] != self.unet.config.in_channels:
            raise ValueError(f"retain images have {images.shape[1]} channels, the UNet takes "
                             f"{self.unet.config.in_channels}" + (" (latents: encode images with "
                             "safemax.stable_diffusion.encode_images)" if self.concepts else ""))

    def _check_class_data(self, retain: Batches, forget: Batches):
        labels = retain.labels()
        if labels is not None:
            bad = sorted(set(labels.tolist()) & set(self.forget))
            if bad:
                raise ValueError(f"retain data contains forget class(es) {bad}; split it first, "
                                 "e.g. safemax.data.split_by_class(dataset, forget)")
            out = sorted(c for c in set(labels.tolist()) if not 0 <= c < self.num_classes)
            if out:
                raise ValueError(f"retain labels {out} are not class ids of this UNet "
                                 f"({self.num_classes} classes)")
        labels = forget.labels() if forget is not None else None
        if labels is not None:
            bad = sorted(set(labels.tolist()) - set(self.forget))
            if bad:
                raise ValueError(f"forget data contains classes {bad} that are not being "
                                 f"forgotten ({self.forget})")

    def _check_text_data(self, retain: Batches, forget: Batches):
        shape = next(iter(self.concepts.values())).shape[1:]
        for batches in (retain, forget):
            if batches is None:
                continue
            _, cond = batches.draw(1, torch.Generator().manual_seed(0))
            if not cond.is_floating_point() or tuple(cond.shape[1:]) != tuple(shape):
                raise ValueError(
                    f"{batches.name} data must yield (latent, prompt embeddings {list(shape)}) for "
                    f"this text-conditional UNet, got conditions of shape {list(cond.shape[1:])} "
                    f"{cond.dtype}")

    # ------------------------------------------------------------------ training
    def _config(self, batch_size: int) -> dict:
        if not isinstance(self.method, SafeMax):
            return dict(method=self.method.name, **self.method.config(), forget=self.forget,
                        lr=self.lr, seed=self.seed, batch_size=batch_size)
        return dict(forget=self.forget, t_min=self.t_min, early_fraction=self.early_fraction,
                    snr_at_t_min=self.snr_at_t_min,
                    forget_weight=self.forget_weight, lr=self.lr, seed=self.seed,
                    weighting=self.weighting, retain_target=self.retain_target,
                    batch_size=batch_size)

    def _save(self, checkpoint_dir: str, batch_size: int):
        if not self.is_main_process:  # every process holds the same state; one writes it
            return
        os.makedirs(checkpoint_dir, exist_ok=True)
        extra = {f"method.{k}": v for k, v in self.method.state().items()}
        if self._forget_cache is not None:
            extra.update(forget_images=self._forget_cache.tensors[0],
                         forget_labels=self._forget_cache.tensors[1])
        meta = dict(step=self.step, history=self.history, config=self._config(batch_size),
                    original_checksum=self._original_checksum, prep_seconds=self.prep_seconds,
                    grad_scaler=self._scaler_state())
        checkpoint.save(os.path.join(checkpoint_dir, checkpoint.FILENAME), self.unet,
                        self.optimizer, self.generator, meta, extra)

    def _resume(self, checkpoint_dir: str, batch_size: int) -> bool:
        path = os.path.join(checkpoint_dir, checkpoint.FILENAME)
        if not os.path.exists(path):
            return False
        meta, extra = checkpoint.load(path, self.unet, self.optimizer, self.generator)
        if meta["config"] != self._config(batch_size):
            raise ValueError(f"checkpoint {path} was made with other settings "
                             f"({meta['config']}) than this fit ({self._config(batch_size)})")
        if meta["original_checksum"] != self._original_checksum:
            raise ValueError(f"checkpoint {path} continues a fit of another model: resume with "
                             "the same original model the fit started from")
        self.step, self.history = meta["step"], meta["history"]
        self.prep_seconds = meta.get("prep_seconds")
        self._resumed_scaler = meta.get("grad_scaler")
        self.method.load_state({k[len("method."):]: v for k, v in extra.items()
                                if k.startswith("method.")}, self)
        if "forget_images" in extra:
            self._forget_cache = TensorDataset(extra["forget_images"], extra["forget_labels"])
        return True

    def fit(self, retain, forget=None, steps: int = 100, batch_size: int = 64,
            checkpoint_dir: str = None, checkpoint_every: int = 0, resume: bool = False,
            progress: bool = True, callback=None, max_grad_norm: float = None) -> list:
        """Unlearn until ``steps`` optimisation steps have been taken in total.

        Args:
            retain: ``(image, label)`` data of the classes to keep — ``(latent, prompt
                embeddings [L, D])`` for a text-conditional UNet — as a data set or DataLoader;
                ignored (may be ``None``) by ``method="sa"``, which replays generated samples.
            forget: the same kind of data for the forget classes or concepts; ``None`` =
                data-free (images generated once by the original model).
            steps: total steps (a resumed fit continues up to this number).
            batch_size: forget rows and retain rows per step (each), over all processes under
                ``accelerate launch`` (each trains on its share; must divide evenly).
            checkpoint_dir: where ``checkpoint.safetensors`` is written (atomically) every
                ``checkpoint_every`` steps, at the end, and on Ctrl-C.
            resume: continue from the checkpoint in ``checkpoint_dir`` if there is one; the
                result equals an uninterrupted fit (bit-for-bit on CPU, map-style data sets), on
                any number of processes.
            callback: ``callback(unlearner, record)`` after every step (e.g. to evaluate), on
                every process (``unlearner.is_main_process`` tells the one that should report);
                its time is not counted in ``record["seconds"]``.
            max_grad_norm: clip the gradient norm; ``None`` = the method's published recipe
                (SAFEMax: no clipping; the baselines: 1.0), ``0`` = no clipping.

        Returns:
            the history: one dict per step with ``step``, ``loss``, ``seconds`` (cumulative
            training time, without preparation: see ``prep_seconds``) and the method's own
            numbers (SAFEMax: ``forget_nats``, ``retain_nats``; baselines: ``forget_loss``,
            ``retain_loss``).
        """
        if steps < 0 or batch_size < 1:
            raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
        if (checkpoint_every or resume) and not checkpoint_dir:
            raise ValueError("checkpoint_every and resume need a checkpoint_dir")
        self.local.check(batch_size)
        method = self.method
        # on the model's device now (it may have moved since the Unlearner was built)
        self.abar = self.scheduler.alphas_cumprod.to(device=self.device(), dtype=torch.float64)
        if retain is None and method.uses_retain_data:
            raise ValueError(f"method {method.name!r} needs retain data: (image, label) pairs of the "
                             "classes to keep")
        retain_b = Batches(retain, "retain") if method.uses_retain_data else None
        resumed = resume and self._resume(checkpoint_dir, batch_size)
        forget_b = None
        if method.uses_forget_data:
            if not resumed and forget is None and self._forget_cache is None:
                self._forget_cache = self.generate_forget_data(max(4 * batch_size, 64))
            forget_b = Batches(forget if forget is not None else self._forget_cache, "forget")
        self._check_data(retain_b, forget_b)
        if not resumed and self.prep_seconds is None:
            self._prepare(retain_b, forget_b, batch_size, progress)

        params = [p for _, p in self.trainable()]
        clip = method.max_grad_norm if max_grad_norm is None else max_grad_norm
        clip = clip or float("inf")
        optimizer, autocast = self._wrap()  # after preparing: DDP must not see the preparation
        self.unet.train()
        elapsed = self.history[-1]["seconds"] if self.history else 0.0
        bar = tqdm(total=steps, initial=self.step, desc=method.name, unit="step", dynamic_ncols=True,
                   disable=not (progress and self.is_main_process))
        try:
            while self.step < steps:
                start = time.perf_counter()
                with autocast():
                    loss, stats = method.loss(self, retain_b, forget_b, batch_size)
                # averaged over processes, so every process logs the same and stops together
                numbers = self._mean_over_processes([loss.detach(), *stats.values()])
                if not math.isfinite(numbers[0]):
                    raise FloatingPointError(
                        f"step {self.step + 1}: the loss is {numbers[0]}; stopped before updating, so "
                        f"the weights are those after step {self.step}. Lower lr, check the data for "
                        "NaN/Inf, or use a float32 model")
                optimizer.zero_grad(set_to_none=True)
                if self.accelerator is not None:
                    self.accelerator.backward(loss)  # scales the loss under fp16
                    norm = self.accelerator.clip_grad_norm_(params, clip)
                else:
                    loss.backward()
                    norm = torch.nn.utils.clip_grad_norm_(params, clip)
                if not torch.isfinite(norm) and self._scaler() is None:
                    # (with fp16 loss scaling an overflow is expected now and then: the scaler
                    # skips that step and lowers its scale)
                    optimizer.zero_grad(set_to_none=True)
                    raise FloatingPointError(
                        f"step {self.step + 1}: a gradient is {norm.item()}; stopped before "
                        f"updating, so the weights are those after step {self.step}")
                method.edit_grads(self)  # after clipping, as SalUn's published code does
                optimizer.step()
                self.step += 1
                elapsed += time.perf_counter() - start
                record = dict(step=self.step, loss=numbers[0], **dict(zip(stats, numbers[1:])),
                              seconds=elapsed)
                self.history.append(record)
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k not in ("step", "seconds")},
                                refresh=False)
                if checkpoint_dir and checkpoint_every and self.step % checkpoint_every == 0:
                    self._save(checkpoint_dir, batch_size)
                if callback is not None:
                    callback(self, record)
        except KeyboardInterrupt:
            if checkpoint_dir and self.is_main_process:
                self._save(checkpoint_dir, batch_size)
                bar.write(f"safemax: interrupted; checkpoint of step {self.step} saved in "
                          f"{checkpoint_dir} (fit(..., resume=True) continues)")
            raise
        finally:
            bar.close()
            self._unwrap()
        self.optimizer.zero_grad(set_to_none=True)  # the gradients are as big as the model
        if checkpoint_dir:
            self._save(checkpoint_dir, batch_size)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()  # the checkpoint exists for every process
        self.unet.eval()
        return self.history

    # ------------------------------------------------------------------ Accelerate
    def _wrap(self):
        """``(optimizer, autocast)`` for this fit: under Accelerate the model is wrapped for DDP
        and mixed precision (until ``_unwrap``), otherwise the plain ones."""
        acc = self.accelerator
        if acc is None:
            return self.optimizer, contextlib.nullcontext
        self.model, self._wrapped_optimizer = acc.prepare(self.unet, self.optimizer)
        optimizer = self._wrapped_optimizer
        self._wrapped = True
        if self._resumed_scaler and acc.scaler is not None:
            acc.scaler.load_state_dict(self._resumed_scaler)
        return optimizer, acc.autocast

    def _unwrap(self):
        if self._wrapped:
            # drops the DDP wrapper and Accelerate's autocast patch of unet.forward (set on the
            # model itself, even in a single process)
            acc = self.accelerator
            acc.unwrap_model(self.model, keep_fp32_wrapper=False)
            # and forget this fit's wrappers: Accelerate unscales the gradients of every optimizer
            # it has prepared, so a second fit's wrapper beside the first would unscale twice
            for registry, wrapper in ((getattr(acc, "_models", None), self.model),
                                      (getattr(acc, "_optimizers", None), self._wrapped_optimizer)):
                if isinstance(registry, list):
                    registry[:] = [x for x in registry if x is not wrapper]
            self._wrapped, self._wrapped_optimizer = False, None
        self.model = self.unet

    def _scaler(self):
        return self.accelerator.scaler if self.accelerator is not None else None

    def _scaler_state(self):
        scaler = self._scaler()
        return scaler.state_dict() if scaler is not None else None

    def _mean_over_processes(self, values: list) -> list:
        values = [v.item() if torch.is_tensor(v) else float(v) for v in values]
        if self.local.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(t, reduction="mean").tolist()

    def _prepare(self, retain: Batches, forget: Batches, batch_size: int, progress: bool):
        """The method's one-off work on the original model (saliency mask, Fisher, replay set),
        timed into ``prep_seconds`` — part of the method's cost."""
        if self.step > 0:
            raise RuntimeError("a method prepares on the original model, before the first step")
        start = time.perf_counter()
        if progress and type(self.method).prepare is not Method.prepare:
            tqdm.write(f"{self.method.name}: preparing (counted in its cost)")
        was_training = self.unet.training
        self.unet.train()
        self.method.prepare(self, retain, forget, batch_size)
        self.unet.train(was_training)
        self.prep_seconds = self._bind_seconds + time.perf_counter() - start

    # ------------------------------------------------------------------ output
    def save_pretrained(self, path: str):
        """Write the unlearned UNet in diffusers format (``UNet2DModel.from_pretrained(path)``
        loads it), the scheduler config, and ``safemax.json`` describing what was done. Under
        Accelerate only the main process writes."""
        if not self.is_main_process:
            return
        os.makedirs(path, exist_ok=True)
        self.unet.save_pretrained(path, safe_serialization=True)
        if hasattr(self.scheduler, "save_pretrained"):
            self.scheduler.save_pretrained(path)
        info = {"method": self.method.name, **self._config(None), "safemax_version": __version__,
                "steps": self.step, "num_train_timesteps": self.num_train_timesteps,
                "data_free": self._forget_cache is not None}
        info.pop("batch_size")
        with open(os.path.join(path, "safemax.json"), "w") as f:
            json.dump(info, f, indent=2)
