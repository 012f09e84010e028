"""The modules of safemax 0.1's flat layout, at their old names for one release.

``import safemax.metrics`` (or ``from safemax.metrics import evaluate``) still works: it gives the
module at its new place, ``safemax.evaluation.metrics``, the same object, with a
``DeprecationWarning`` that names it. No module file stays behind at the old place.
"""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "ops": "safemax.op.ops", "reference": "safemax.op.reference", "_extension": "safemax.op.extension",
    "selfcheck": "safemax.op.selfcheck",
    "rows": "safemax.data.rows", "fashion_mnist": "safemax.data.fashion_mnist_files",
    "families": "safemax.models.families", "denoiser": "safemax.models.denoiser",
    "schedule": "safemax.models.schedule", "sampling": "safemax.models.sampling",
    "pipelines": "safemax.models.pipelines", "stable_diffusion": "safemax.models.pipelines",
    "lora": "safemax.models.lora", "class_rows": "safemax.models.class_rows",
    "metrics": "safemax.evaluation.metrics", "attacks": "safemax.evaluation.attacks",
    "probes": "safemax.evaluation.probes", "report": "safemax.evaluation.report",
    "unlearner": "safemax.training.unlearner", "conditions": "safemax.training.conditions",
    "checkpoint": "safemax.training.checkpoint", "parallel": "safemax.training.parallel",
    "stopping": "safemax.training.stopping",
    "compare": "safemax.harness.compare", "demo": "safemax.harness.demo", "loading": "safemax.cli.loading",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        head, _, name = fullname.partition(".")
        if head != "safemax" or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name.partition(".")[2]]
        warnings.warn(f"{spec.name} moved to {new}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass   # the module at its new place is already executed


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
