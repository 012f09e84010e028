"""The fused op against its pure-PyTorch spec (safemax.op.reference): values, gradients, layouts,
edge cases, torch.library/compile integration, determinism and error messages, for both
parametrizations ("epsilon": noise prediction, "flow": rectified-flow velocity); plus tests of
the flow target's truth that use neither the op's nor the reference's formula."""
import contextlib
import importlib.machinery
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from problems import TOL, T, linear_alphas_cumprod, make_problem, shifted_flow_sigmas
from torch._subclasses.fake_tensor import FakeTensorMode

import safemax
from safemax import safemax_loss, safemax_loss_reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
PARAMETRIZATIONS = ["epsilon", "flow"]
# Every (parametrization, weighting) the op accepts: "vlb" has no flow-matching derivation.
MODES = [("epsilon", "simple"), ("epsilon", "vlb"), ("flow", "simple")]
MODE_IDS = [f"{p}-{w}" for p, w in MODES]


def _weighting(parametrization):
    """The richest weighting a parametrization accepts."""
    return "vlb" if parametrization == "epsilon" else "simple"


def _loss_and_grads(fn, args, t_min, forget_weight, weighting, nats_weights,
                    parametrization="epsilon"):
    """(loss, nats, grads of loss + Σ nats·nats_weights w.r.t. eps_pred, eps, x_t)."""
    inputs = [a.detach().clone().requires_grad_(True) for a in args[:3]]
    loss, nats = fn(*inputs, *args[3:], t_min, forget_weight, weighting, parametrization)
    total = loss + (nats * nats_weights).sum()
    grads = torch.autograd.grad(total, inputs, allow_unused=True) if total.requires_grad else (None,) * 3
    return loss, nats, grads


def _close(actual, expected, dtype):
    tol = TOL[dtype]
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.detach().double().cpu(), expected.detach().double().cpu(),
                               rtol=tol["rtol"], atol=tol["atol"] + tol["rtol"] * scale)


def check_against_reference(args, t_min=T // 2, forget_weight=1.0, weighting="simple",
                            parametrization="epsilon"):
    dtype = args[0].dtype
    nats_weights = torch.linspace(-1.0, 2.0, args[0].shape[0], device=args[0].device,
                                  dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    got = _loss_and_grads(safemax_loss, args, t_min, forget_weight, weighting, nats_weights,
                          parametrization)
    ref = _loss_and_grads(safemax_loss_reference, args, t_min, forget_weight, weighting,
                          nats_weights, parametrization)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert got[0].dtype == acc and got[0].shape == ()
    assert got[1].dtype == acc and got[1].shape == (args[0].shape[0],)
    _close(got[0], ref[0], dtype)
    _close(got[1], ref[1], dtype)
    for g, r, x in zip(got[2], ref[2], args[:3]):
        if r is None:  # the reference does not depend on this input at all (e.g. all rows forget)
            r = torch.zeros_like(x)
        assert g.shape == x.shape and g.dtype == x.dtype
        _close(g, r, dtype)
    return got


# ---------------------------------------------------------------- it is the compiled op that runs

def test_compiled_extension_is_what_runs():
    ext = safemax.op.extension._C
    assert ext.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), ext.__file__
    assert "cpu" in safemax.backends() and "cpu" in safemax.compiled_backends()
    assert safemax.op.extension.with_openmp()
    # The public entry point is the dispatcher op, not the Python reference...
    assert safemax.op.ops._forward is torch.ops.safemax.safemax_loss.default
    # ...and only the C++ kernel checks timesteps against T (the reference would IndexError).
    args = make_problem((2, 3), timesteps=[0, T])
    with pytest.raises(ValueError, match=r"timesteps\[1\] = 1000 is outside \[0, T\)"):
        safemax_loss(*args, 0)


# ---------------------------------------------------------------- values and gradients

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("parametrization,weighting", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (5, 7), (3, 1, 5, 3), (2, 4097), (1, 3, 33, 65)])
def test_matches_reference(dtype, parametrization, weighting, shape):
    args = make_problem(shape, dtype=dtype, seed=hash(shape) % 1000, parametrization=parametrization)
    check_against_reference(args, t_min=300, forget_weight=0.75, weighting=weighting,
                            parametrization=parametrization)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_large_rows_span_many_blocks(dtype, parametrization):
    # P = 3·61·67 = 12261 elements: three kernel blocks per row, the last one partial.
    check_against_reference(make_problem((3, 3, 61, 67), dtype=dtype, forget=[True, False, True],
                                         timesteps=[999, 5, 700], parametrization=parametrization),
                            parametrization=parametrization)


