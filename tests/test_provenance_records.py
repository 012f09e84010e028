"""Every results file under benchmarks/results/ records where it came from — its own provenance
(``write_json``) or, written before results recorded one, what git history holds of it
(benchmarks/backfill_provenance.py) — so a result cannot land without one; and the backfill
writes only what git holds, once.

What counts as a results file is ``backfill_provenance.results_files``: every JSON file there that
git tracks, or would (a new result not yet committed counts), except sidecars and a saved
diffusers model's own config files (diffusers reads them; the model's training.json is its
record). What git ignores is left out: a comparison's run under way (``methods/*.partial/``,
its checkpoint and curve, removed when the run ends; not a result) and a folder a running
benchmark writes into until it is done. The finished runs' caches (``methods/*.json``) are
committed results of a sweep, and are checked."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from safemax.evaluation.provenance import recorded

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import backfill_provenance as backfill  # noqa: E402

SHA = re.compile(r"[0-9a-f]{7,40}")
HAS_GIT = shutil.which("git") is not None and (ROOT / ".git").exists()


def check_record(path: str, record):
    assert record is not None, f"{path}: no provenance (write it with safemax.evaluation.report.write_json)"
    if record.get("source") == backfill.SOURCE:   # from git history: what git holds, nothing more
        assert SHA.fullmatch(record["added_in"]) and SHA.fullmatch(record["last_changed_in"]), path
        assert record["dirty"] is None and "machine" not in record, path
    else:
        assert isinstance(record.get("commit"), str) and SHA.fullmatch(record["commit"]), \
            f"{path}: its provenance names no commit: {record.get('commit')!r}"
        assert "machine" in record and "dirty" in record, path


@pytest.mark.skipif(not HAS_GIT, reason="needs the git checkout (the results files are listed by git)")
def test_every_results_file_records_its_provenance():
    files = backfill.results_files(str(ROOT))
    assert len(files) > 200, "the results files were not found"
    for path in files:
        check_record(path, recorded(str(ROOT / path)))


@pytest.mark.skipif(not HAS_GIT, reason="needs the git checkout")
def test_the_documented_commands_are_still_on_their_pages():
    pages = {}
    for path in backfill.results_files(str(ROOT)):
        backfill.commands(str(ROOT), path, pages)   # raises where a page no longer has its command


def git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_backfill_records_what_git_holds_and_only_once(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    results = root / "benchmarks" / "results" / "run"
    results.mkdir(parents=True)
    (root / "docs").mkdir()
    (root / ".gitignore").write_text("benchmarks/results/**/*.partial/\n")
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@t")
    git(root, "config", "user.name", "t")
    (root / "README.md").write_text("x\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "before")
    (results / "r.json").write_text(json.dumps(dict(fa=0.0, rows=[1, 2]), indent=2))
    (results / "rows.json").write_text(json.dumps([dict(step=5)]))
    (results / "own.json").write_text(json.dumps(dict(fa=1.0, provenance=dict(commit="abc1234", dirty=False, machine={}))))
    (results / "m.partial").mkdir()
    (results / "m.partial" / "curve.json").write_text("{}")    # a run under way: ignored
    (root / "docs" / "page.md").write_text("Run it:\n\n    python run.py \\\n        --out benchmarks/results/run\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "results")
    added = git(root, "rev-parse", "HEAD")
    (results / "r.json").write_text(json.dumps(dict(fa=0.5, rows=[1, 2]), indent=2))
    git(root, "commit", "-q", "-am", "re-measured")
    changed, before = git(root, "rev-parse", "HEAD"), git(root, "rev-parse", "HEAD^")
    monkeypatch.setattr(backfill, "COMMANDS", {"run": [("docs/page.md", "python run.py --out benchmarks/results/run")]})

    done = backfill.backfill(str(root))
    assert sorted(done) == [("benchmarks/results/run/r.json", "in place"),
                            ("benchmarks/results/run/rows.json", "sidecar")]
    r = json.loads((results / "r.json").read_text())
    assert r["fa"] == 0.5 and r["rows"] == [1, 2]
    p = r["provenance"]
    assert p == dict(source=backfill.SOURCE, added_in=added, added_on=p["added_on"], last_changed_in=changed,
                     last_changed_on=p["last_changed_on"], measured_at_or_before=before, dirty=None,
                     commands=[dict(command="python run.py --out benchmarks/results/run", quoted_from="docs/page.md")])
    assert (results / "r.json").read_text().startswith('{\n  "fa": 0.5')   # its own layout
    assert json.loads((results / "rows.json").read_text()) == [dict(step=5)]   # a list stays a list
    assert recorded(str(results / "rows.json"))["added_in"] == added
    assert json.loads((results / "own.json").read_text())["provenance"]["commit"] == "abc1234"
    for path in backfill.results_files(str(root)):
        check_record(path, recorded(str(root / path)))
    assert backfill.backfill(str(root)) == []   # once

    monkeypatch.setattr(backfill, "COMMANDS", {"run": [("docs/page.md", "python run.py --out elsewhere")]})
    (results / "new.json").write_text("{}")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "new")
    with pytest.raises(RuntimeError, match="is not in docs/page.md"):   # never a command the page lacks
        backfill.backfill(str(root))
    os.remove(results / "new.json")
