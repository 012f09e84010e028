"""A restructuring changes no result: short fits of every method give the weights and losses
recorded before the Unlearner was split into modules (tests/data/fit_fingerprints.json)."""
import json

import pytest
import torch

from fit_fingerprints import CASES, PATH, fingerprint

with open(PATH) as f:
    RECORDED = json.load(f)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_fit_gives_the_recorded_weights(case):
    # The record was made with torch 2.13.0 (CPU); other builds may round differently.
    tol = dict(rtol=1e-9, abs_tol=1e-9) if torch.__version__ == RECORDED["torch"] else \
        dict(rtol=1e-4, abs_tol=1e-5)
    want, got = RECORDED["cases"][case], fingerprint(case)
    assert got["weights"].keys() == want["weights"].keys()
    for name, (s, s2) in want["weights"].items():
        gs, gs2 = got["weights"][name]
        assert abs(gs - s) <= tol["abs_tol"] + tol["rtol"] * abs(s), (name, gs, s)
        assert abs(gs2 - s2) <= tol["abs_tol"] + tol["rtol"] * abs(s2), (name, gs2, s2)
    assert got["loss"] == pytest.approx(want["loss"], rel=tol["rtol"], abs=tol["abs_tol"])