@pytest.mark.parametrize("forget_weight", [0.0, 1.0, 3.5, -0.5])
@pytest.mark.parametrize("parametrization,weighting", MODES, ids=MODE_IDS)
def test_forget_weight(forget_weight, parametrization, weighting):
    args = make_problem((6, 2, 4, 4), forget=[1, 0, 1, 1, 0, 1], timesteps=[999, 2, 600, 501, 7, 800],
                        parametrization=parametrization)
    check_against_reference(args, t_min=500, forget_weight=forget_weight, weighting=weighting,
                            parametrization=parametrization)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_forget_weight_zero_leaves_only_retain_rows(parametrization):
    args = make_problem((4, 3, 4, 4), forget=[1, 0, 1, 0], timesteps=[900, 900, 900, 900],
                        parametrization=parametrization)
    p = dict(parametrization=parametrization)
    loss, nats = safemax_loss(*args, 0, forget_weight=0.0, **p)
    retain_only, _ = safemax_loss(*args[:5], torch.zeros(4, dtype=torch.bool), 0, **p)
    # Same retain rows, forget rows weighted 0: half the retain-only batch's mean per-row term.
    mse = (args[0] - args[1])[[1, 3]].square().flatten(1).mean(1)
    torch.testing.assert_close(loss, mse.sum() / 4)
    assert (nats[[0, 2]] > 0).all()  # forget rows still report their nats
    assert retain_only.item() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_timestep_boundaries(dtype, parametrization):
    t_min = 400
    # every boundary, for forget rows (masked below t_min) and retain rows (never masked)
    ts = [0, t_min - 1, t_min, T - 1] * 2
    forget = [True] * 4 + [False] * 4
    args = make_problem((8, 2, 3, 3), dtype=dtype, forget=forget, timesteps=ts,
                        parametrization=parametrization)
    loss, nats, _ = check_against_reference(args, t_min=t_min, parametrization=parametrization)
    assert nats[0] == 0 and nats[1] == 0  # forget rows with t < t_min are masked
    assert (nats[2:] > 0).all()


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_target_is_max_entropy_prediction(parametrization):
    """A forget row predicting exactly its max-entropy target has zero loss — √(1−ᾱ_t)·x_t
    (epsilon), k(σ_t)·x_σ with k(σ) = (2σ−1)/((1−σ)²+σ²) (flow) — and a retain row predicting
    its target (ε, or the velocity ε − x_0) too."""
    _, eps, x_t, ts, table, _ = make_problem((2, 3, 4, 4), dtype=torch.float64, timesteps=[700, 300],
                                             parametrization=parametrization)
    forget = torch.tensor([True, False])
    v = table[700].double()
    scale = (1 - v).sqrt() if parametrization == "epsilon" else (2 * v - 1) / ((1 - v) ** 2 + v ** 2)
    pred = torch.stack([scale * x_t[0], eps[1]])
    loss, nats = safemax_loss(pred, eps, x_t, ts, table, forget, 0, parametrization=parametrization)
    assert loss.item() == pytest.approx(0.0, abs=1e-30) and nats.abs().max().item() < 1e-30


def test_nats_coefficient_is_the_kl_per_pixel():
    """nats = c_t·mse with c_t = β_t / (2 α_t (1 − ᾱ_t)), from the scheduler's own betas."""
    ac = linear_alphas_cumprod(dtype=torch.float64)
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    t = 123
    pred = torch.ones(1, 10, dtype=torch.float64)
    zeros = torch.zeros(1, 10, dtype=torch.float64)
    _, nats = safemax_loss(pred, zeros, zeros, torch.tensor([t]), ac, torch.tensor([False]), 0, weighting="vlb")
    expected = betas[t] / (2 * (1 - betas[t]) * (1 - ac[t]))
    assert nats.item() == pytest.approx(expected.item(), rel=1e-9)


def test_flow_second_output_is_the_mean_squared_residual():
    """In flow mode there is no KL coefficient: the second output is each active row's mean
    squared velocity residual (c := 1), not nats; the loss is their weighted batch mean."""
    eps_pred, v, x, ts, sigmas, _ = make_problem((4, 3, 5, 5), dtype=torch.float64,
                                                 timesteps=[999, 600, 100, 800], parametrization="flow")
    forget = torch.tensor([True, True, True, False])
    loss, mse = safemax_loss(eps_pred, v, x, ts, sigmas, forget, 500, 0.5, parametrization="flow")
    s = sigmas.double()[ts].view(-1, 1, 1, 1)
    target = torch.where(forget.view(-1, 1, 1, 1), (2 * s - 1) / ((1 - s) ** 2 + s ** 2) * x, v)
    expected = (eps_pred - target).square().flatten(1).mean(1)
    expected[2] = 0.0  # a forget row with t < t_min is masked
    torch.testing.assert_close(mse, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, (0.5 * expected[:3].sum() + expected[3]) / 4, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- batches that are edge cases

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_empty_batch(dtype, parametrization):
    args = make_problem((0, 3, 4, 4), dtype=dtype, requires_grad=True, parametrization=parametrization)
    loss, nats = safemax_loss(*args, 10, parametrization=parametrization)
    assert loss.item() == 0.0 and nats.shape == (0,)
    loss.backward()
    assert args[0].grad.shape == (0, 3, 4, 4) and args[2].grad.shape == (0, 3, 4, 4)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_all_forget_rows_masked(parametrization):
    args = make_problem((5, 2, 4, 4), forget=[True] * 5, timesteps=[0, 1, 100, 498, 499],
                        parametrization=parametrization)
    loss, nats, grads = check_against_reference(args, t_min=500, parametrization=parametrization)
    assert loss.item() == 0.0 and (nats == 0).all()
    assert all((g == 0).all() for g in grads)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_all_retain(parametrization):
    args = make_problem((5, 2, 4, 4), forget=[False] * 5, parametrization=parametrization)
    loss, nats, grads = check_against_reference(args, t_min=T, parametrization=parametrization)
    assert (grads[2] == 0).all()  # x_t enters no retain row


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_all_forget_active(parametrization):
    args = make_problem((5, 2, 4, 4), forget=[True] * 5, timesteps=[999, 800, 600, 400, 0],
                        parametrization=parametrization)
    loss, nats, grads = check_against_reference(args, t_min=0, parametrization=parametrization)
    assert (grads[1] == 0).all()  # eps enters no forget row


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_nan_propagates_from_active_rows_only(parametrization):
    args = list(make_problem((3, 2, 4, 4), forget=[True, False, True], timesteps=[100, 100, 900],
                             parametrization=parametrization))
    args[0] = args[0].clone()
    args[0][0, 0, 0, 0] = float("nan")  # row 0 is a forget row below t_min: masked
    loss, nats = safemax_loss(*args, 500, parametrization=parametrization)
    assert torch.isfinite(loss) and torch.isfinite(nats).all()
    args[0][2, 1, 1, 1] = float("inf")  # row 2 is active
    loss, nats = safemax_loss(*args, 500, parametrization=parametrization)
    assert not torch.isfinite(loss) and not torch.isfinite(nats[2]) and torch.isfinite(nats[:2]).all()


# ---------------------------------------------------------------- memory layouts

def _layouts(args, how):
    x = list(args)
    if how == "channels_last":
        x[:3] = [a.to(memory_format=torch.channels_last) for a in x[:3]]
    elif how == "transposed":
        x[:3] = [a.transpose(2, 3).contiguous().transpose(2, 3) for a in x[:3]]
    elif how == "sliced":
        x[:3] = [torch.cat([a, a], dim=3)[..., : a.shape[3]] for a in x[:3]]
    elif how == "mixed":
        x[0] = x[0].to(memory_format=torch.channels_last)
        x[2] = x[2].transpose(2, 3).contiguous().transpose(2, 3)
    elif how == "batch_inner":
        x[:3] = [a.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2) for a in x[:3]]
    return x


