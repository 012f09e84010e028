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
Under ``accelerate launch`` the fit runs data-parallel (see ``safemax.training.parallel``).

The Unlearner owns the loop, the optimizer and the fit's state; what is forgotten lives in
``safemax.training.conditions``, how the model is called in ``safemax.models.denoiser``, the schedule math in
``safemax.models.schedule``, each method's loss in ``safemax.methods``, checkpoints in
``safemax.training.checkpoint``, the Accelerate wrapping in ``safemax.training.parallel`` and the
FSDP sharding in ``safemax.training.sharding``.
"""
import time

import torch

from safemax.data import Batches
from safemax.methods import make_method
from safemax.models import class_rows
from safemax.models.cross_attention import train_cross_attention_only
from safemax.models import lora as adapters
from safemax.models.denoiser import make_denoiser
from safemax.models.lora import make_config as make_lora_config
from safemax.training import checkpoint, loop, parallel, sharding, stopping
from safemax.training.conditions import ForgetTargets
from safemax.training.settings import FitSettings, UnlearnerSettings


class Unlearner:
    """Forget classes of a class-conditional diffusers model, or concepts of a text-conditional
    one, with SAFEMax (or a baseline).

    Args:
        unet: the model, trained in place, of a family in ``safemax.models.families``. Class-conditional:
            ``UNet2DModel`` with ``num_class_embeds``, or ``DiTTransformer2DModel`` (classes =
            ``num_embeds_ada_norm``). Text-conditional, called as its own pipeline calls it:
            Stable Diffusion 1.x/2.x and SDXL UNets, SD3/3.5, Flux.1, PixArt-α/Σ and Sana
            transformers (``pipe.unet`` or ``pipe.transformer``); it denoises whatever space it
            was trained in (pixels or VAE latents), and so does the max-entropy target. ε-,
            v-prediction, variance-learning (2·C channels) and rectified-flow models work.
        scheduler: the model's training scheduler: a diffusers scheduler exposing
            ``alphas_cumprod`` (DDPM, DDIM, …; its ``prediction_type`` says whether the model
            predicts ε or v), or a ``FlowMatchEulerDiscreteScheduler`` for a rectified-flow model
            (velocity prediction, time input T·σ = ``scheduler.timesteps``; forget rows are trained towards the
            max-entropy velocity v* = k(σ)·x_σ, see ``safemax.models.denoiser``).
        forget: class id or list of class ids; or, for a text-conditional model, a dict
            ``{concept name: condition}`` with one or N rows (N prompts of the concept): prompt
            embeddings ``[L, D]`` / ``[N, L, D]`` for Stable Diffusion 1.x/2.x, the family's dict
            of conditions otherwise (``safemax.models.pipelines.prompt_embeddings(pipe, prompts)``).
        method: ``"safemax"`` (default), or a baseline run in the same loop with the same
            data, batch and optimizer: ``"salun"``, ``"sa"`` (Selective Amnesia), ``"ga"``
            (gradient ascent); or a configured ``safemax.methods`` object such as
            ``SafeMax(early_fraction=0.5)`` or ``SalUn(mask_fraction=0.3)``.
        **settings: the named method's settings, as a shorthand:
            ``Unlearner(unet, scheduler, [3], early_fraction=0.5)`` is
            ``method=SafeMax(early_fraction=0.5)`` (SAFEMax's settings: ``early_fraction``,
            ``max_snr``, ``forget_weight``, ``weighting``, ``retain_target``; see
            ``safemax.methods.SafeMax``); ``method="salun", mask_fraction=0.3`` likewise.
        lr: Adam learning rate (default: the method's, 1e-4 for all four).
        warmup_steps: raise the learning rate linearly from lr/warmup_steps to lr over the first
            ``warmup_steps`` steps (default 0: none). Measured on SAFEMax's early dip in the
            kept classes' accuracy, it does not help: 20 warm-up steps move the same collapse
            later (docs/results/first-steps.md). Offered for fine-tuning practice, not as a fix.
        seed: seeds every random draw of the fit (data, timesteps, noise).
        mixed_precision: ``"bf16"`` or ``"fp16"`` (GPU only): the forward passes run under
            Accelerate's autocast (fp16 with loss scaling); weights and optimizer stay float32.
        gradient_checkpointing: recompute the UNet's activations in the backward pass instead
            of storing them (less memory, about one more forward of time).
        accelerator: an ``accelerate.Accelerator`` to run under (DDP across processes, or FSDP2:
            the model, Adam and the teacher sharded over them; its mixed precision); by default
            one is made when ``mixed_precision`` is set or the script runs under ``accelerate
            launch`` / ``torchrun`` with several processes or an FSDP config.
        lora_rank: train a LoRA adapter of this rank instead of the model (needs ``peft``): the
            base weights are frozen, an adapter is added to the attention projections ``to_q,
            to_k, to_v, to_out.0`` (alpha = rank, gaussian init, seeded by ``seed``) and only it
            trains; SAFEMax's teacher is the model with the adapter switched off (no copy);
            checkpoints hold the adapter and its Adam state; ``save_pretrained`` writes the
            adapter (see ``safemax.models.lora``).
        lora: alternatively, a ``peft.LoraConfig`` of your own (not both).
        train: which weights the fit trains: ``"all"`` (default) or ``"class-embedding"`` — a
            class-conditional model's class-embedding rows of the forgotten classes only (the
            tables ``safemax.models.class_rows.class_tables`` finds), every other weight and row frozen:
            the kept classes' outputs stay bit-for-bit the original (no dip, no retain cost) and
            forgetting takes ~10 steps, but the shared weights still know the class — it is
            shallower than ``"all"`` (docs/results/class-embedding.md). Its lr defaults to
            ``safemax.models.class_rows.DEFAULT_LR`` (0.3): a row must travel far. Or
            ``"cross-attention"``: a text-conditional model's cross-attention (``attn2``) alone,
            as ESD-x trains (``safemax.models.cross_attention``). Neither with LoRA.
    """

    def __init__(self, unet, scheduler, forget, *, method="safemax", lr: float = None, seed: int = 0,
                 warmup_steps: int = 0, mixed_precision: str = None, gradient_checkpointing: bool = False,
                 accelerator=None,
                 lora_rank: int = None, lora=None, train: str = "all", **settings):
        self.settings = UnlearnerSettings(lr=lr, seed=seed, warmup_steps=warmup_steps, lora_rank=lora_rank,
                                          mixed_precision=mixed_precision, train=train,
                                          gradient_checkpointing=gradient_checkpointing)   # checked, once
        self.method = make_method(method, **settings)
        self.lora = lora_config = make_lora_config(lora_rank, lora)  # a peft.LoraConfig or None
        if train != "all" and lora_config is not None:
            raise ValueError(f"train={train!r} trains some of the model's own weights; it cannot be "
                             "combined with a LoRA adapter (lora_rank / lora): use one or the other")
        if train == "cross-attention":   # frozen before the teacher is copied and the optimizer built
            train_cross_attention_only(unet)
        self.train_weights = train
        self.denoiser = make_denoiser(unet, scheduler)
        self.targets = ForgetTargets(forget, unet)
        self.method.check(self.denoiser, self.targets)
        if lora_config is not None:
            adapters.check_targets(unet, lora_config)
        if lr is None:
            lr = class_rows.DEFAULT_LR if train == "class-embedding" else self.method.default_lr
        self.lr = lr
        self.warmup_steps = warmup_steps
        self.owns_accelerator = accelerator is None
        self.accelerator = parallel.make_accelerator(accelerator, mixed_precision)
        sharding.check(self.accelerator, self.method, lora_config, train)
        self.local = parallel.Shard(self.accelerator)
        if self.accelerator is not None and not sharding.is_fsdp(self.accelerator):  # FSDP places shards
            unet.to(self.accelerator.device)
            self.denoiser.follow_device()
        if gradient_checkpointing:
            if not getattr(unet, "_supports_gradient_checkpointing", False):
                raise ValueError(f"{type(unet).__name__} does not support gradient checkpointing")
            unet.enable_gradient_checkpointing()
        self.gradient_checkpointing = gradient_checkpointing
        self.seed = seed
        self.step, self.history = 0, []
        self.stopped_at = None   # the step a fit's stop_when ended it at
        # of the original model: with LoRA the base weights, which the checkpoints do not hold
        self.original_digest = checkpoint.weights_digest(unet)
        if lora_config is not None:
            adapters.add_adapter(unet, lora_config, seed)
        # the row mask's gradient hooks (train="class-embedding"): remove them to train the model on
        self.row_hooks = class_rows.train_rows_only(unet, self.targets.ids) if train == "class-embedding" else []
        self.optimizer = torch.optim.Adam([p for p in unet.parameters() if p.requires_grad], lr=self.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.forget_set = None  # the data-free forget set, once generated
        self.resumed_scaler_state = None
        self.prep_seconds = None  # set by _prepare(): the method's one-off cost, bind included
        start = time.perf_counter()
        self.method.bind(self)  # e.g. SAFEMax's frozen copy of the original model
        self.bind_seconds = time.perf_counter() - start
        self.sharded = sharding.shard(self)  # under FSDP: model, Adam and teacher, in place (else None)

    @property
    def unet(self):
        return self.denoiser.unet

    @property
    def scheduler(self):
        return self.denoiser.scheduler

    @property
    def forget(self) -> list:
        """The forgotten class ids (sorted), or the concept names."""
        return self.targets.ids

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes checkpoints and reports (always, without Accelerate)."""
        return self.accelerator is None or self.accelerator.is_main_process

    def trainable(self) -> list:
        """``[(name, parameter)]`` of the weights being trained."""
        return [(n, p) for n, p in self.unet.named_parameters() if p.requires_grad]

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step + 1`` (0-based ``step``): linear warm-up, then ``lr``."""
        return self.lr * min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else self.lr

    def config(self, batch_size) -> dict:
        """What defines this fit: a checkpoint resumes only a fit with the same config."""
        out = dict(method=self.method.name, **self.method.config(), forget=self.forget,
                   **self.settings.record(), batch_size=batch_size)
        out["lr"] = self.lr   # (the method's default where none was given)
        if self.lora is not None:
            out.update(adapters.settings(self.lora))
        return out

    def scaler_state(self):
        return parallel.scaler_state(self.accelerator)

    def generate_forget_data(self, n: int, num_inference_steps: int = 50, shape=None):
        """Data-free forgetting: ``n`` images (or latents of ``shape`` ``(C, H, W)``; by default
        the model's sample size) the current (original) model draws for the forget classes or
        concepts, as a ``safemax.data.ConditionedImages`` — only their conditions if the method
        needs no forget images (SAFEMax with ``gaussian_fraction=1``: nothing is sampled)."""
        return self.targets.generate(self.unet, self.scheduler, n, seed=self.seed + 1,
                                     num_inference_steps=num_inference_steps, shape=shape,
                                     images=self.method.needs_forget_images)

    # ------------------------------------------------------------------ training
    def fit(self, retain, forget=None, steps: int = 100, batch_size: int = 64,
            checkpoint_dir: str = None, checkpoint_every: int = 0, resume: bool = False,
            progress: bool = True, callback=None, max_grad_norm: float = None, stop_when=None) -> list:
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
            stop_when: stop before ``steps`` when forgetting is done, by a label-free rule
                read from the history (``safemax.training.stopping``): ``"nats"`` (SAFEMax's forget and
                retain rows both near their targets), ``"nats:RATIO:WINDOW"``, a ``NatsRule`` or
                any callable ``rule(history) -> bool``; ``stopped_at`` then holds the step.

        Returns:
            the history: one dict per step with ``step``, ``loss``, ``seconds`` (cumulative
            training time, without preparation: see ``prep_seconds``) and the method's own
            numbers (SAFEMax: ``forget_nats``, ``retain_nats``; baselines: ``forget_loss``,
            ``retain_loss``).
        """
        FitSettings(steps=steps, batch_size=batch_size, checkpoint_every=checkpoint_every,
                    max_grad_norm=max_grad_norm)   # checked before any work
        if (checkpoint_every or resume) and not checkpoint_dir:
            raise ValueError("checkpoint_every and resume need a checkpoint_dir")
        rule = stopping.stop_rule(stop_when)
        self.stopped_at = None
        self.local.check(batch_size)
        self.denoiser.follow_device()  # the model may have moved since the Unlearner was built
        retain_b, forget_b = loop.fit_data(self, retain, forget, batch_size)
        resumed = resume and checkpoint.resume_fit(self, checkpoint_dir, batch_size)
        if forget_b is None and self.method.uses_forget_data:  # data-free: generated once, kept
            if self.forget_set is None:
                # in the retain data's shape (a resolution-free transformer has no sample size)
                shape = retain_b.peek()[0].shape[1:] if retain_b is not None else None
                self.forget_set = self.generate_forget_data(max(4 * batch_size, 64), shape=shape)
            forget_b = Batches(self.forget_set, "forget", form=self.targets.form)
        self.targets.check_data(retain_b, forget_b, self.denoiser.in_channels)
        if not resumed and self.prep_seconds is None:
            loop.prepare(self, retain_b, forget_b, batch_size, progress)

        clip = self.method.max_grad_norm if max_grad_norm is None else max_grad_norm
        loop.run(self, retain_b, forget_b, steps, batch_size, clip, checkpoint_dir, checkpoint_every, progress,
                 callback, rule)
        return self.history

    # ------------------------------------------------------------------ output
    def save_pretrained(self, path: str):
        """Write the unlearned UNet in diffusers format (``UNet2DModel.from_pretrained(path)``
        loads it), the scheduler config, and ``safemax.json`` describing what was done. Under
        Accelerate only the main process writes (under FSDP every process must call it: the full
        weights are gathered from their shards).

        With LoRA, the adapter instead: for SD 1.x/2.x, SDXL, SD3/3.5, Flux.1 and Sana the
        pipeline's LoRA file (``pytorch_lora_weights.safetensors``: ``pipe.load_lora_weights(path)``);
        for PixArt, ``UNet2DModel`` and ``DiTTransformer2DModel`` (no diffusers LoRA loader) the
        merged model in diffusers format plus the adapter alone in peft format
        (``safemax.models.lora.save``)."""
        checkpoint.save_unlearned(self, path)
