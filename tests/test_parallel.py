"""Data parallelism through ``accelerate launch``: 2 CPU processes (gloo) on the tiny UNet give
the single-process result with the same global batch; a checkpoint resumes across process counts;
only the main process writes and reports."""
import json
import os
import socket
import subprocess
import sys
import tempfile

import parallel_worker
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("accelerate")
WORKER = os.path.join(os.path.dirname(__file__), "parallel_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args, processes=2, module=False, config=None, options=(), env=None, gpu=False, ok=True):
    """``accelerate launch`` the worker (or ``-m`` a module) with 2 CPU processes — DDP, or what
    the ``config`` file says, with launch ``options`` over it; returns stderr (``ok=False``: a
    launch expected to fail, its stderr)."""
    # CPU processes over gloo, also on a GPU machine (one GPU cannot host two ranks); gpu=True: not
    cpu = {} if gpu else {"CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "1"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", **cpu, **(env or {})}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           *(["--config_file", str(config)] if config else ["--multi_gpu"]),
           "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *options,
           *(["-m"] if module else [WORKER]), *map(str, args)]
    # run outside the checkout, so that `-m safemax` is the installed (compiled) package
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                          cwd=tempfile.gettempdir())
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done.stderr


def result(out):
    with open(os.path.join(out, "run.json")) as f:
        run = json.load(f)
    return load_file(os.path.join(out, "model", "diffusion_pytorch_model.safetensors")), run


def assert_same_fit(a, b):
    (wa, ra), (wb, rb) = a, b
    assert [r["step"] for r in ra["history"]] == [r["step"] for r in rb["history"]]
    for x, y in zip(ra["history"], rb["history"]):
        assert x.keys() == y.keys()
        for k in x.keys() - {"step", "seconds"}:
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), (x["step"], k)
    # Adam divides by √v: a weight whose gradient is ~0 (attention key biases, an entry of a class
    # embedding) can move by a good part of a step on rounding alone — one entry of 128 in the class
    # embedding came out 0.105·lr apart on an AMD EPYC. So the weights agree to a tenth of a step
    # but for at most one in a thousand, and none is more than two steps per step apart.
    lr, steps = parallel_worker.LR, len(ra["history"])
    off = total = 0
    for k in wa:
        d = (wa[k] - wb[k]).abs()
        assert d.max() <= 2 * steps * lr, (k, d.max().item())
        off, total = off + int((d > 0.1 * lr).sum()), total + d.numel()
    assert off <= max(1, total // 1000), f"{off} of {total} weights more than a tenth of a step apart"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    parallel_worker.run(str(out), 4)
    return result(out)


def test_two_processes_equal_one_with_the_same_global_batch(single, tmp_path):
    log = launch(tmp_path / "two", 4)
    two = result(tmp_path / "two")
    assert two[1]["world"] == 2 and single[1]["world"] == 1
    assert_same_fit(single, two)
    assert log.count(" 0/4 [") == 1, "only the main process shows progress"  # one bar opened


def test_a_baseline_with_a_prepared_mask_equals_its_single_process_run(tmp_path):
    # SalUn prepares its saliency mask before DDP wraps the model, on every process alike
    parallel_worker.run(str(tmp_path / "one"), 3, method="salun")
    launch(tmp_path / "two", 3, "-", "salun")
    assert_same_fit(result(tmp_path / "one"), result(tmp_path / "two"))


def test_kept_contrast_equals_its_single_process_run(tmp_path):
    # its rows ride in the step's one student forward, as DDP wants (one forward per backward),
    # and pair forget and retain rows within each process's shard as in the whole batch
    parallel_worker.run(str(tmp_path / "one"), 3, method="kept-contrast")
    launch(tmp_path / "two", 3, "-", "kept-contrast")
    assert_same_fit(result(tmp_path / "one"), result(tmp_path / "two"))


def test_checkpoint_resumes_across_process_counts(single, tmp_path):
    ckpt = tmp_path / "ckpt"
    launch(tmp_path / "first", 2, ckpt)  # two processes, steps 1-2, checkpoint every step
    assert sorted(os.listdir(ckpt)) == ["checkpoint.safetensors"], "one writer, no torn files"
    parallel_worker.run(str(tmp_path / "rest"), 4, str(ckpt))  # one process, steps 3-4
    assert_same_fit(single, result(tmp_path / "rest"))


def test_the_command_line_runs_under_accelerate_launch(tmp_path):
    out = tmp_path / "no3"
    launch("safemax", "unlearn", "--forget", "3", "--steps", "2", "--batch-size", "4",
           "--out", out, "--device", "cpu", module=True)
    info = json.loads((out / "safemax.json").read_text())
    assert info["steps"] == 2 and (out / "diffusion_pytorch_model.safetensors").exists()


def test_shards_partition_each_block_of_the_global_batch():
    from types import SimpleNamespace

    from safemax.training.parallel import Shard

    x = torch.arange(12)  # forget rows 0-5, retain rows 6-11
    shards = [Shard(SimpleNamespace(process_index=r, num_processes=3)) for r in range(3)]
    parts = [s(x, parts=2).tolist() for s in shards]
    assert parts == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]
    assert sorted(sum(parts, [])) == x.tolist()
    assert Shard(None)(x) is x
    with pytest.raises(ValueError, match="batch_size 4 does not split evenly over 3 processes"):
        shards[0].check(4)


def test_mixed_precision_arguments():
    from safemax.training.parallel import make_accelerator

    assert make_accelerator(None, None) is None and make_accelerator(None, "no") is None
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='needs a GPU.*use "bf16"'):
            make_accelerator(None, "fp16")
    with pytest.raises(ValueError, match="mixed_precision must be"):
        make_accelerator(None, "fp8")
