"""Rectified-flow models through the same Unlearner: a UNet2DModel trained with diffusers'
FlowMatchEulerDiscreteScheduler (velocity prediction, time input T·σ = scheduler.timesteps) forgets a class by
having its velocity pulled to the max-entropy v* = k(σ)·x_σ (the op's parametrization="flow")."""
import json
import types

import pytest
import torch
from problems import short_fit, tiny_data, tiny_unet

from safemax import Unlearner
from safemax.models.denoiser import FlowDenoiser, make_denoiser
from safemax.models.sampling import sample
from safemax.models.schedule import flow_sigmas

diffusers = pytest.importorskip("diffusers")


def flow_scheduler(shift=1.0, T=100):
    return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)


def k(sigma):
    return (2 * sigma - 1) / ((1 - sigma) ** 2 + sigma ** 2)


class Spy(torch.nn.Module):
    """Records the time input it is called with; predicts ``v_of(x, t)``."""

    def __init__(self, v_of):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.config = types.SimpleNamespace(in_channels=1, sample_size=8)
        self.v_of, self.times = v_of, []

    def forward(self, x, t, class_labels=None):
        self.times.append(t.clone())
        return types.SimpleNamespace(sample=self.v_of(x, t) + 0 * self.w)


def test_a_flow_scheduler_makes_a_flow_denoiser_with_the_sd3_time_convention():
    sched = flow_scheduler(shift=3.0)
    spy = Spy(lambda x, t: x)
    d = make_denoiser(spy, sched)
    assert isinstance(d, FlowDenoiser) and d.parametrization == "flow" and d.num_train_timesteps == 100
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 10, 50, 99])
    sigma = flow_sigmas(sched)[t].view(-1, 1, 1, 1)
    x_t, target = d.noisy(x0, t, eps)
    torch.testing.assert_close(x_t, ((1 - sigma) * x0 + sigma * eps).float())
    torch.testing.assert_close(target, (eps - x0).float())
    d.predict(x_t, t, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(spy.times[-1], (100 * sigma.flatten()).float())  # T·σ = scheduler.timesteps
    assert torch.isclose(spy.times[-1][-1], sched.timesteps.max())


def test_euler_sampling_of_the_max_entropy_velocity_returns_the_starting_noise():
    # The probability-flow ODE of v* = k(σ)·x maps the starting noise to itself; diffusers'
    # Euler with 50 steps returns it scaled by 0.974 (shift 1), every sample in its own direction.
    sched = flow_scheduler(T=1000)
    spy = Spy(lambda x, t: k(t.view(-1, 1, 1, 1) / 1000) * x)
    out = sample(spy, sched, torch.zeros(64, dtype=torch.long), num_inference_steps=50, seed=5)
    start = torch.randn((64, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    ratio = out.flatten(1).norm(dim=1) / start.flatten(1).norm(dim=1)
    assert ratio.min() > 0.96 and ratio.max() < 0.99
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), start.flatten(1))
    assert cos.min() > 1 - 1e-5


def forget_error(u, label, n=32, seed=0):
    """Mean squared distance of the class's velocity prediction to k(σ)·x_σ on noise inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    t = torch.randint(u.method.t_min, u.denoiser.num_train_timesteps, (n,), generator=g)
    sigma = u.denoiser.table[t].float().view(-1, 1, 1, 1)
    with torch.no_grad():
        v = u.denoiser.predict(x, t, torch.full((n,), label), model=u.unet)
    return (v - k(sigma) * x).square().mean().item()


def test_safemax_pulls_the_forget_velocity_to_the_max_entropy_target_and_keeps_the_rest():
    # The window σ ≥ 0.5 (k ∈ [0, 1]); over every σ the target also flips sign (k(0) = −1),
    # which this 1.2k-weight UNet learns only slowly (0.57 → 0.50 in 60 steps when written).
    retain, forget = tiny_data()
    u = Unlearner(tiny_unet(), flow_scheduler(), forget=[1], lr=3e-3, early_fraction=0.5)
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(16, 1, 8, 8, generator=g), torch.randint(50, 100, (16,), generator=g)

    def pred(label):
        with torch.no_grad():
            return u.denoiser.predict(x, t, torch.full((16,), label))

    forget0, kept0, before = pred(1), pred(2), forget_error(u, 1)
    history = u.fit(retain, forget, steps=30, batch_size=8, progress=False)
    assert {"forget_nats", "retain_nats"} <= history[-1].keys()
    assert forget_error(u, 1) < 0.3 * before  # 0.67 -> 0.15 when written
    moved, moved_kept = (pred(1) - forget0).square().mean(), (pred(2) - kept0).square().mean()
    assert moved_kept < 0.5 * moved, (moved, moved_kept)  # 0.04 vs 0.27 when written


@pytest.mark.parametrize("method", ["salun", "sa", "ga"])
def test_every_baseline_trains_a_flow_model(method):
    unet = tiny_unet()
    h, before = short_fit(unet, flow_scheduler(), method)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in h)
    assert any(not torch.equal(before[k_], v) for k_, v in unet.state_dict().items())


def test_data_free_flow_forgetting_and_the_saved_model_loads(tmp_path):
    retain, _ = tiny_data()
    u = Unlearner(tiny_unet(), flow_scheduler(shift=3.0), forget=[1], lr=1e-3, early_fraction=0.5)
    u.fit(retain, None, steps=2, batch_size=4, progress=False)
    assert u.forget_set.images.shape[1:] == (1, 8, 8)  # sampled with the Euler flow sampler
    u.save_pretrained(str(tmp_path))
    loaded = diffusers.UNet2DModel.from_pretrained(str(tmp_path))
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(str(tmp_path))
    assert sched.config.shift == 3.0
    for name, v in loaded.state_dict().items():
        torch.testing.assert_close(v, u.unet.state_dict()[name])
    info = json.loads((tmp_path / "safemax.json").read_text())
    assert info["method"] == "safemax" and info["t_min"] == 50
    assert sample(loaded, sched, torch.tensor([0, 1]), num_inference_steps=3).shape == (2, 1, 8, 8)


def test_the_window_by_noise_level_and_the_vlb_refusal():
    sched = flow_scheduler()
    sigmas = flow_sigmas(sched)
    sigma_min = 0.6
    u = Unlearner(tiny_unet(), sched, forget=[1], max_snr=((1 - sigma_min) / sigma_min) ** 2)
    t_min = u.method.t_min
    assert sigmas[t_min] >= sigma_min - 1e-12 > sigmas[t_min - 1]
    with pytest.raises(ValueError, match='weighting="vlb" is defined for DDPM-style'):
        Unlearner(tiny_unet(), sched, forget=[1], weighting="vlb")


# ------------------------------------------------------------------ flow_halt="still"

def test_a_still_flow_returns_its_starting_noise_exactly_for_any_steps_and_shift():
    """flow_halt="still"'s premise: the ODE target k(σ)·x, fitted exactly, returns the starting
    noise times 0.954 under Euler-28 at shift 1 and 0.936 at shift 3 (outside 0.95–1.05; docs/method.md);
    a zero velocity leaves every Euler step where it is, at any step count and shift."""
    from safemax.methods import SafeMax
    for shift, want in ((1.0, 0.954), (3.0, 0.936)):   # the ODE target, fitted exactly, under Euler-28
        out = sample(Spy(lambda x, t: k(t.view(-1, 1, 1, 1) / 1000) * x), flow_scheduler(shift, T=1000),
                     torch.zeros(8, dtype=torch.long), num_inference_steps=28, seed=5)
        start = torch.randn((8, 1, 8, 8), generator=torch.Generator().manual_seed(5))
        ratio = out.flatten(1).norm(dim=1) / start.flatten(1).norm(dim=1)
        assert (ratio - want).abs().max() < 1e-3, (shift, ratio)
    for shift, steps in ((1.0, 28), (3.0, 28), (3.0, 50), (1.0, 7)):
        out = sample(Spy(lambda x, t: 0 * x), flow_scheduler(shift, T=1000), torch.zeros(8, dtype=torch.long),
                     num_inference_steps=steps, seed=5)
        torch.testing.assert_close(out, torch.randn((8, 1, 8, 8), generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match='flow_halt="still" is the rectified-flow halting target'):
        Unlearner(tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=100), forget=[1],
                  method=SafeMax(flow_halt="still"))
    with pytest.raises(ValueError, match="flow_halt"):
        SafeMax(flow_halt="stop")


def test_still_rows_are_the_starting_noise_and_their_target_is_zero():
    """With flow_halt="still" the Gaussian forget rows' input is their own noise draw ε (what a
    still chain holds at every σ), and the loss is the op's with target 0 on every forget row:
    the mean squared velocity there, the teacher's prediction on the kept rows."""
    from safemax.methods import SafeMax
    from safemax.methods.base import denoising_batch
    from safemax.training.loop import fit_data
    retain, forget = tiny_data()
    u = Unlearner(tiny_unet(), flow_scheduler(), forget=[1], method=SafeMax(flow_halt="still", gaussian_fraction=0.5))
    data = fit_data(u, retain, forget, 8)
    state = u.generator.get_state()

    def again():
        u.generator.set_state(state)
        return data

    plain = denoising_batch(u, *reversed(again()), 8, gaussian_forget=4)   # (u, forget, retain)
    batch = u.method.draw(u, *again(), 8)
    assert torch.equal(batch.x_t[:4], batch.eps[:4])                  # the Gaussian rows: pure noise
    assert torch.equal(batch.x_t[4:], plain.x_t[4:]) and torch.equal(batch.eps, plain.eps)
    loss, _ = u.method.loss(u, *again(), 8)
    b = u.method.draw(u, *again(), 8)
    with torch.no_grad():
        pred = u.denoiser.predict(b.x_t, b.t, b.cond)
        teacher = u.denoiser.predict(b.x_t[8:], b.t[8:], b.cond[8:], model=u.method.teacher)
    expected = (pred[:8].square().mean(dim=(1, 2, 3)).sum() + (pred[8:] - teacher).square().mean(dim=(1, 2, 3)).sum()) / 16
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-7)
