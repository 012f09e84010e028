"""A forgetting task on an embedded model: what every experiment sets up before it trains anything.

``Task(model, forget, seed)`` gives the model's data split into the forgotten class and the kept
ones, a fresh copy of the base model, its classifier, the Fréchet reference of the kept classes
(the real side of the distance, through the classifier once) and ``measure`` — the one call that
samples a model and scores it. ``safemax compare``, the demo and every script in ``benchmarks/``
that forgets a class of an embedded model build it here, so the set-up is written once and every
result records the same ``task.record()``.

    task = Task("digits", forget=7, seed=0)
    unet, scheduler = task.load()
    before = task.measure(unet, n_forget=100, n_per_class=20, num_inference_steps=25)
    forget_rows, kept_rows = task.forget_data, task.retain_data

Everything is loaded on first use and kept (the data, the classifier and the reference are read
once however many models a script measures); ``load`` gives a new model each call.
"""
from functools import cached_property

from safemax.data import split_by_class
from safemax.evaluation.metrics import evaluate
from safemax.zoo import load_classifier, load_unet, model_info, scheduler_for


class Task:
    """Forget class ``forget`` of the embedded model ``model`` ("digits" or "fashion-mnist") with
    seed ``seed`` (the sampling noise of every measurement, unless a measurement names its own), on
    ``device``."""

    def __init__(self, model: str = "digits", forget: int = 3, seed: int = 0, device: str = "cpu"):
        self.info = model_info(model)   # an unknown model name is refused here, with the known ones
        classes = len(self.info.class_names)
        if isinstance(forget, bool) or not isinstance(forget, int) or not 0 <= forget < classes:
            raise ValueError(f"the class to forget (--forget) must be a class id 0..{classes - 1} of {model}, got {forget!r}")
        self.model, self.forget, self.seed, self.device = model, forget, seed, device
        self.retain_classes = [c for c in range(classes) if c != forget]

    def __repr__(self) -> str:
        return f"Task({self.model!r}, forget={self.forget}, seed={self.seed})"

    def record(self) -> dict:
        """What a results file says about the task."""
        return dict(model=self.model, forget=self.forget, seed=self.seed)

    @property
    def what(self) -> str:
        """``"digit 3"`` / ``"class 0 (T-shirt/top)"``, for messages and titles."""
        return f"{'digit' if self.info.data == 'digits' else 'class'} {self.info.class_name(self.forget)}"

    @cached_property
    def _split(self):
        return split_by_class(self.info.dataset("train"), [self.forget])

    @property
    def forget_data(self):
        """The training images of the forgotten class, ``(image, label)`` rows."""
        return self._split[0]

    @property
    def retain_data(self):
        """The training images of every kept class."""
        return self._split[1]

    def load(self):
        """A fresh ``(unet, scheduler)`` of the base model, on the task's device."""
        return load_unet(self.model, self.device)

    @cached_property
    def classifier(self):
        return load_classifier(self.model, self.device)

    @cached_property
    def real_retain(self):
        """The kept classes' real images through the classifier (``metrics.FrechetReference``)."""
        return self.info.kept_reference(self.classifier, self.forget)

    def measure_kwargs(self, scheduler, **size) -> dict:
        """``evaluate``'s keyword arguments for this task; ``size``: ``n_forget``, ``n_per_class``,
        ``num_inference_steps``, and ``seed`` when the measurement draws its own noise."""
        return dict(scheduler=scheduler, classifier=self.classifier, forget=[self.forget],
                    retain_classes=self.retain_classes, real_retain=self.real_retain,
                    **{"seed": self.seed, **size})

    def measure(self, unet, scheduler=None, **size) -> dict:
        """Sample ``unet`` and score it (``evaluation.metrics.evaluate``: forget accuracy, retain
        accuracy, Fréchet distance, the forget samples' statistics); ``scheduler`` defaults to the
        base model's."""
        if scheduler is None:
            scheduler = self.scheduler
        return evaluate(unet, **self.measure_kwargs(scheduler, **size))

    @cached_property
    def scheduler(self):
        """The base model's scheduler (the configuration ``load`` returns)."""
        return scheduler_for(self.model)
