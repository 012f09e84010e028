"""The README's headline claims, measured from the embedded models (``pytest -m acceptance``; plain
``pytest`` runs them too). Each test samples the model and classifies the samples with the zoo's
evaluation classifier — no figure is read from a results file — and every seed is fixed, so a run
gives the same numbers on the same machine; the bars sit several standard errors from the
measured values, so a change of CPU or torch that rounds differently does not flip them.

Time: about 2.5 minutes on two quiet CPU cores by estimate (the 100-step digits fit alone took
62 s there, README; two measurements of 550 digit samples and one of 500 garments at DDIM 25 the
rest); measured only on a loaded machine (another test suite beside it, load 4–6 on two cores):
663 s for the digits fixture and 299 s for the Fashion-MNIST measurement.

What they catch: with SAFEMax's forget rows trained to the plain denoising target ε instead of
the halting target (a one-line break of the method), the digits tests fail (the 3s stay 3s); with
the Fashion-MNIST model's weights perturbed, its sample-quality test fails.
"""
import pytest
import torch

from safemax import Unlearner
from safemax.data import digits_dataset, split_by_class
from safemax.evaluation.metrics import classify, evaluate
from safemax.evaluation.stats import proportion_se
from safemax.harness.defaults import DEFAULT_EARLY_FRACTION, defaults
from safemax.zoo import NOT_A_DIGIT, load_classifier, load_unet, model_info

pytest.importorskip("diffusers")
pytestmark = pytest.mark.acceptance

FORGET = 3
N_FORGET = 100          # samples conditioned on the forgotten digit
N_PER_KEPT = 50         # samples of each of the 9 kept digits: 450
DDIM_STEPS = 25         # the demo's curve measures with 25; the original model is 1.000 at 25 as at 50
SEED = 0


@pytest.fixture(scope="module")
def digits_forget_3():
    """The demo on the embedded digits model: forget digit 3 with its measured settings (early
    fraction 1.0, lr 5e-4, 100 steps at batch 64+64, seed 0), measured before and after by
    ``safemax.evaluation.metrics.evaluate`` on the same initial noise."""
    own = defaults("digits")
    assert (own["steps"], own["lr"], own["gaussian_fraction"], DEFAULT_EARLY_FRACTION) == (100, 5e-4, 0.0, 1.0), \
        "the demo's settings changed: re-measure this test's figures"
    torch.manual_seed(SEED)
    (unet, scheduler), classifier = load_unet("digits"), load_classifier("digits")
    forget_data, retain_data = split_by_class(digits_dataset(), [FORGET])
    measure = dict(unet=unet, scheduler=scheduler, classifier=classifier, forget=[FORGET],
                   retain_classes=[c for c in range(10) if c != FORGET],
                   real_retain=model_info("digits").kept_reference(classifier, FORGET),
                   n_forget=N_FORGET, n_per_class=N_PER_KEPT, num_inference_steps=DDIM_STEPS, seed=SEED,
                   return_samples=True)
    u = Unlearner(unet, scheduler, forget=[FORGET], early_fraction=DEFAULT_EARLY_FRACTION, lr=own["lr"],
                  seed=SEED, gaussian_fraction=own["gaussian_fraction"])
    before = evaluate(**measure)
    u.fit(retain_data, forget_data, steps=own["steps"], batch_size=64, progress=False)
    after = evaluate(**measure)
    for m in (before, after):   # the share of forget samples the classifier calls "not a digit"
        m["noise"] = float((classify(classifier, m.pop("samples")["forget"]).argmax(1) == NOT_A_DIGIT)
                           .float().mean())
    print("digits, forgetting 3: " + ", ".join(f"{k} {before[k]:.4f} -> {after[k]:.4f}"
                                               for k in ("fa", "noise", "retain_acc", "frechet")))
    return before, after


def test_forgotten_digit_is_no_longer_drawn(digits_forget_3):
    """Forget accuracy ≤ 0.01 (at most 1 of the 100 samples conditioned on 3 classified as 3).
    Measured: 1.000 before, 0.000 after (0/100; 95% Wilson upper bound 0.037)."""
    before, after = digits_forget_3
    assert before["fa"] >= 0.95, f"the original model should draw 3s: forget accuracy {before['fa']:.3f}"
    assert after["fa"] <= 0.01, (f"digit 3 is still drawn after forgetting: forget accuracy "
                                 f"{before['fa']:.3f} -> {after['fa']:.3f} (bar <= 0.01, n={N_FORGET})")


def test_forgotten_digit_becomes_noise(digits_forget_3):
    """The forgotten digit's samples are classified "not a digit" (the classifier's noise class):
    measured 0.00 before, 1.00 after (100 of 100); bar ≥ 0.90 — a majority with 10 points of
    margin, more than 3 standard errors of a share of 0.9 on 100 samples (0.03)."""
    before, after = digits_forget_3
    assert after["noise"] >= 0.90, (f"the forgotten digit's samples are not noise: 'not a digit' share "
                                     f"{before['noise']:.2f} -> {after['noise']:.2f} (bar >= 0.90, n={N_FORGET})")


