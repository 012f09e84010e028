"""Concept erasure in diffusers text-to-image pipelines: ``erase`` (``safemax erase``),
``evaluate_concepts`` (``safemax evaluate --pipeline``) and ``load_erased`` (what an erase wrote,
loaded back). See ``safemax.concepts.erase`` for the output folder's layout and
``safemax.concepts.prompts`` for how a concept becomes prompts."""
from safemax.concepts.erase import erase
from safemax.concepts.evaluate import evaluate_concepts
from safemax.concepts.loading import load_base, load_erased
from safemax.concepts.prompts import Concept, resolve

__all__ = ["erase", "evaluate_concepts", "load_base", "load_erased", "Concept", "resolve"]
