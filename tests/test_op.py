"""The fused op against its pure-PyTorch spec (safemax.reference): values, gradients, layouts,
edge cases, torch.library/compile integration, determinism and error messages."""
import contextlib
import importlib.machinery
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

import safemax
from safemax import safemax_loss, safemax_loss_reference
from problems import T, TOL, linear_alphas_cumprod, make_problem

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _loss_and_grads(fn, args, t_min, forget_weight, weighting, nats_weights):
    """(loss, nats, grads of loss + Σ nats·nats_weights w.r.t. eps_pred, eps, x_t)."""
    inputs = [a.detach().clone().requires_grad_(True) for a in args[:3]]
    loss, nats = fn(*inputs, *args[3:], t_min, forget_weight, weighting)
    total = loss + (nats * nats_weights).sum()
    grads = torch.autograd.grad(total, inputs, allow_unused=True) if total.requires_grad else (None,) * 3
    return loss, nats, grads


def _close(actual, expected, dtype):
    tol = TOL[dtype]
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.detach().double().cpu(), expected.detach().double().cpu(),
                               rtol=tol["rtol"], atol=tol["atol"] + tol["rtol"] * scale)


def check_against_reference(args, t_min=T // 2, forget_weight=1.0, weighting="simple"):
    dtype = args[0].dtype
    nats_weights = torch.linspace(-1.0, 2.0, args[0].shape[0], device=args[0].device,
                                  dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    got = _loss_and_grads(safemax_loss, args, t_min, forget_weight, weighting, nats_weights)
    ref = _loss_and_grads(safemax_loss_reference, args, t_min, forget_weight, weighting, nats_weights)
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
    ext = safemax._extension._C
    assert ext.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), ext.__file__
    assert "cpu" in safemax.backends() and "cpu" in safemax.compiled_backends()
    assert safemax._extension.with_openmp()
    # The public entry point is the dispatcher op, not the Python reference...
    assert safemax.ops._forward is torch.ops.safemax.safemax_loss.default
    # ...and only the C++ kernel checks timesteps against T (the reference would IndexError).
    args = make_problem((2, 3), timesteps=[0, T])
    with pytest.raises(ValueError, match=r"timesteps\[1\] = 1000 is outside \[0, T\)"):
        safemax_loss(*args, 0)


# ---------------------------------------------------------------- values and gradients

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighting", ["simple", "vlb"])
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (5, 7), (3, 1, 5, 3), (2, 4097), (1, 3, 33, 65)])
def test_matches_reference(dtype, weighting, shape):
    args = make_problem(shape, dtype=dtype, seed=hash(shape) % 1000)
    check_against_reference(args, t_min=300, forget_weight=0.75, weighting=weighting)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_rows_span_many_blocks(dtype):
    # P = 3·61·67 = 12261 elements: three kernel blocks per row, the last one partial.
    check_against_reference(make_problem((3, 3, 61, 67), dtype=dtype, forget=[True, False, True],
                                         timesteps=[999, 5, 700]))


@pytest.mark.parametrize("forget_weight", [0.0, 1.0, 3.5, -0.5])
@pytest.mark.parametrize("weighting", ["simple", "vlb"])
def test_forget_weight(forget_weight, weighting):
    args = make_problem((6, 2, 4, 4), forget=[1, 0, 1, 1, 0, 1], timesteps=[999, 2, 600, 501, 7, 800])
    check_against_reference(args, t_min=500, forget_weight=forget_weight, weighting=weighting)


def test_forget_weight_zero_leaves_only_retain_rows():
    args = make_problem((4, 3, 4, 4), forget=[1, 0, 1, 0], timesteps=[900, 900, 900, 900])
    loss, nats = safemax_loss(*args, 0, forget_weight=0.0)
    retain_only, _ = safemax_loss(*args[:5], torch.zeros(4, dtype=torch.bool), 0)
    # Same retain rows, forget rows weighted 0: half the retain-only batch's mean per-row term.
    mse = (args[0] - args[1])[[1, 3]].square().flatten(1).mean(1)
    torch.testing.assert_close(loss, mse.sum() / 4)
    assert (nats[[0, 2]] > 0).all()  # forget rows still report their nats
    assert retain_only.item() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_timestep_boundaries(dtype):
    t_min = 400
    # every boundary, for forget rows (masked below t_min) and retain rows (never masked)
    ts = [0, t_min - 1, t_min, T - 1] * 2
    forget = [True] * 4 + [False] * 4
    args = make_problem((8, 2, 3, 3), dtype=dtype, forget=forget, timesteps=ts)
    loss, nats, _ = check_against_reference(args, t_min=t_min)
    assert nats[0] == 0 and nats[1] == 0  # forget rows with t < t_min are masked
    assert (nats[2:] > 0).all()


