"""benchmarks/flow_digits.py (the flow-matching results page's figures), end to end with tiny
settings: it trains a rectified-flow UNet for 3 steps, measures, unlearns for 2 and writes its
three outputs; and the zoo's flow model (``load_unet("flow-digits")``) with its recorded halt."""
import json
import os
import subprocess
import sys

import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "flow_digits.py")


def test_the_flow_benchmark_runs_end_to_end(tmp_path):
    # one thread: the batches are tiny, and two threads on a busy 2-core machine take 2-5x longer
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path), "--train-steps", "3",
                           "--steps", "2", "--n", "5", "--flow-halt", "still", "--gaussian-fraction", "0.5"], capture_output=True, text=True, timeout=600,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert {"before", "after", "base_model", "unlearn_seconds", "train_steps", "command"} <= result.keys()
    for when in ("before", "after"):
        assert {"fa", "forget_not_a_digit", "retain_acc", "forget_pixel_mean",
                "forget_pixel_std", "forget_std_by_sampler"} <= result[when].keys()
        assert set(result[when]["forget_std_by_sampler"]) == {"euler28_shift1", "euler50_shift1", "euler28_shift3", "euler50_shift3"}
    assert result["train_steps"] == 3 and len(result["base_model"]["per_class"]) == 10
    assert result["flow_halt"] == "still" and result["gaussian_fraction"] == 0.5
    assert result["before"]["frechet"] > 0 and result["after"]["frechet"] > 0   # the kept digits' Fréchet
    assert (tmp_path / "results.md").exists() and (tmp_path / "samples.png").exists()
    model = tmp_path / "model"
    # a second fit of the same model and digit reuses the original's measurement (kept in the model's folder)
    assert (model / "before-digit3-n5.pt").exists()
    done = subprocess.run([sys.executable, SCRIPT, "--model", str(model), "--out", str(tmp_path / "second"),
                           "--steps", "1", "--n", "5"], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    second = json.loads((tmp_path / "second" / "results.json").read_text())
    assert second["before"] == result["before"] and second["base_model"] == result["base_model"]
    assert (model / "config.json").exists() and (model / "scheduler_config.json").exists()
    # benchmarks/flow_halt_probe.py on the model just trained: SAFEMax, then k_eff on the halted path
    probe = os.path.join(os.path.dirname(SCRIPT), "flow_halt_probe.py")
    for halt, target in (("ode", "k·x"), ("still", "0")):
        done = subprocess.run([sys.executable, probe, "--model", str(model), "--steps", "1", "--flow-halt", halt,
                               "--gaussian-fraction", "0.5", "--out", str(tmp_path / "probe.md")],
                              capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        table = (tmp_path / "probe.md").read_text()
        assert f"| σ | target k(σ) | k_eff on the halted path | MSE(v, {target}) on the halted path |" in table
        assert table.count("\n| 0.") + table.count("\n| 1.") == 8 and "Probed at commit " in table
        if halt == "still":   # the target is 0 at every σ
            assert (tmp_path / "unlearned" / "config.json").exists()   # flow_digits.py kept its unlearned model
            done = subprocess.run([sys.executable, probe, "--unlearned", str(tmp_path / "unlearned"), "--flow-halt",
                                   "still", "--out", str(tmp_path / "again.md")], capture_output=True, text=True,
                                  timeout=600, env=env)
            assert done.returncode == 0, done.stderr[-2000:]
            assert all(line.split("|")[2].strip() == "+0.000" for line in table.splitlines() if line.startswith("| 0."))


# ---------------------------------------------------------------- the zoo's flow model

def test_the_zoo_ships_the_flow_digits_model_with_its_own_sampler_and_halt():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from safemax.harness.defaults import defaults, method_settings
    from safemax.zoo import DigitClassifier, load_classifier, load_unet, model_info
    info = model_info("flow-digits")
    unet, sched = load_unet("flow-digits")
    assert isinstance(sched, FlowMatchEulerDiscreteScheduler) and sched.config.shift == 1.0 and info.flow
    assert unet.config.sample_size == 16 and next(unet.parameters()).dtype == torch.float32
    # the weights every figure of docs/results/flow-matching.md was measured on (float32), and small
    size = sum(os.path.getsize(os.path.join(info.unet_dir, f)) for f in os.listdir(info.unet_dir))
    assert size <= 5 * 2**20
    assert isinstance(load_classifier("flow-digits"), DigitClassifier) and info.data == "digits"
    # its halt is recorded as its default, and every SAFEMax run on it takes it
    own = defaults("flow-digits")
    assert (own["flow_halt"], own["gaussian_fraction"], own["steps"], own["lr"]) == ("still", 0.5, 300, 1e-4)
    assert method_settings("flow-digits", "safemax")[1] == dict(gaussian_fraction=0.5, flow_halt="still")
    assert method_settings("flow-digits", "salun")[1] == {}   # (a baseline: its own settings)
    assert defaults("digits")["flow_halt"] == "ode"
    # the base model draws its digits: Euler-28 samples, judged by the digits' classifier
    labels = torch.arange(10).repeat_interleave(2)
    from safemax.evaluation.metrics import classify
    from safemax.models.sampling import sample
    x = sample(unet, sched, labels, num_inference_steps=28, seed=0)
    assert (classify(load_classifier("flow-digits"), x).argmax(1) == labels).float().mean() >= 0.8


def test_the_demo_runs_the_flow_model_with_its_halt(tmp_path):
    from safemax.cli import main
    out = tmp_path / "demo"
    assert main(["demo", "--dataset", "flow-digits", "--steps", "2", "--batch-size", "8", "--quick",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (report["model"], report["flow_halt"], report["gaussian_fraction"]) == ("flow-digits", "still", 0.5)
    assert "Samples: Euler 5 steps" in (out / "report.md").read_text()
    info = json.loads((out / "unet" / "safemax.json").read_text())
    assert info["flow_halt"] == "still"   # the unlearned model says how it was made


def test_a_flow_model_folder_loads_with_the_scheduler_it_names(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from safemax.cli.loading import dataset_for, load_unet_and_scheduler
    from safemax.zoo import load_unet
    unet, sched = load_unet("flow-digits")
    unet.save_pretrained(tmp_path)
    sched.save_pretrained(tmp_path)
    unet, loaded = load_unet_and_scheduler(str(tmp_path))
    assert isinstance(loaded, FlowMatchEulerDiscreteScheduler)   # not a DDPM read from a flow's config
    assert dataset_for(str(tmp_path), unet) == "digits"   # the digits' classifier measures both digits models
