"""``Unlearner``: SAFEMax (or a baseline) on a class-conditional diffusers UNet.

    u = Unlearner(unet, scheduler, forget=[3], early_fraction=0.5)
    history = u.fit(retain=retain_ds, forget=forget_ds, steps=100, batch_size=64)
    u.save_pretrained("unet-without-3")

Each step draws ``batch_size`` forget and ``batch_size`` retain samples. Forget rows get
t ~ U[t_min, T) with t_min = ⌊(1 − early_fraction)·T⌋ and are trained towards the max-entropy
prediction √(1−ᾱ_t)·x_t; retain rows get t ~ U[0, T) and the original model's prediction. One
UNet forward runs on the concatenated batch and the fused ``safemax_loss`` op computes the loss.
``method="salun" | "sa" | "ga"`` runs a baseline in the same loop (see ``safemax.methods``).
"""
import json
import math
import os
import time

import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from . import __version__, checkpoint
from .data import Batches, balanced_labels
from .methods import Method, SafeMax, make_method
from .sampling import epsilon_part, sample


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


def _checksum(model) -> float:
    """A cheap fingerprint of a model's weights (float64 sum of |w|), to match resumes."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


class Unlearner:
    """Forget classes of a class-conditional diffusers UNet with SAFEMax (or a baseline).

    Args:
        unet: a class-conditional diffusers model, trained in place: ``UNet2DModel`` with
            ``num_class_embeds``, or ``DiTTransformer2DModel`` (classes = ``num_embeds_ada_norm``);
            any model called as ``unet(x_t, t, class_labels=y).sample`` with such a config entry.
            Models that also predict their variance (2·C output channels) train the ε half.
        scheduler: a diffusers scheduler exposing ``alphas_cumprod`` (DDPM, DDIM, …).
        forget: class id or list of class ids to forget.
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
    """

    def __init__(self, unet, scheduler, forget, early_fraction: float = 1.0,
                 forget_weight: float = 1.0, lr: float = None, seed: int = 0,
                 weighting: str = "simple", max_snr: float = None, retain_target: str = "distill",
                 method="safemax"):
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
        num_classes = class_count(unet)
        if num_classes is None:
            raise ValueError(
                "unet is not class-conditional (its config has no num_class_embeds, and it is not "
                "a DiT with num_embeds_ada_norm): SAFEMax forgets a class, so the model must take "
                "class_labels")
        forget = [forget] if isinstance(forget, int) else list(forget)
        if not forget:
            raise ValueError("forget is empty: name at least one class id to forget")
        for c in forget:
            if not isinstance(c, int) or not 0 <= c < num_classes:
                raise ValueError(f"forget class {c!r} is not a class id of this UNet "
                                 f"({num_classes} classes: ids 0..{num_classes - 1})")
        if len(set(forget)) == num_classes:
            raise ValueError("forget names every class: nothing would be left to keep")
        abar = getattr(scheduler, "alphas_cumprod", None)
        if not torch.is_tensor(abar) or abar.dim() != 1:
            raise TypeError(f"scheduler {type(scheduler).__name__} has no alphas_cumprod tensor; "
                            "use a diffusers DDPM/DDIM-style scheduler")
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
        self.forget = sorted(set(forget))
        self.num_classes = num_classes
        self.early_fraction, self.forget_weight, self.lr = early_fraction, forget_weight, lr
        self.seed, self.weighting = seed, weighting
        self.step = 0
        self.history = []
        self.optimizer = torch.optim.Adam([p for p in unet.parameters() if p.requires_grad], lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.retain_target = retain_target
        self._forget_cache = None
        self._original_checksum = _checksum(unet)
        self.abar = scheduler.alphas_cumprod.to(device=self.device(), dtype=torch.float64)
        self.method = method
        self.prep_seconds = None  # set by _prepare(): the method's one-off cost, bind included
        start = time.perf_counter()
        method.bind(self)  # e.g. SAFEMax's frozen copy of the original model
        self._bind_seconds = time.perf_counter() - start

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

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, model=None):
        """The ε prediction of ``model`` (default: the model being trained)."""
        model = self.unet if model is None else model
        return epsilon_part(model(x_t, t, class_labels=labels).sample, x_t.shape[1])

    # ------------------------------------------------------------------ data
    def generate_forget_data(self, n: int, num_inference_steps: int = 50) -> TensorDataset:
        """Data-free forgetting: ``n`` images the current (original) model draws for the forget
        classes, generated once and reused."""
        labels = balanced_labels(self.forget, n)
        images = sample(self.unet, self.scheduler, labels, num_inference_steps=num_inference_steps,
                        seed=self.seed + 1)
        return TensorDataset(images, labels)

    def _check_data(self, retain: Batches, forget: Batches):
        if retain is None:  # a method that needs no real data
            return
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
        cfg = self.unet.config
        images, _ = retain.draw(1, torch.Generator().manual_seed(0))
        if images.shape[1] != cfg.in_channels:
            raise ValueError(f"retain images have {images.shape[1]} channels, the UNet takes "
                             f"{cfg.in_channels}")

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
        os.makedirs(checkpoint_dir, exist_ok=True)
        extra = {f"method.{k}": v for k, v in self.method.state().items()}
        if self._forget_cache is not None:
            extra.update(forget_images=self._forget_cache.tensors[0],
                         forget_labels=self._forget_cache.tensors[1])
        meta = dict(step=self.step, history=self.history, config=self._config(batch_size),
                    original_checksum=self._original_checksum, prep_seconds=self.prep_seconds)
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
            retain: ``(image, label)`` data of the classes to keep (data set or DataLoader);
                ignored (may be ``None``) by ``method="sa"``, which replays generated samples.
            forget: ``(image, label)`` data of the forget classes; ``None`` = data-free (images
                generated once by the original model).
            steps: total steps (a resumed fit continues up to this number).
            batch_size: forget rows and retain rows per step (each).
            checkpoint_dir: where ``checkpoint.safetensors`` is written (atomically) every
                ``checkpoint_every`` steps, at the end, and on Ctrl-C.
            resume: continue from the checkpoint in ``checkpoint_dir`` if there is one; the
                result equals an uninterrupted fit (bit-for-bit on CPU, map-style data sets).
            callback: ``callback(unlearner, record)`` after every step (e.g. to evaluate); its
                time is not counted in ``record["seconds"]``.
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
        self.unet.train()
        elapsed = self.history[-1]["seconds"] if self.history else 0.0
        bar = tqdm(total=steps, initial=self.step, desc=method.name, disable=not progress,
                   unit="step", dynamic_ncols=True)
        try:
            while self.step < steps:
                start = time.perf_counter()
                loss, stats = method.loss(self, retain_b, forget_b, batch_size)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"step {self.step + 1}: the loss is {loss.item()}; stopped before updating, so "
                        f"the weights are those after step {self.step}. Lower lr, check the data for "
                        "NaN/Inf, or use a float32 model")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, clip)
                if not torch.isfinite(norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    raise FloatingPointError(
                        f"step {self.step + 1}: a gradient is {norm.item()}; stopped before "
                        f"updating, so the weights are those after step {self.step}")
                method.edit_grads(self)  # after clipping, as SalUn's published code does
                self.optimizer.step()
                self.step += 1
                elapsed += time.perf_counter() - start
                record = dict(step=self.step, loss=loss.item(), **stats, seconds=elapsed)
                self.history.append(record)
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k not in ("step", "seconds")},
                                refresh=False)
                if checkpoint_dir and checkpoint_every and self.step % checkpoint_every == 0:
                    self._save(checkpoint_dir, batch_size)
                if callback is not None:
                    callback(self, record)
        except KeyboardInterrupt:
            if checkpoint_dir:
                self._save(checkpoint_dir, batch_size)
                bar.write(f"safemax: interrupted; checkpoint of step {self.step} saved in "
                          f"{checkpoint_dir} (fit(..., resume=True) continues)")
            raise
        finally:
            bar.close()
        if checkpoint_dir:
            self._save(checkpoint_dir, batch_size)
        self.unet.eval()
        return self.history

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
        loads it), the scheduler config, and ``safemax.json`` describing what was done."""
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