def test_target_is_max_entropy_prediction():
    """A forget row predicting exactly √(1−ᾱ_t)·x_t has zero loss; a retain row predicting ε too."""
    _, eps, x_t, ts, ac, _ = make_problem((2, 3, 4, 4), dtype=torch.float64, timesteps=[700, 300])
    forget = torch.tensor([True, False])
    pred = torch.stack([(1 - ac[700].double()).sqrt() * x_t[0], eps[1]])
    loss, nats = safemax_loss(pred, eps, x_t, ts, ac, forget, 0)
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


# ---------------------------------------------------------------- batches that are edge cases

@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype):
    args = make_problem((0, 3, 4, 4), dtype=dtype, requires_grad=True)
    loss, nats = safemax_loss(*args, 10)
    assert loss.item() == 0.0 and nats.shape == (0,)
    loss.backward()
    assert args[0].grad.shape == (0, 3, 4, 4) and args[2].grad.shape == (0, 3, 4, 4)


def test_all_forget_rows_masked():
    args = make_problem((5, 2, 4, 4), forget=[True] * 5, timesteps=[0, 1, 100, 498, 499])
    loss, nats, grads = check_against_reference(args, t_min=500)
    assert loss.item() == 0.0 and (nats == 0).all()
    assert all((g == 0).all() for g in grads)


def test_all_retain():
    args = make_problem((5, 2, 4, 4), forget=[False] * 5)
    loss, nats, grads = check_against_reference(args, t_min=T)
    assert (grads[2] == 0).all()  # x_t enters no retain row


def test_all_forget_active():
    args = make_problem((5, 2, 4, 4), forget=[True] * 5, timesteps=[999, 800, 600, 400, 0])
    loss, nats, grads = check_against_reference(args, t_min=0)
    assert (grads[1] == 0).all()  # eps enters no forget row


def test_nan_propagates_from_active_rows_only():
    args = list(make_problem((3, 2, 4, 4), forget=[True, False, True], timesteps=[100, 100, 900]))
    args[0] = args[0].clone()
    args[0][0, 0, 0, 0] = float("nan")  # row 0 is a forget row below t_min: masked
    loss, nats = safemax_loss(*args, 500)
    assert torch.isfinite(loss) and torch.isfinite(nats).all()
    args[0][2, 1, 1, 1] = float("inf")  # row 2 is active
    loss, nats = safemax_loss(*args, 500)
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
def test_non_contiguous_inputs(how, dtype):
    base = make_problem((4, 3, 5, 6), dtype=dtype, forget=[1, 0, 1, 0], timesteps=[900, 10, 600, 999])
    args = _layouts(base, how)
    assert not all(a.is_contiguous() for a in args[:3])
    got = check_against_reference(args, t_min=500)
    # Gradients are laid out as empty_like(input), which is what the fake kernel promises.
    for g, a in zip(got[2], args[:3]):
        assert g.stride() == torch.empty_like(a).stride()
    # ...and the numbers are the contiguous problem's.
    ref = safemax_loss(*base, 500)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=0)


# ---------------------------------------------------------------- autograd, torch.library, compile

@pytest.mark.parametrize("weighting", ["simple", "vlb"])
def test_gradcheck_float64(weighting):
    eps_pred, eps, x_t, ts, ac, forget = make_problem(
        (4, 2, 3, 3), dtype=torch.float64, forget=[1, 0, 1, 1], timesteps=[900, 50, 700, 100],
        requires_grad=True)

    def fn(eps_pred, eps, x_t):
        loss, nats = safemax_loss(eps_pred, eps, x_t, ts, ac.double(), forget, 500, 0.8, weighting)
        return loss, nats

    assert torch.autograd.gradcheck(fn, (eps_pred, eps, x_t))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighting", ["simple", "vlb"])
def test_opcheck(dtype, weighting):
    args = make_problem((4, 3, 4, 4), dtype=dtype, forget=[1, 0, 1, 0], timesteps=[900, 10, 100, 999],
                        requires_grad=True)
    torch.library.opcheck(torch.ops.safemax.safemax_loss.default, (*args, 500, 0.5, weighting))


def test_opcheck_backward_op():
    args = make_problem((3, 2, 4, 4), forget=[1, 0, 1], timesteps=[900, 10, 600])
    grads = (torch.tensor(1.5), torch.randn(3))
    torch.library.opcheck(torch.ops.safemax.safemax_loss_backward.default,
                          (*grads, *args, 500, 1.0, "simple", [True, False, True]))


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


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    args = make_problem((4, 3, 8, 8), forget=[1, 0, 1, 0], timesteps=[900, 10, 300, 999])

    def step(eps_pred, eps, x_t, ts, ac, forget):
        loss, nats = safemax_loss(eps_pred * 1.0, eps, x_t, ts, ac, forget, 500, 0.5, "vlb")
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


def test_torch_compile_inductor():
    torch._dynamo.reset()
    args = make_problem((2, 3, 4, 4), forget=[1, 0], timesteps=[900, 10])
    compiled = torch.compile(lambda *a: safemax_loss(*a, 500)[0], fullgraph=True)
    torch.testing.assert_close(compiled(*args), safemax_loss(*args, 500)[0])


# ---------------------------------------------------------------- property test

