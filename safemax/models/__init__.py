"""The models a fit drives: one adapter per diffusers family (``families``), the denoiser that
calls it and computes its targets (``denoiser``), the noise schedules (``schedule``), the sampler
(``sampling``), the text-to-image pipelines' conditions and latents (``pipelines``), LoRA
adapters (``lora``) and class-embedding rows (``class_rows``)."""