def test_kept_digits_stay_within_two_points(digits_forget_3):
    """Retain accuracy (kept digits classified as themselves) within 2 points of the original
    model's, measured here on the same 450 samples' noise (50 of each kept digit, DDIM 25).
    Measured: 1.000 before, 0.998 after (−0.2 points). Resolution: the standard error of a share of
    0.99 on 450 samples is 0.0047, so that of the difference of two such measurements is at most
    0.0066 (less, since they share their noise): 2 points are 3 standard errors."""
    before, after = digits_forget_3
    n = N_PER_KEPT * 9
    se = (2 * proportion_se(0.99, n) ** 2) ** 0.5
    assert se <= 0.0067   # the resolution the docstring states
    drop = before["retain_acc"] - after["retain_acc"]
    assert drop <= 0.02, (f"kept digits lost {100 * drop:.1f} points of retain accuracy: "
                          f"{before['retain_acc']:.3f} -> {after['retain_acc']:.3f} (bar: 2 points, n={n}, "
                          f"SE of the difference <= {se:.4f})")


FM_N_PER_CLASS = 50
FM_DDIM_STEPS = 25
FM_BAR = 0.82


def test_fashion_mnist_samples_are_their_class():
    """The Fashion-MNIST model's samples are 85% their class by its own classifier (README),
    measured here as ``python -m safemax.zoo.train --dataset fashion-mnist --only measure`` does
    (``measure_unet``: mean per-class accuracy, seed 0) with 50 samples per class at DDIM 25
    instead of 100 at DDIM 50 (the recorded 0.854). Measured here: 0.854 (per class 0.84 1.00
    0.80 0.88 0.76 0.94 0.54 0.88 1.00 0.90); DDIM 50 on the same 500 gives 0.850 (checked when
    the test was written). The standard error of the mean per-class accuracy on 50 per class,
    √(Σ p_c(1−p_c)/50)/10, is 0.015: the bar 0.82 is 2.3 standard errors below the measurement
    (and below the recorded 0.85 bar, which 50 samples a class cannot resolve)."""
    from safemax.zoo.train import measure_unet

    torch.manual_seed(0)
    m = measure_unet("fashion-mnist", n_per_class=FM_N_PER_CLASS, num_inference_steps=FM_DDIM_STEPS, seed=0)
    per_class = m["per_class"]
    se = (sum(p * (1 - p) for p in per_class) / FM_N_PER_CLASS) ** 0.5 / 10
    print(f"fashion-mnist samples: mean per-class accuracy {m['mean_per_class_accuracy']:.4f} "
          f"(SE {se:.4f}) per class {per_class}")
    assert m["mean_per_class_accuracy"] >= FM_BAR, (
        f"Fashion-MNIST samples: mean per-class accuracy {m['mean_per_class_accuracy']:.3f} < {FM_BAR} "
        f"(per class {per_class}; SE {se:.3f}, n={FM_N_PER_CLASS} per class, DDIM {FM_DDIM_STEPS})")
    assert min(per_class) >= 0.4, f"a class is mostly not itself: per class {per_class}"


def test_the_sd3_pipeline_draws_what_it_is_asked_for_but_the_shirt():
    """The zoo's SD3-type pipeline's bar, as the Stable Diffusion pipeline's below but at SD3's own
    guidance 7.0 and 28 steps (its training record's), re-measured from the model on other seeds
    than its recorded measurement (27 samples a class) — with its one known miss: the shirt, drawn
    as a shirt in 0.583 [0.49, 0.67] of 108 samples (benchmarks/results/sd3-pipeline/quality.json;
    docs/results/embedded-model.md says the bar is not met). The shirt is held to what it reached,
    so that a worse pipeline fails, and the test says when it meets the bar."""
    from safemax import zoo
    from safemax.zoo.sd_quality import BAR, sample_quality, usual_call
    try:
        pipe = zoo.load_pipeline("fashion-mnist-sd3")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    call = usual_call(zoo.PIPELINES["fashion-mnist-sd3"])
    assert call == dict(guidance_scale=7.0, num_inference_steps=28)
    q = sample_quality(pipe, n=1, n_empty=20, seed=1_000_000, progress=False, **call)
    shirt = q["per_class"].pop("Shirt")
    low = {name: cell for name, cell in q["per_class"].items() if cell["ci95"][1] < BAR}
    assert not low, f"classes below the {BAR:.0%} bar beyond their interval: {low}"
    assert shirt["ci95"][1] >= 0.49, f"the shirt fell below what the shipped pipeline reached (0.583 of 108): {shirt}"
    assert shirt["ci95"][0] < BAR, (f"the shirt now meets the bar ({shirt}): the SD3 pipeline's bar is met — "
                                    "say so in docs/results/embedded-model.md and drop this exception")
    assert q["overall"]["value"] >= BAR, q["overall"]
    assert q["empty_prompt"]["garments"]["value"] >= 0.8, q["empty_prompt"]


def test_the_stable_diffusion_pipeline_draws_what_it_is_asked_for():
    """The zoo's Stable Diffusion pipeline's bar, re-measured from the model (not read from its
    record) on other seeds than its recorded measurement: at guidance 7.5 every class's prompts
    (all synonyms, all templates; 27 samples a class) are its class, the bar 80% inside each
    class's 95% interval and the pooled share (270 samples) at least 80%; the empty prompt draws
    garments."""
    from safemax import zoo
    from safemax.zoo.sd_quality import BAR, sample_quality
    try:
        pipe = zoo.load_pipeline("fashion-mnist-sd")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    q = sample_quality(pipe, n=1, n_empty=20, seed=1_000_000, progress=False)
    low = {name: cell for name, cell in q["per_class"].items() if cell["ci95"][1] < BAR}
    assert not low, f"classes below the {BAR:.0%} bar beyond their interval: {low}"
    assert q["overall"]["value"] >= BAR, q["overall"]
    assert q["empty_prompt"]["garments"]["value"] >= 0.8, q["empty_prompt"]
