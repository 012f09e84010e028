"""FSDP2 through ``accelerate launch --config_file benchmarks/accelerate-configs/fsdp.yaml``: 2 CPU
processes (gloo) on the tiny UNet train sharded — the model, Adam's state and SAFEMax's teacher
each half per process, to the byte benchmarks/memory_accounting.py computes — and give the
single-process result with the same global batch (with clipping, gradient checkpointing, partly
frozen models; bf16 near it); a sharded fit resumes sharded and in one process;
``save_pretrained`` writes the full model once; what cannot run sharded is refused.

Accelerate 1.16 runs an FSDP config on CPU processes as plain DDP (it switches to FSDP on
GPU-family devices only); the worker switches its state to FSDP on CPU (``parallel_worker.
fsdp_on_cpu``), and ``test_accelerate_runs_an_fsdp_config_on_cpu_as_ddp_which_is_refused`` keeps
that finding checked. The GPU check's ``fsdp`` part runs this file on a GPU machine, where
``test_one_sharded_gpu_process_equals_a_plain_gpu_fit`` launches Accelerate's own FSDP on CUDA.
"""
import json
import os
import shutil
import sys
from types import SimpleNamespace

import parallel_worker
import pytest
import torch
from problems import tiny_unet
from test_parallel import assert_same_fit, launch, result

import safemax

pytest.importorskip("accelerate")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import memory_accounting  # noqa: E402

CONFIG = os.path.join(ROOT, "benchmarks", "accelerate-configs", "fsdp.yaml")
# the tiny UNet2DModel names no blocks (_no_split_modules): its resnets are the FSDP units
WRAP = ("--fsdp_transformer_layer_cls_to_wrap", "ResnetBlock2D")
ON_CPU = {parallel_worker.FSDP_ON_CPU: "1"}


def launch_fsdp(*args, processes=2):
    return launch(*args, processes=processes, config=CONFIG, options=WRAP, env=ON_CPU)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    parallel_worker.run(str(out), 4)
    return result(out)


def test_two_sharded_processes_equal_one_with_the_same_global_batch(single, tmp_path):
    log = launch_fsdp(tmp_path / "two", 4)
    two = result(tmp_path / "two")
    run = two[1]
    assert run["world"] == 2 and run["sharded"] and not single[1]["sharded"]
    # the main process holds about half of the model, its teacher and Adam's state: to the byte what
    # benchmarks/memory_accounting.py computes of the first of two shards (dim 0 split in ceil(n/2) rows)
    sharded = memory_accounting.fsdp_side(tiny_unet(), 2)
    for part, key in (("model", "weights_bytes"), ("teacher", "teacher_bytes"), ("adam", "adam_bytes")):
        share, nbytes = run["held"][part]
        assert 0.5 <= share < 0.51 and nbytes == sharded[key], (part, run["held"], sharded)
    assert_same_fit(single, two)
    assert log.count(" 0/4 [") == 1, "only the main process shows progress"
    saved = json.loads((tmp_path / "two" / "model" / "config.json").read_text())
    assert saved["_class_name"] == "UNet2DModel"   # the model's own class, not FSDP's subclass
    assert two[0].keys() == single[0].keys()   # full weights, every one


def test_a_sharded_fit_resumes_sharded_and_in_one_process(single, tmp_path):
    ckpt = tmp_path / "ckpt"
    launch_fsdp(tmp_path / "first", 2, ckpt)   # two sharded processes, steps 1-2, a checkpoint each step
    assert sorted(os.listdir(ckpt)) == ["checkpoint.safetensors"], "one writer, no torn files"
    shutil.copytree(ckpt, tmp_path / "ckpt-one")
    launch_fsdp(tmp_path / "rest", 4, ckpt)   # resumed sharded: steps 3-4
    assert_same_fit(single, result(tmp_path / "rest"))
    parallel_worker.run(str(tmp_path / "one"), 4, str(tmp_path / "ckpt-one"))   # resumed in one process
    assert_same_fit(single, result(tmp_path / "one"))


def test_clipping_checkpointing_and_partly_frozen_models_under_fsdp(tmp_path):
    # gradient ascent clips the gradient norm at 1 (a norm over the shards); checkpointing recomputes
    # each block's activations inside its FSDP unit; train="cross-attention" and ESD-x train some of
    # a text-conditional UNet's weights, frozen ones beside them in the same units (ESD-x samples
    # its x_t with the sharded model itself, forwards without a backward)
    methods = ("ga", "checkpointed", "cross-attention", "esd-x")
    launch_fsdp(tmp_path / "two", 3, "-", ",".join(methods))
    for m in methods:
        parallel_worker.run(str(tmp_path / "one" / m), 3, method=m)
        assert_same_fit(result(tmp_path / "one" / m), result(tmp_path / "two" / m))


