"""Prompt attacks added to a finished erase: a head-to-head asks the same attacks of every method,
runs finished before it asked included (``safemax.harness.concept_compare`` calls this)."""
import json
import os

from safemax.concepts import card, evaluate
from safemax.concepts.erase import drawn_concept_latents
from safemax.concepts.loading import MANIFEST, load_erased
from safemax.concepts.prompts import Concept
from safemax.evaluation.provenance import provenance
from safemax.evaluation.report import write_json

__all__ = ["attack_erased"]


def attack_erased(path: str, kinds, budget: dict = None, progress: bool = True) -> dict:
    """Run the prompt attacks ``kinds`` on a finished ``safemax erase`` output that has not run
    them, at its own evaluation's settings (samples per prompt, seed, steps, first guidance), and
    add them to its report's ``after.attacks`` marked ``added_later`` (with this call's provenance) — so that a head-to-head asks
    the same attacks of every method, runs finished before it asked included. Returns the report
    (unchanged, and nothing run, when every concept already has every kind)."""
    if not os.path.isfile(os.path.join(path, "report.json")) or not os.path.isfile(os.path.join(path, MANIFEST)):
        raise ValueError(f"{path} holds no finished, evaluated safemax erase (report.json and {MANIFEST}): "
                         "run safemax erase with its evaluation first")
    with open(os.path.join(path, "report.json")) as f, open(os.path.join(path, MANIFEST)) as g:
        report, manifest = json.load(f), json.load(g)
    concepts = [Concept(**r) for r in manifest["concepts"]]
    after = report["after"]
    found = after.get("attacks", {})
    missing = [k for k in dict.fromkeys(kinds) if any(k not in found.get(c.name, {}) for c in concepts)]
    if not missing:
        return report
    pipe, manifest = load_erased(path)
    captioned = manifest.get("captioned", False)
    latents = {} if captioned else drawn_concept_latents(path, concepts)
    rows = evaluate._attacked(pipe, concepts, missing, dict(budget or {}), latents, captioned,
                     evaluate.FashionJudge.shared() if captioned else None, after["n_per_prompt"], after["seed"],
                     after["guidance"][0], after["num_inference_steps"], progress, manifest.get("options") or {})
    added = dict(provenance(), note="attack run on the finished erase afterwards, at its evaluation's settings")
    for name, by_kind in rows.items():
        mine = after.setdefault("attacks", {}).setdefault(name, {})
        if "skipped" in by_kind:
            mine.setdefault("skipped", by_kind["skipped"])
            continue
        mine.update({k: dict(row, added_later=added) for k, row in by_kind.items() if k not in mine})
    write_json(os.path.join(path, "report.json"), report)
    card.write_card(path, manifest, report)
    return report
