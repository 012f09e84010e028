"""benchmarks/flow_digits.py (the flow-matching results page's figures), end to end with tiny
settings: it trains a rectified-flow UNet for 3 steps, measures, unlearns for 2 and writes its
three outputs."""
import json
import os
import subprocess
import sys

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
