"""The ``Unlearner``'s and ``fit``'s own settings, declared once (``safemax.settings``): checked when
given, turned into the command line's options, and recorded in checkpoints and ``safemax.json``.
A method's settings are its own dataclass (``safemax.methods``)."""
from dataclasses import dataclass
from typing import Optional

from safemax.models.class_rows import TRAIN_CHOICES
from safemax.settings import Settings, optional, positive, setting


def _whole_or_zero(v):
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "a whole number >= 0"


def _seed(v):
    return None if isinstance(v, int) and not isinstance(v, bool) else "a whole number"


def _rank(v):
    return None if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1) else \
        "an integer >= 1 (or None: no LoRA)"


def _train(v):
    return None if v in TRAIN_CHOICES else f"one of {TRAIN_CHOICES}"   # (class_rows.check_train's words)


def _precision(v):
    return None if v in (None, "no", "bf16", "fp16") else 'None, "no", "bf16" or "fp16"'


_train.choices = list(TRAIN_CHOICES)
_precision.choices = ["no", "bf16", "fp16"]


@dataclass(frozen=True)
class UnlearnerSettings(Settings):
    """How the ``Unlearner`` trains, whatever the method (``Unlearner``'s docstring has the detail).
    ``record()`` keeps what defines the fit's result; how it is computed (mixed precision,
    gradient checkpointing) is left out, so a checkpoint resumes under either."""
    lr: Optional[float] = setting(None, "Adam learning rate (Python default: the method's; class-embedding rows: 0.3)",
                                  check=optional(positive))
    seed: int = setting(0, "seeds every random draw of the fit (data, timesteps, noise)", check=_seed)
    warmup_steps: int = setting(0, "raise the learning rate linearly over these first steps", check=_whole_or_zero)
    mixed_precision: Optional[str] = setting(None, "autocast the forward passes through Accelerate (fp16: GPU only)",
                                             check=_precision)
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less memory, "
                                           "more time")
    lora_rank: Optional[int] = setting(None, "train a LoRA adapter of this rank instead of the model (needs peft)",
                                       check=_rank)
    train: str = setting("all", "which weights train: all, the forgotten classes' class-embedding rows alone, "
                         "or the text cross-attention alone", check=_train)

    def check(self):
        if self.train != "all" and self.lora_rank is not None:
            raise ValueError(f"train={self.train!r} trains some of the model's own weights; it cannot be "
                             "combined with a LoRA adapter (lora_rank / lora): use one or the other")

    def record(self) -> dict:
        out = super().record()
        for how in ("mixed_precision", "gradient_checkpointing", "lora_rank"):   # (LoRA: its own record)
            out.pop(how)
        return out


@dataclass(frozen=True)
class FitSettings(Settings):
    """A fit's own settings (``Unlearner.fit``'s docstring has the detail)."""
    steps: int = setting(100, "steps in total (a resumed fit continues up to this number)", check=_whole_or_zero)
    batch_size: int = setting(64, "forget rows and retain rows per step (each), over all processes",
                              check=lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v >= 1
                              else "a whole number >= 1")
    checkpoint_every: int = setting(0, "checkpoint every N steps (0: only at the end and on Ctrl-C)",
                                    check=_whole_or_zero)
    max_grad_norm: Optional[float] = setting(None, "clip the gradient norm (default: the method's published "
                                             "recipe; 0: none)", check=optional(lambda v: None if v >= 0 else ">= 0"))