def test_bf16_under_fsdp_runs_near_the_single_process_bf16_fit(tmp_path):
    # Accelerate's FSDP bf16 policy gathers the weights and reduces the gradients in bf16 (DDP
    # reduces float32 gradients): not the same numbers, so the losses are compared, to 1%
    launch(tmp_path / "two", 3, "-", "bf16", config=CONFIG, options=(*WRAP, "--mixed_precision", "bf16"),
           env=ON_CPU)
    parallel_worker.run(str(tmp_path / "one"), 3, method="bf16")
    one, two = result(tmp_path / "one")[1], result(tmp_path / "two")[1]
    assert two["sharded"] and two["held"]["teacher"][0] < 0.51
    assert [r["loss"] for r in two["history"]] == pytest.approx([r["loss"] for r in one["history"]], rel=1e-2)


def test_accelerate_runs_an_fsdp_config_on_cpu_as_ddp_which_is_refused(tmp_path):
    log = launch(tmp_path / "x", 1, processes=2, config=CONFIG, options=WRAP, ok=False)
    assert "the launch asks for FSDP, but Accelerate runs these processes as MULTI_CPU on cpu" in log


def fsdp_accelerator(version=2, activation_checkpointing=False):
    """What ``sharding.check`` reads of an FSDP accelerator."""
    from accelerate.utils import DistributedType
    plugin = SimpleNamespace(activation_checkpointing=activation_checkpointing)
    return SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=version == 2,
                           state=SimpleNamespace(fsdp_plugin=plugin))


@pytest.mark.parametrize("method, match", [
    ("salun", "'salun' cannot run under FSDP: its saliency mask"),
    ("sa", "'sa' cannot run under FSDP: its Fisher"),
    ("safemax-robust", "'safemax-robust' cannot run under FSDP: its simulated attack")])
def test_methods_that_read_whole_weights_are_refused(method, match):
    from safemax.methods import make_method
    from safemax.training import sharding

    with pytest.raises(ValueError, match=match + r".*with DDP \(accelerate launch --multi_gpu\) — as a LoRA fit"):
        sharding.check(fsdp_accelerator(), make_method(method), None, "all")
    sharding.check(None, make_method(method), None, "all")   # without FSDP: nothing to refuse


def test_what_else_cannot_shard_is_refused_with_what_to_do():
    from safemax.methods import make_method
    from safemax.training import sharding

    method = make_method("safemax")
    sharding.check(fsdp_accelerator(), method, None, "all")   # SAFEMax runs sharded
    with pytest.raises(ValueError, match="LoRA is not sharded.*launch it with DDP"):
        sharding.check(fsdp_accelerator(), method, object(), "all")   # (any LoRA config)
    with pytest.raises(ValueError, match='train="class-embedding".*with DDP or on a single GPU'):
        sharding.check(fsdp_accelerator(), method, None, "class-embedding")
    with pytest.raises(ValueError, match="FSDP1 is not supported: set fsdp_version: 2"):
        sharding.check(fsdp_accelerator(version=1), method, None, "all")
    with pytest.raises(ValueError, match="gradient_checkpointing=True"):
        sharding.check(fsdp_accelerator(activation_checkpointing=True), method, None, "all")


# not marked cuda: the GPU check runs it in its opt-in part fsdp, not among the default cuda tests
@pytest.mark.skipif(not (torch.cuda.is_available() and "cuda" in safemax.backends()),
                    reason="needs a CUDA device and safemax's CUDA kernels")
def test_one_sharded_gpu_process_equals_a_plain_gpu_fit(tmp_path):
    # Accelerate's own FSDP (no switch): one process on the GPU over NCCL, steps 1-2 and then
    # resumed for 3-4, against the plain fit on the same GPU. One rank holds whole shards: this
    # proves the CUDA path (fully_shard, the teacher's units, gathering, resume), not the split,
    # which the CPU tests above prove
    for steps in (2, 4):
        launch(tmp_path / "fsdp", steps, tmp_path / "ckpt", processes=1, config=CONFIG, options=WRAP, gpu=True)
    parallel_worker.run(str(tmp_path / "plain"), 4, device="cuda")
    run = result(tmp_path / "fsdp")
    assert run[1]["sharded"] and run[1]["world"] == 1
    assert_same_fit(result(tmp_path / "plain"), run)
