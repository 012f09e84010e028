"""Bad input, tried as a new user would, on every command that takes a model: one line on
stderr saying what to do, exit status 2, never a traceback."""
import json

import pytest
import torch

from safemax.cli import cli

pytest.importorskip("diffusers")

MODEL_COMMANDS = {   # each command with the rest of a valid command line; {model} is the bad model
    "unlearn": ["unlearn", "--model", "{model}", "--forget", "1", "--out", "{out}"],
    "sample": ["sample", "--model", "{model}", "--label", "1", "--out", "{out}/s.png"],
    "evaluate": ["evaluate", "--model", "{model}", "--forget", "1"],
    "probe": ["probe", "--model", "{model}", "--forget", "1", "--out", "{out}"],
}


def bad_models(tmp_path) -> dict:
    """``{what: (folder, what the line must say)}``: the folders a user may point --model at by mistake."""
    empty = tmp_path / "empty"
    empty.mkdir()
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    text_unet = tmp_path / "text-unet"
    text_unet.mkdir()
    (text_unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    torn = tmp_path / "torn"   # a config and a weights file diffusers cannot read
    torn.mkdir()
    (torn / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 16}))
    (torn / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 16)
    return {"missing": (tmp_path / "nope", "neither an embedded model"),
            "no config": (empty, "no config.json in"),
            "no weights": (weightless, "no .safetensors weights"),
            "another model class": (text_unet, "describes a UNet2DConditionModel"),
            "not JSON": (broken, "is not a diffusers config"),
            "unreadable weights": (torn, "diffusers cannot load the UNet")}


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_every_command_tells_a_bad_model_folder_in_one_line(command, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SAFEMAX_TRACEBACK", raising=False)
    for what, (folder, said) in bad_models(tmp_path).items():
        argv = [a.format(model=folder, out=tmp_path / "out") for a in MODEL_COMMANDS[command]]
        assert cli(argv) == 2, what
        err = capsys.readouterr().err
        first, *rest = err.strip().splitlines()
        assert first.startswith("safemax: error: ") and said in first, (what, err)
        assert rest == ["(SAFEMAX_TRACEBACK=1 shows where it was raised)"] and "Traceback" not in err, what


def test_evaluate_and_probe_tell_a_class_out_of_range_in_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("SAFEMAX_TRACEBACK", raising=False)
    assert cli(["evaluate", "--model", "digits", "--forget", "10"]) == 2
    assert "--forget [10]: the digits classes are 0..9" in capsys.readouterr().err
    assert cli(["probe", "--model", "digits", "--forget", "-1", "--out", str(tmp_path)]) == 2
    assert "--forget -1: the digits classes are 0..9" in capsys.readouterr().err


def test_a_saved_model_still_loads(tmp_path):
    """The checks refuse only what cannot load: a folder UNet2DModel.save_pretrained wrote passes."""
    from diffusers import UNet2DModel

    from safemax.cli.loading import load_unet_and_scheduler
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8,),
                       down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), layers_per_block=1,
                       norm_num_groups=4, num_class_embeds=3)
    unet.save_pretrained(tmp_path / "u")
    loaded, scheduler = load_unet_and_scheduler(str(tmp_path / "u"))
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), loaded.state_dict().values()))