@pytest.mark.parametrize("how", ["channels_last", "transposed", "sliced", "mixed", "batch_inner"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_non_contiguous_inputs(how, dtype, parametrization):
    base = make_problem((4, 3, 5, 6), dtype=dtype, forget=[1, 0, 1, 0], timesteps=[900, 10, 600, 999],
                        parametrization=parametrization)
    args = _layouts(base, how)
    assert not all(a.is_contiguous() for a in args[:3])
    got = check_against_reference(args, t_min=500, parametrization=parametrization)
    # Gradients are laid out as empty_like(input), which is what the fake kernel promises.
    for g, a in zip(got[2], args[:3]):
        assert g.stride() == torch.empty_like(a).stride()
    # ...and the numbers are the contiguous problem's.
    ref = safemax_loss(*base, 500, parametrization=parametrization)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=0)


# ---------------------------------------------------------------- autograd, torch.library, compile

@pytest.mark.parametrize("parametrization,weighting", MODES, ids=MODE_IDS)
def test_gradcheck_float64(parametrization, weighting):
    # Flow: timesteps on both sides of σ = ½, where k(σ) changes sign.
    eps_pred, eps, x_t, ts, table, forget = make_problem(
        (4, 2, 3, 3), dtype=torch.float64, forget=[1, 0, 1, 1], timesteps=[900, 50, 700, 100],
        requires_grad=True, parametrization=parametrization)
    assert parametrization == "epsilon" or (table[100] < 0.5 < table[700])

    def fn(eps_pred, eps, x_t):
        loss, nats = safemax_loss(eps_pred, eps, x_t, ts, table.double(), forget, 500, 0.8,
                                  weighting, parametrization)
        return loss, nats

    assert torch.autograd.gradcheck(fn, (eps_pred, eps, x_t))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parametrization,weighting", MODES, ids=MODE_IDS)
def test_opcheck(dtype, parametrization, weighting):
    args = make_problem((4, 3, 4, 4), dtype=dtype, forget=[1, 0, 1, 0], timesteps=[900, 10, 100, 999],
                        requires_grad=True, parametrization=parametrization)
    torch.library.opcheck(torch.ops.safemax.safemax_loss.default,
                          (*args, 500, 0.5, weighting, parametrization))


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_opcheck_backward_op(parametrization):
    args = make_problem((3, 2, 4, 4), forget=[1, 0, 1], timesteps=[900, 10, 600],
                        parametrization=parametrization)
    grads = (torch.tensor(1.5), torch.randn(3))
    torch.library.opcheck(torch.ops.safemax.safemax_loss_backward.default,
                          (*grads, *args, 500, 1.0, "simple", [True, False, True], parametrization))


# ---------------------------------------------------------------- forget_target="given"

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("parametrization,weighting", MODES, ids=MODE_IDS)
def test_a_given_forget_target_matches_the_reference(dtype, parametrization, weighting):
    """forget_target="given": x_t is the forget rows' target itself (scale 1, whatever σ or ᾱ),
    values and gradients as the reference, and the same as handing the op the retain rows' form."""
    args = make_problem((6, 3, 5, 5), dtype=dtype, seed=4, forget=[1, 0, 1, 1, 0, 1],
                        timesteps=[900, 10, 500, 700, 999, 100], parametrization=parametrization)
    given = lambda *a: safemax_loss(*a, forget_target="given")   # noqa: E731
    ref = lambda *a: safemax_loss_reference(*a, forget_target="given")   # noqa: E731
    w = torch.linspace(-1.0, 2.0, 6, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    got = _loss_and_grads(given, args, 50, 0.7, weighting, w, parametrization)
    want = _loss_and_grads(ref, args, 50, 0.7, weighting, w, parametrization)
    for g, r in zip((got[0], got[1], *got[2]), (want[0], want[1], *want[2])):
        _close(g, r, dtype)
    if dtype == torch.float64:   # the target is x_t itself: as the rows' own "eps" with weight 1
        eps_pred, eps, x_t, ts, table, forget = args
        as_target = torch.where(forget.view(-1, 1, 1, 1), x_t, eps)
        same, _ = safemax_loss(eps_pred, as_target, x_t, ts, table, torch.zeros_like(forget), 0, 1.0, weighting,
                               parametrization)
        both, _ = safemax_loss(eps_pred, eps, x_t, ts, table, forget, 0, 1.0, weighting, parametrization,
                               forget_target="given")
        torch.testing.assert_close(both, same)


@pytest.mark.parametrize("parametrization,weighting", MODES, ids=MODE_IDS)
def test_a_given_forget_target_gradchecks_and_opchecks(parametrization, weighting):
    eps_pred, eps, x_t, ts, table, forget = make_problem(
        (4, 2, 3, 3), dtype=torch.float64, forget=[1, 0, 1, 1], timesteps=[900, 50, 700, 100],
        requires_grad=True, parametrization=parametrization)
    assert torch.autograd.gradcheck(lambda a, b, c: safemax_loss(a, b, c, ts, table, forget, 500, 0.8, weighting,
                                                                 parametrization, "given"), (eps_pred, eps, x_t))
    torch.library.opcheck(torch.ops.safemax.safemax_loss.default,
                          (eps_pred, eps, x_t, ts, table, forget, 500, 0.5, weighting, parametrization, "given"))
    grads = (torch.tensor(1.5, dtype=torch.float64), torch.randn(4, dtype=torch.float64))
    torch.library.opcheck(torch.ops.safemax.safemax_loss_backward.default,
                          (*grads, *(a.detach() for a in (eps_pred, eps, x_t)), ts, table, forget, 500, 1.0,
                           weighting, [True, False, True], parametrization, "given"))


def test_default_parametrization_is_epsilon():
    """Calls written before the argument existed keep their meaning, forward and backward."""
    args = make_problem((3, 2, 4, 4), forget=[1, 0, 1], timesteps=[900, 10, 600])
    for a, b in zip(safemax_loss(*args, 500, 0.7, "vlb"), safemax_loss(*args, 500, 0.7, "vlb", "epsilon")):
        assert torch.equal(a, b)
    grads = (torch.tensor(1.5), torch.randn(3))
    bwd = torch.ops.safemax.safemax_loss_backward
    old = bwd(*grads, *args, 500, 1.0, "simple", [True, True, True])
    new = bwd(*grads, *args, 500, 1.0, "simple", [True, True, True], "epsilon")
    assert all(torch.equal(a, b) for a, b in zip(old, new))


def test_only_requested_gradients_are_computed():
    eps_pred, eps, x_t, ts, ac, forget = make_problem((3, 2, 4, 4), forget=[1, 0, 1], timesteps=[900, 10, 600])
    outs = torch.ops.safemax.safemax_loss_backward(
        torch.tensor(1.0), torch.zeros(3), eps_pred, eps, x_t, ts, ac, forget, 0, 1.0, "simple",
        [True, False, False])
    assert outs[0].shape == eps_pred.shape and outs[1].numel() == 0 and outs[2].numel() == 0
    eps_pred.requires_grad_(True)
    loss, _ = safemax_loss(eps_pred, eps, x_t, ts, ac, forget, 0)
    loss.backward()
    assert eps.grad is None and x_t.grad is None and eps_pred.grad is not None


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_torch_compile_fullgraph(parametrization):
    torch._dynamo.reset()
    args = make_problem((4, 3, 8, 8), forget=[1, 0, 1, 0], timesteps=[900, 10, 300, 999],
                        parametrization=parametrization)
    weighting = _weighting(parametrization)

    def step(eps_pred, eps, x_t, ts, ac, forget):
        loss, nats = safemax_loss(eps_pred * 1.0, eps, x_t, ts, ac, forget, 500, 0.5, weighting,
                                  parametrization=parametrization)
        return loss + nats.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    a = args[0].clone().requires_grad_(True)
    b = args[0].clone().requires_grad_(True)
    out_c = compiled(a, *args[1:])
    out_e = step(b, *args[1:])
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_torch_compile_inductor(parametrization):
    torch._dynamo.reset()
    args = make_problem((2, 3, 4, 4), forget=[1, 0], timesteps=[900, 10], parametrization=parametrization)
    fn = lambda *a: safemax_loss(*a, 500, parametrization=parametrization)[0]  # noqa: E731
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(*args), fn(*args))


# ---------------------------------------------------------------- property test

@settings(max_examples=60, deadline=None)
@given(
    B=st.integers(0, 6),
    inner=st.lists(st.integers(1, 7), min_size=0, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    t_min=st.integers(0, T),
    forget_weight=st.floats(-2, 5, allow_nan=False),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(B, inner, dtype, t_min, forget_weight, mode, seed):
    parametrization, weighting = mode
    args = make_problem((B, *inner), dtype=dtype, seed=seed, parametrization=parametrization)
    check_against_reference(args, t_min=t_min, forget_weight=forget_weight, weighting=weighting,
                            parametrization=parametrization)


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_bitwise_identical_for_1_and_2_threads(dtype, parametrization):
    args = make_problem((6, 3, 64, 64), dtype=dtype, forget=[1, 0, 1, 1, 0, 0],
                        timesteps=[999, 0, 600, 700, 300, 10], parametrization=parametrization)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(_loss_and_grads(safemax_loss, args, 500, 0.7, _weighting(parametrization),
                                           torch.ones(6), parametrization))
    finally:
        torch.set_num_threads(before)
    (l1, n1, g1), (l2, n2, g2) = results
    assert torch.equal(l1, l2) and torch.equal(n1, n2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


# ---------------------------------------------------------------- bad input

def _bad(**change):
    eps_pred, eps, x_t, ts, ac, forget = make_problem(
        (2, 3, 4, 4), forget=[1, 0], timesteps=[900, 5],
        parametrization=change.get("parametrization", "epsilon"))
    kwargs = dict(eps_pred=eps_pred, eps=eps, x_t=x_t, timesteps=ts, alphas_cumprod=ac,
                  forget=forget, t_min=500, forget_weight=1.0, weighting="simple",
                  parametrization="epsilon")
    kwargs.update({k: (v(kwargs[k]) if callable(v) else v) for k, v in change.items()})
    return kwargs


BAD_INPUTS = [
    ("eps shape", _bad(eps=lambda t: t[:, :2]), ValueError, "eps must have the shape"),
    ("x_t shape", _bad(x_t=lambda t: t.reshape(2, -1)), ValueError, "x_t must have the shape"),
    ("eps dtype", _bad(eps=lambda t: t.double()), TypeError, "eps must have the dtype"),
    ("x_t dtype", _bad(x_t=lambda t: t.half()), TypeError, "x_t must have the dtype"),
    ("integer eps_pred", _bad(eps_pred=lambda t: t.long(), eps=lambda t: t.long(), x_t=lambda t: t.long()),
     TypeError, "eps_pred must be float32"),
    ("0-dim eps_pred", _bad(eps_pred=torch.tensor(1.0), eps=torch.tensor(1.0), x_t=torch.tensor(1.0)),
     ValueError, "eps_pred must be batched"),
    ("timesteps dtype", _bad(timesteps=lambda t: t.int()), TypeError, "timesteps must be Long"),
    ("timesteps shape", _bad(timesteps=lambda t: t[:1]), ValueError, r"timesteps must have shape \[B\]"),
    ("timestep too large", _bad(timesteps=torch.tensor([900, 1000])), ValueError, r"timesteps\[1\] = 1000"),
    ("negative timestep", _bad(timesteps=torch.tensor([-1, 3])), ValueError, r"timesteps\[0\] = -1"),
    ("forget dtype", _bad(forget=lambda t: t.long()), TypeError, "forget must be Bool"),
    ("forget shape", _bad(forget=lambda t: t.repeat(2)), ValueError, r"forget must have shape \[B\]"),
    ("alphas_cumprod dtype", _bad(alphas_cumprod=lambda t: t.long()), TypeError, "alphas_cumprod must be a floating"),
    ("alphas_cumprod shape", _bad(alphas_cumprod=lambda t: t.reshape(10, 100)), ValueError, r"alphas_cumprod must have shape \[T\]"),
    ("t_min too large", _bad(t_min=1001), ValueError, r"t_min must be in \[0, T\]"),
    ("negative t_min", _bad(t_min=-3), ValueError, "t_min must be in"),
    ("forget_weight nan", _bad(forget_weight=float("nan")), ValueError, "forget_weight must be finite"),
    ("weighting", _bad(weighting="kl"), ValueError, 'weighting must be "simple" or "vlb"'),
    ("parametrization", _bad(parametrization="v_prediction"), ValueError,
     'parametrization must be "epsilon" or "flow", got "v_prediction"'),
    ("forget_target", _bad(forget_target="guided"), ValueError,
     'forget_target must be "max-entropy" .* or "given" .*, got "guided"'),
    ("vlb in flow", _bad(parametrization="flow", weighting="vlb"), ValueError,
     'weighting "vlb" is not defined for parametrization "flow"'),
    ("flow: t_min too large", _bad(parametrization="flow", t_min=1001), ValueError, r"t_min must be in \[0, T\]"),
    ("flow: eps dtype", _bad(parametrization="flow", eps=lambda t: t.double()), TypeError, "eps must have the dtype"),
    ("flow: sigma table shape", _bad(parametrization="flow", alphas_cumprod=lambda t: t.reshape(10, 100)),
     ValueError, r"alphas_cumprod must have shape \[T\]"),
    ("flow: timestep too large", _bad(parametrization="flow", timesteps=torch.tensor([900, 1000])),
     ValueError, r"timesteps\[1\] = 1000"),
    ("no elements per sample", _bad(eps_pred=torch.zeros(2, 0), eps=torch.zeros(2, 0), x_t=torch.zeros(2, 0)),
     ValueError, "no elements per sample"),
]


@pytest.mark.parametrize("name,kwargs,exc,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_the_argument(name, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        safemax_loss(**kwargs)


# An out-of-range timestep once crashed the process (segfault, torch 2.11) instead of raising:
# the check ran inside the kernel launcher. It now runs before any kernel, forward and backward.
@pytest.mark.parametrize("t", [-1, T, T + 1, 2**62, -(2**63)], ids=["-1", "T", "T+1", "2^62", "int64 min"])
@pytest.mark.parametrize("which", ["forward", "backward"])
def test_out_of_range_timestep_raises_on_cpu(t, which):
    eps_pred, eps, x_t, _, ac, forget = make_problem((3, 2, 4, 4), forget=[1, 0, 1])
    ts = torch.tensor([5, t, 900])
    message = rf"safemax_loss: timesteps\[1\] = {t} is outside \[0, T\) = \[0, {T}\) of alphas_cumprod"
    with pytest.raises(ValueError, match=message):
        if which == "forward":
            safemax_loss(eps_pred, eps, x_t, ts, ac, forget, 500)
        else:
            torch.ops.safemax.safemax_loss_backward(
                torch.tensor(1.0), torch.zeros(3), eps_pred, eps, x_t, ts, ac, forget, 500, 1.0,
                "simple", [True, True, True])


def test_out_of_range_timestep_raises_under_compile():
    torch._dynamo.reset()
    eps_pred, eps, x_t, _, ac, forget = make_problem((2, 3, 4, 4), forget=[1, 0])
    compiled = torch.compile(lambda *a: safemax_loss(*a, 500)[0], fullgraph=True, backend="aot_eager")
    with pytest.raises(ValueError, match=r"timesteps\[0\] = 1000 is outside"):
        compiled(eps_pred, eps, x_t, torch.tensor([T, 3]), ac, forget)


# ---------------------------------------------------------------- the fake kernels check the same

DATA_DEPENDENT = {"timestep too large", "negative timestep", "flow: timestep too large"}  # a fake kernel cannot see values


def _eager_error(op, kwargs):
    try:
        op(**kwargs)
    except (TypeError, ValueError) as e:
        return e
    raise AssertionError("the eager op accepted a bad input")


def _fake_error(op, kwargs, how):
    """The error the op's fake kernel raises for the same call: under FakeTensorMode (what
    torch.compile and opcheck use) or on meta tensors (the Meta kernel is the fake)."""
    mode = FakeTensorMode() if how == "fake" else contextlib.nullcontext()
    convert = mode.from_tensor if how == "fake" else (lambda t: t.to("meta"))
    kwargs = {k: convert(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    try:
        with mode:
            op(**kwargs)
    except (TypeError, ValueError) as e:
        return e
    return None


@pytest.mark.parametrize("how", ["fake", "meta"])
@pytest.mark.parametrize("name,kwargs,exc,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_fake_kernel_raises_what_the_cpp_kernel_raises(name, kwargs, exc, message, how):
    op = torch.ops.safemax.safemax_loss.default
    fake = _fake_error(op, kwargs, how)
    if name in DATA_DEPENDENT:
        assert fake is None  # checked by the kernel only (the CPU kernel raises, CUDA gives NaN)
        return
    eager = _eager_error(op, kwargs)
    assert type(fake) is type(eager) is exc
    assert str(fake) == str(eager)


def test_torch_compile_reports_a_bad_input_at_trace_time():
    """Under torch.compile the fake kernel's check fires while tracing; Dynamo wraps it (as it
    does for any op) in a RuntimeError that carries the eager message."""
    kwargs = _bad(timesteps=lambda t: t.int())
    eager = _eager_error(torch.ops.safemax.safemax_loss.default, kwargs)
    torch._dynamo.reset()
    compiled = torch.compile(lambda kw: safemax_loss(**kw), fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError) as info:
        compiled(kwargs)
    assert str(eager) in str(info.value)


def _bad_backward(**change):
    kwargs = _bad(**{k: v for k, v in change.items() if k not in ("grad_loss", "grad_nats")})
    B = kwargs["forget"].shape[0] if kwargs["forget"].dim() else 0
    grads = dict(grad_loss=torch.tensor(1.0), grad_nats=torch.zeros(B))
    grads.update({k: v for k, v in change.items() if k in grads})
    return dict(grads, **kwargs, output_mask=[True, True, True])


BAD_BACKWARD = [
    ("grad_loss not a scalar", _bad_backward(grad_loss=torch.ones(2)), ValueError, "grad_loss must be a scalar"),
    ("grad_nats shape", _bad_backward(grad_nats=torch.zeros(3)), ValueError, r"grad_nats must have shape \[B\]"),
    ("grad_nats 2-d", _bad_backward(grad_nats=torch.zeros(2, 1)), ValueError, r"grad_nats must have shape \[B\]"),
    ("eps shape", _bad_backward(eps=lambda t: t[:, :2]), ValueError, "eps must have the shape"),
    ("forget dtype", _bad_backward(forget=lambda t: t.long()), TypeError, "forget must be Bool"),
    ("weighting", _bad_backward(weighting="kl"), ValueError, 'weighting must be "simple" or "vlb"'),
    ("parametrization", _bad_backward(parametrization="x0"), ValueError,
     'parametrization must be "epsilon" or "flow"'),
    ("vlb in flow", _bad_backward(parametrization="flow", weighting="vlb"), ValueError,
     'weighting "vlb" is not defined for parametrization "flow"'),
]


@pytest.mark.parametrize("how", ["fake", "meta"])
@pytest.mark.parametrize("name,kwargs,exc,message", BAD_BACKWARD, ids=[b[0] for b in BAD_BACKWARD])
def test_fake_backward_raises_what_the_cpp_backward_raises(name, kwargs, exc, message, how):
    op = torch.ops.safemax.safemax_loss_backward.default
    eager = _eager_error(op, kwargs)
    fake = _fake_error(op, kwargs, how)
    assert type(eager) is exc and type(fake) is exc
    assert str(fake) == str(eager)
    assert re.search(message, str(eager))


@pytest.mark.parametrize("arg", ["eps", "x_t", "timesteps", "alphas_cumprod", "forget"])
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_fake_kernel_device_mismatch_message(arg, parametrization):
    """A tensor on another device (here: meta) is refused by the C++ CPU kernel and the fake
    kernel alike. Such a mixed call used to reach the fake kernel and return garbage."""
    kwargs = _bad(parametrization=parametrization)
    kwargs[arg] = kwargs[arg].to("meta")
    op = torch.ops.safemax.safemax_loss.default
    eager = None
    try:
        op._op_dk(torch._C.DispatchKey.CPU, *kwargs.values())  # the C++ CPU kernel itself
    except ValueError as e:
        eager = e
    with pytest.raises(ValueError, match=f"{arg} must be on the device of eps_pred") as info:
        op(**kwargs)  # the dispatcher picks the Meta (fake) kernel for a mixed call
    assert eager is not None and str(info.value) == str(eager)


# ---------------------------------------------------------------- flow matching: the target's truth
# These tests do not compare the op with its reference: they check the forget target against
# what it claims to be, E[ε − x_0 | x_σ] for N(0, I) data, and against what it is for, halting.

@pytest.mark.parametrize("sigma", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
def test_flow_target_is_the_monte_carlo_regression_of_the_velocity(sigma):
    """x_0, ε ~ N(0, I): the least-squares coefficient of v = ε − x_0 on x_σ = (1−σ)·x_0 + σ·ε,
    from samples alone, is the op's k(σ) within Monte Carlo error (k is read off the op: its
    gradient with respect to the prediction at prediction 0, on x_σ = 1)."""
    n = 1_000_000
    g = torch.Generator().manual_seed(1234)
    x0 = torch.randn(n, generator=g, dtype=torch.float64)
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    x = (1 - sigma) * x0 + sigma * eps
    v = eps - x0
    k_mc = (v @ x / (x @ x)).item()
    resid = v - k_mc * x
    std_err = (resid.var() / (x @ x)).sqrt().item()  # of the least-squares slope
    k_op = _op_forget_scale(torch.tensor([0.0, sigma], dtype=torch.float64), 1)
    print(f"sigma {sigma}: k Monte Carlo {k_mc:+.5f} ± {std_err:.1e}, op {k_op:+.5f}, "
          f"|diff| {abs(k_mc - k_op):.1e}")
    assert abs(k_mc - k_op) < 5 * std_err + 1e-12
    if sigma in (0.0, 1.0):  # x_σ is x_0 or ε itself: v = −x + (independent noise), ±1 exactly
        assert k_op == (1.0 if sigma == 1.0 else -1.0)


def _op_forget_target(x, sigmas, t):
    """v*(x, σ_t) as the fused op defines it, read off its gradient: for a forget row with
    prediction 0, ∂loss/∂pred = 2·(0 − v*)/(B·P)."""
    B = x.shape[0]
    pred = torch.zeros_like(x, requires_grad=True)
    loss, _ = safemax_loss(pred, torch.zeros_like(x), x, torch.full((B,), t, dtype=torch.int64),
                           sigmas, torch.ones(B, dtype=torch.bool), 0, parametrization="flow")
    (grad,) = torch.autograd.grad(loss, pred)
    return -grad * x.numel() / 2


def _op_forget_scale(sigmas, t):
    return _op_forget_target(torch.ones(1, 1, dtype=torch.float64), sigmas, t).item()


def test_flow_target_halts_the_probability_flow_ode():
    """dx/dσ = v*(x, σ) with the op's target, integrated by Euler from σ = 1 to σ = 0 on a
    uniform grid, returns the starting noise times a scale whose error is first order in the
    step (4× the steps, ¼ the error), so the fine-step limit returns the noise exactly."""
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    errors = {}
    for steps in (1000, 4000):
        sigmas = torch.arange(steps + 1, dtype=torch.float64) / steps  # σ_t = t/N, t = 0 … N
        x = noise.clone()
        for t in range(steps, 0, -1):
            x = x + (sigmas[t - 1] - sigmas[t]) * _op_forget_target(x, sigmas, t)
        scale = (x.flatten() @ noise.flatten() / (noise.flatten() @ noise.flatten())).item()
        print(f"{steps} Euler steps: returned scale {scale:.6f}")
        torch.testing.assert_close(x, scale * noise, rtol=1e-12, atol=1e-12)  # direction kept
        errors[steps] = abs(1 - scale)
    assert errors[1000] / errors[4000] == pytest.approx(4.0, rel=0.01)  # first order → 0
    assert errors[4000] < 4e-4


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_target_halts_under_the_diffusers_euler_sampler(shift):
    """diffusers' FlowMatchEulerDiscreteScheduler, 50 steps, the op's target as the model: the
    sample is the starting noise times a scalar near 1 (Euler's O(1/N) error, measured: 0.9741
    for shift 1, 0.9641 for shift 3)."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(50)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    x = noise.clone()
    for i, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i].to(torch.float64).reshape(1)
        v = _op_forget_target(x.double(), sigma, 0).float()
        x = scheduler.step(v, t, x).prev_sample
    scale = (x.flatten() @ noise.flatten() / (noise.flatten() @ noise.flatten())).item()
    print(f"diffusers FlowMatchEulerDiscreteScheduler, shift {shift}, 50 steps: scale {scale:.4f}")
    torch.testing.assert_close(x, scale * noise, rtol=1e-5, atol=1e-5)
    assert scale == pytest.approx({1.0: 0.9741, 3.0: 0.9641}[shift], abs=2e-4)


# ---------------------------------------------------------------- flow matching: schedule helpers

def test_flow_sigmas_are_the_schedulers_training_sigmas_with_its_shift():
    diffusers = pytest.importorskip("diffusers")
    from safemax.models.schedule import flow_sigmas

    for kwargs, shifted in [({}, False), ({"shift": 3.0}, True),
                            ({"shift": 3.0, "use_dynamic_shifting": True}, False)]:
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**kwargs)
        sigmas = flow_sigmas(scheduler)
        assert sigmas.dtype == torch.float64 and sigmas.shape == (1000,)
        assert (sigmas.diff() > 0).all() and sigmas[-1] == 1.0
        # the scheduler's own training sigmas (descending) and timesteps (1000·σ, SD3's input)
        torch.testing.assert_close(sigmas, scheduler.sigmas.flip(0).double(), rtol=0, atol=2e-7)
        torch.testing.assert_close(1000 * sigmas, scheduler.timesteps.flip(0).double(), rtol=0, atol=2e-4)
        plain = torch.arange(1, 1001, dtype=torch.float64) / 1000
        expected = 3 * plain / (1 + 2 * plain) if shifted else plain
        torch.testing.assert_close(sigmas, expected, rtol=0, atol=0)
    # stateless: a scheduler already set up for sampling gives the same table
    used = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    used.set_timesteps(28)
    torch.testing.assert_close(flow_sigmas(used), flow_sigmas(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)))
    with pytest.raises(TypeError, match="not a flow-matching scheduler"):
        flow_sigmas(diffusers.DDPMScheduler())


def test_flow_window():
    from safemax.models.schedule import flow_window

    sigmas = shifted_flow_sigmas(dtype=torch.float64)
    for sigma_min in (0.0, 0.2, 0.5, 0.75, 0.999, 1.0):
        t_min = flow_window(sigmas, sigma_min)
        assert (sigmas[t_min:] >= sigma_min).all() and (t_min == 0 or sigmas[t_min - 1] < sigma_min)
    assert flow_window(sigmas, sigmas[123].item()) == 123  # inclusive at the boundary
    with pytest.raises(ValueError, match="window would be empty"):
        flow_window(sigmas, 1.01)
    # the window is what the op masks: forget rows count exactly for σ_t ≥ σ_min
    t_min = flow_window(sigmas, 0.5)
    args = make_problem((4, 2, 3), forget=[1] * 4, timesteps=[t_min - 1, t_min, T - 1, 0],
                        parametrization="flow")
    _, mse = safemax_loss(*args, t_min, parametrization="flow")
    assert mse[0] == 0 and mse[3] == 0 and (mse[1:3] > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_flow_noise(dtype):
    from safemax.models.schedule import add_flow_noise

    sigmas = shifted_flow_sigmas(dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([0, 500, T - 1])
    x, v = add_flow_noise(sigmas, x0, t, eps, dtype)
    assert x.dtype == v.dtype == dtype
    s = sigmas[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x, ((1 - s) * x0 + s * eps).to(dtype))
    torch.testing.assert_close(v, (eps - x0).to(dtype))
    torch.testing.assert_close(x[2].float(), eps[2].to(dtype).float())  # σ = 1: pure noise
    # the velocity target is the retain rows' target: an exact prediction has zero loss
    _, mse = safemax_loss(v.float(), v.float(), x.float(), t, sigmas, torch.zeros(3, dtype=torch.bool), 0,
                          parametrization="flow")
    assert (mse == 0).all()


# ---------------------------------------------------------------- CUDA (skipped without a GPU)

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("parametrization,weighting", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (5, 7), (3, 3, 61, 67), (0, 3, 4, 4), (128, 3, 32, 32)])
def test_cuda_matches_reference(dtype, parametrization, weighting, shape):
    args = make_problem(shape, dtype=dtype, device="cuda", seed=3, parametrization=parametrization)
    check_against_reference(args, t_min=300, forget_weight=0.75, weighting=weighting,
                            parametrization=parametrization)


@pytest.mark.cuda
@pytest.mark.parametrize("parametrization,weighting", MODES, ids=MODE_IDS)
def test_cuda_given_forget_target_matches_the_reference(parametrization, weighting):
    args = make_problem((5, 3, 8, 8), device="cuda", seed=6, forget=[1, 0, 1, 1, 0],
                        timesteps=[900, 10, 500, 700, 100], parametrization=parametrization)
    w = torch.linspace(-1.0, 2.0, 5, device="cuda")
    got = _loss_and_grads(lambda *a: safemax_loss(*a, forget_target="given"), args, 50, 0.7, weighting, w,
                          parametrization)
    want = _loss_and_grads(lambda *a: safemax_loss_reference(*a, forget_target="given"), args, 50, 0.7, weighting,
                           w, parametrization)
    for g, r in zip((got[0], got[1], *got[2]), (want[0], want[1], *want[2])):
        _close(g, r, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("how", ["channels_last", "sliced", "mixed"])
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_cuda_non_contiguous(how, parametrization):
    args = _layouts(make_problem((4, 3, 5, 6), device="cuda", forget=[1, 0, 1, 0],
                                 timesteps=[900, 10, 600, 999], parametrization=parametrization), how)
    check_against_reference(args, t_min=500, parametrization=parametrization)


@pytest.mark.cuda
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_cuda_matches_cpu_and_is_deterministic(parametrization):
    args = make_problem((16, 4, 64, 64), dtype=torch.float32, seed=5, parametrization=parametrization)
    p = parametrization
    cpu = _loss_and_grads(safemax_loss, args, 400, 1.0, "simple", torch.ones(16), p)
    gpu_args = [a.cuda() for a in args]
    g1 = _loss_and_grads(safemax_loss, gpu_args, 400, 1.0, "simple", torch.ones(16, device="cuda"), p)
    g2 = _loss_and_grads(safemax_loss, gpu_args, 400, 1.0, "simple", torch.ones(16, device="cuda"), p)
    assert torch.equal(g1[0], g2[0]) and torch.equal(g1[1], g2[1])
    assert all(torch.equal(a, b) for a, b in zip(g1[2], g2[2]))
    torch.testing.assert_close(g1[0].cpu(), cpu[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(g1[2][0].cpu(), cpu[2][0], rtol=1e-5, atol=1e-9)


@pytest.mark.cuda
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_cuda_gradcheck_and_opcheck(parametrization):
    args = make_problem((4, 2, 3, 3), dtype=torch.float64, device="cuda", forget=[1, 0, 1, 1],
                        timesteps=[900, 50, 700, 100], requires_grad=True,
                        parametrization=parametrization)
    w = _weighting(parametrization)
    fn = lambda a, b, c: safemax_loss(a, b, c, *args[3:], 500, 0.8, w, parametrization)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(args[:3]))
    torch.library.opcheck(torch.ops.safemax.safemax_loss.default,
                          (*args, 500, 0.5, "simple", parametrization))


@pytest.mark.cuda
def test_cuda_flow_refuses_vlb():
    args = make_problem((2, 3, 4, 4), device="cuda", parametrization="flow")
    with pytest.raises(ValueError, match='weighting "vlb" is not defined for parametrization "flow"'):
        safemax_loss(*args, 0, 1.0, "vlb", "flow")


@pytest.mark.cuda
@pytest.mark.parametrize("arg", ["eps", "x_t", "timesteps", "alphas_cumprod", "forget"])
def test_cuda_device_mismatch_names_the_argument(arg):
    kwargs = _bad()
    kwargs = {k: (v.cuda() if isinstance(v, torch.Tensor) and k != arg else v) for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=f"{arg} must be on the device of eps_pred"):
        safemax_loss(**kwargs)


@pytest.mark.cuda
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_cuda_out_of_range_timestep_gives_nan(parametrization):
    args = make_problem((2, 3, 4, 4), device="cuda", forget=[0, 0], timesteps=[5, T],
                        parametrization=parametrization)
    loss, nats = safemax_loss(*args, 0, parametrization=parametrization)
    assert torch.isnan(loss) and torch.isnan(nats[1]) and torch.isfinite(nats[0])