@settings(max_examples=60, deadline=None)
@given(
    B=st.integers(0, 6),
    inner=st.lists(st.integers(1, 7), min_size=0, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    t_min=st.integers(0, T),
    forget_weight=st.floats(-2, 5, allow_nan=False),
    weighting=st.sampled_from(["simple", "vlb"]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(B, inner, dtype, t_min, forget_weight, weighting, seed):
    args = make_problem((B, *inner), dtype=dtype, seed=seed)
    check_against_reference(args, t_min=t_min, forget_weight=forget_weight, weighting=weighting)


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_identical_for_1_and_2_threads(dtype):
    args = make_problem((6, 3, 64, 64), dtype=dtype, forget=[1, 0, 1, 1, 0, 0],
                        timesteps=[999, 0, 600, 700, 300, 10])
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(_loss_and_grads(safemax_loss, args, 500, 0.7, "vlb", torch.ones(6)))
    finally:
        torch.set_num_threads(before)
    (l1, n1, g1), (l2, n2, g2) = results
    assert torch.equal(l1, l2) and torch.equal(n1, n2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


# ---------------------------------------------------------------- bad input

def _bad(**change):
    eps_pred, eps, x_t, ts, ac, forget = make_problem((2, 3, 4, 4), forget=[1, 0], timesteps=[900, 5])
    kwargs = dict(eps_pred=eps_pred, eps=eps, x_t=x_t, timesteps=ts, alphas_cumprod=ac,
                  forget=forget, t_min=500, forget_weight=1.0, weighting="simple")
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

DATA_DEPENDENT = {"timestep too large", "negative timestep"}  # a fake kernel cannot see values


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
def test_fake_kernel_device_mismatch_message(arg):
    """A tensor on another device (here: meta) is refused by the C++ CPU kernel and the fake
    kernel alike. Such a mixed call used to reach the fake kernel and return garbage."""
    kwargs = _bad()
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


# ---------------------------------------------------------------- CUDA (skipped without a GPU)

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighting", ["simple", "vlb"])
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (5, 7), (3, 3, 61, 67), (0, 3, 4, 4), (128, 3, 32, 32)])
def test_cuda_matches_reference(dtype, weighting, shape):
    args = make_problem(shape, dtype=dtype, device="cuda", seed=3)
    check_against_reference(args, t_min=300, forget_weight=0.75, weighting=weighting)


@pytest.mark.cuda
@pytest.mark.parametrize("how", ["channels_last", "sliced", "mixed"])
def test_cuda_non_contiguous(how):
    args = _layouts(make_problem((4, 3, 5, 6), device="cuda", forget=[1, 0, 1, 0],
                                 timesteps=[900, 10, 600, 999]), how)
    check_against_reference(args, t_min=500)


@pytest.mark.cuda
def test_cuda_matches_cpu_and_is_deterministic():
    args = make_problem((16, 4, 64, 64), dtype=torch.float32, seed=5)
    cpu = _loss_and_grads(safemax_loss, args, 400, 1.0, "simple", torch.ones(16))
    gpu_args = [a.cuda() for a in args]
    g1 = _loss_and_grads(safemax_loss, gpu_args, 400, 1.0, "simple", torch.ones(16, device="cuda"))
    g2 = _loss_and_grads(safemax_loss, gpu_args, 400, 1.0, "simple", torch.ones(16, device="cuda"))
    assert torch.equal(g1[0], g2[0]) and torch.equal(g1[1], g2[1])
    assert all(torch.equal(a, b) for a, b in zip(g1[2], g2[2]))
    torch.testing.assert_close(g1[0].cpu(), cpu[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(g1[2][0].cpu(), cpu[2][0], rtol=1e-5, atol=1e-9)


@pytest.mark.cuda
def test_cuda_gradcheck_and_opcheck():
    args = make_problem((4, 2, 3, 3), dtype=torch.float64, device="cuda", forget=[1, 0, 1, 1],
                        timesteps=[900, 50, 700, 100], requires_grad=True)
    fn = lambda a, b, c: safemax_loss(a, b, c, *args[3:], 500, 0.8, "vlb")  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(args[:3]))
    torch.library.opcheck(torch.ops.safemax.safemax_loss.default, (*args, 500, 0.5, "simple"))


@pytest.mark.cuda
@pytest.mark.parametrize("arg", ["eps", "x_t", "timesteps", "alphas_cumprod", "forget"])
def test_cuda_device_mismatch_names_the_argument(arg):
    kwargs = _bad()
    kwargs = {k: (v.cuda() if isinstance(v, torch.Tensor) and k != arg else v) for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=f"{arg} must be on the device of eps_pred"):
        safemax_loss(**kwargs)


@pytest.mark.cuda
def test_cuda_out_of_range_timestep_gives_nan():
    args = make_problem((2, 3, 4, 4), device="cuda", forget=[0, 0], timesteps=[5, T])
    loss, nats = safemax_loss(*args, 0)
    assert torch.isnan(loss) and torch.isnan(nats[1]) and torch.isfinite(nats[0])
