"""Every results file says where it came from: commit, dirty tree, versions, machine."""
import json
import subprocess
from pathlib import Path

import torch

from safemax.evaluation import provenance
from safemax.evaluation.report import write_json

ROOT = Path(__file__).resolve().parent.parent


def test_write_json_records_the_commit_versions_and_machine(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)   # a checkout: the commit is known (an installed safemax finds it here)
    provenance.commit.cache_clear()
    write_json(str(tmp_path / "r.json"), dict(fa=0.0, settings=dict(lr=1e-4)))
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["fa"] == 0.0 and saved["settings"] == dict(lr=1e-4)
    p = saved["provenance"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert p["commit"] == head.stdout.strip() and isinstance(p["dirty"], bool)
    assert p["machine"]["torch"] == torch.__version__ and p["machine"]["threads"] >= 1 and p["diffusers"]
    write_json(str(tmp_path / "kept.json"), dict(provenance="recorded elsewhere"))   # never overwritten
    assert json.loads((tmp_path / "kept.json").read_text())["provenance"] == "recorded elsewhere"


def test_without_a_checkout_the_commit_is_unknown_not_guessed(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "SOURCE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    provenance.commit.cache_clear()
    monkeypatch.delenv("SAFEMAX_COMMIT", raising=False)
    try:
        assert provenance.commit() == dict(commit=None, dirty=None, checkout=None)
        provenance.commit.cache_clear()   # a tree copied without .git, its commit given by the caller
        monkeypatch.setenv("SAFEMAX_COMMIT", "abc123")
        assert provenance.commit() == dict(commit="abc123", dirty=None, checkout="$SAFEMAX_COMMIT")
    finally:
        provenance.commit.cache_clear()


def test_a_list_gets_its_provenance_in_a_sidecar_that_names_its_content(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    provenance.commit.cache_clear()
    path = str(tmp_path / "rows.json")
    write_json(path, [dict(rule="nats", stopped=70)])
    assert json.loads((tmp_path / "rows.json").read_text()) == [dict(rule="nats", stopped=70)]   # readers index it
    side = json.loads((tmp_path / "rows.provenance.json").read_text())
    assert side["describes"] == "rows.json" and side["sha256"] == provenance.digest(path)
    assert provenance.recorded(path) == side["provenance"] and "machine" in side["provenance"]
    (tmp_path / "rows.json").write_text("[]")   # written again without its sidecar: no record
    assert provenance.recorded(path) is None
    write_json(str(tmp_path / "r.json"), dict(fa=0.0))
    assert provenance.recorded(str(tmp_path / "r.json"))["machine"]["torch"] == torch.__version__


def test_a_benchmark_piece_records_its_provenance(tmp_path, monkeypatch):
    from safemax.harness.store import cached
    monkeypatch.chdir(ROOT)
    path = str(tmp_path / "piece.json")
    assert cached(path, lambda: dict(fa=1.0)) == dict(fa=1.0)
    again = cached(path, lambda: 1 / 0)   # read back, not made again
    assert again["fa"] == 1.0 and provenance.recorded(path) == again["provenance"]
