"""Give every results file under benchmarks/results/ that records no provenance the record git
history holds — never more than it holds.

Results written before ``write_json`` recorded the commit, versions and machine say nothing of
where they came from. What is known of each is in git: the commit that added the file at its
path and the one that last changed it, with their dates. The figures as they stand were committed
in ``last_changed_in``, so they were measured on a tree no later than that one; the latest commit
strictly before it, ``measured_at_or_before`` (its first parent), is the last commit the run's
code can be named by — the run's tree may also have held changes that ``last_changed_in`` itself
committed, so whether it was dirty is unknown (``"dirty": null``); how much earlier it ran, git
does not say. The versions and the machine are not known either, and are not written. Where the
docs give the command that wrote the folder (``COMMANDS``: quoted from the page, and checked
against it each run), it is recorded as well, since most of these files hold only part of their
settings.

A JSON object gets the record as its ``provenance`` entry, written back in the file's own layout
(indent, final newline: only the entry is added). A list (its readers index it: docs/check_figures.py,
the scripts that append rows) is left as it is, and the record goes to its sidecar
``<name>.provenance.json``, which names the list's sha256 (``safemax.evaluation.provenance``:
a list written again without a new sidecar is seen to have none). Files that already have a record
are left alone, so a second run changes nothing.

Not results, and skipped: a saved diffusers model's own config files (``config.json``,
``scheduler_config.json`` beside its weights: diffusers reads them; the model folder's
``training.json`` is its record), sidecars, and what git ignores (a comparison's run under way in
``methods/*.partial/``, or a folder a running benchmark writes into).

    python benchmarks/backfill_provenance.py              # write the records
    python benchmarks/backfill_provenance.py --dry-run    # say what it would write
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = "benchmarks/results"
SOURCE = "git history (written before results recorded their own provenance)"
MODEL_CONFIGS = ("config.json", "scheduler_config.json", "model_index.json")
SIDECAR = ".provenance.json"

# Where the docs give the command that wrote a folder: {folder or file under benchmarks/results/
# (the longest that holds the file wins): [(page, command[, the page's words])]}: the command as
# the page has it, or, where the page gives it in words (options added to a command given before),
# the command they make and the words, which are recorded beside it. What is quoted is checked
# against the page (backticks, line continuations and runs of spaces aside) before anything is
# written.
D = "docs/results/"
COMMANDS = {
    "class-embedding": [(D + "class-embedding.md", "python benchmarks/class_embedding.py --out benchmarks/results/class-embedding")],
    "classes-digits": [(D + "classes.md", "python benchmarks/classes.py --model digits --out benchmarks/results/classes-digits")],
    "classes-fashion-mnist": [(D + "classes.md", "python benchmarks/classes.py --model fashion-mnist --out benchmarks/results/classes-fashion-mnist")],
    "classes-fashion-mnist-200steps": [(D + "classes.md", "python benchmarks/classes.py --model fashion-mnist --classes 0 --seeds --steps 200 --curve-every 20 --out benchmarks/results/classes-fashion-mnist-200steps")],
    "classes-fashion-mnist-gaussian0.5": [(D + "halting.md", "python benchmarks/classes.py --model fashion-mnist --classes 3 --seeds --steps 200 --lr 1e-4 --gaussian-fraction 0.5 --curve-every 20 --out benchmarks/results/classes-fashion-mnist-gaussian0.5")],
    "classes-fashion-mnist-lr1e-4": [(D + "classes.md", "python benchmarks/classes.py --model fashion-mnist --steps 200 --lr 1e-4 --curve-every 20 --out benchmarks/results/classes-fashion-mnist-lr1e-4")],
    "compare": [(D + "compare.md", "safemax compare --out compare")],
    "compare-attacks": [(D + "compare.md", "safemax compare --forget 3 --eval-every 500 --attacks weak strong long lora inversion --out benchmarks/results/compare-attacks")],
    "compare-lr1e-4": [(D + "compare.md", "safemax compare --methods salun:retain_weight=1 safemax --lr 1e-4 --out compare-lr1e-4")],
    "concept-digits": [(D + "concepts.md", "python benchmarks/concept_digits.py --out benchmarks/results/concept-digits")],
    "concept-digits-lr1e-4": [(D + "concepts.md", "python benchmarks/concept_digits.py --model benchmarks/results/concept-digits/model --lr 1e-4 --out benchmarks/results/concept-digits-lr1e-4",
                               "then the two variants with --model benchmarks/results/concept-digits/model --out …")],
    "concept-digits-tau0.5": [(D + "concepts.md", "python benchmarks/concept_digits.py --model benchmarks/results/concept-digits/model --early-fraction 0.5 --out benchmarks/results/concept-digits-tau0.5",
                               "then the two variants with --model benchmarks/results/concept-digits/model --out …")],
    "demo": [("docs/tutorials/getting-started.md", "safemax demo")],
    "demo-fashion-mnist": [(D + "embedded-model.md", "safemax demo --dataset fashion-mnist --forget 0 --out benchmarks/results/demo-fashion-mnist")],
    "demo-fashion-mnist-real": [(D + "embedded-model.md", "safemax demo --dataset fashion-mnist --forget 0 --gaussian-fraction 0 --out benchmarks/results/demo-fashion-mnist-real",
                                 "benchmarks/results/demo-fashion-mnist-real (--gaussian-fraction 0)")],
    "demo-fashion-mnist-lr5e-4": [(D + "embedded-model.md", "safemax demo --dataset fashion-mnist --forget 0 --lr 5e-4 --steps 100 --gaussian-fraction 0 --out benchmarks/results/demo-fashion-mnist-lr5e-4",
                                   "benchmarks/results/demo-fashion-mnist-lr5e-4 (--lr 5e-4 --steps 100 --gaussian-fraction 0)")],
    "first-steps": [(D + "first-steps.md", "python benchmarks/first_steps.py --out benchmarks/results/first-steps")],
    "first-steps-anchor": [(D + "first-steps.md", "python benchmarks/first_steps.py --ablation-classes --variants default contrast anchor2 anchor4 --classes 5 --out benchmarks/results/first-steps-anchor")],
    "first-steps-optimisers": [(D + "first-steps.md", "python benchmarks/first_steps.py --ablation-classes --variants default fast-row warm-rows sgd0.01 --classes 5 --at 1 2 3 5 10 15 20 21 22 23 25 30 40 60 --out benchmarks/results/first-steps-optimisers")],
    "flow-digits": [(D + "flow-matching.md", "OMP_NUM_THREADS=1 python benchmarks/flow_digits.py --out benchmarks/results/flow-digits")],
    "flow-digits-lr5e-4": [(D + "flow-matching.md", "OMP_NUM_THREADS=1 python benchmarks/flow_digits.py --model benchmarks/results/flow-digits/model --out benchmarks/results/flow-digits-lr5e-4 --lr 5e-4")],
    "flow-digits-300steps": [(D + "flow-matching.md", "OMP_NUM_THREADS=1 python benchmarks/flow_digits.py --model benchmarks/results/flow-digits/model --out benchmarks/results/flow-digits-300steps --steps 300")],
    "flow-digits-noise0.5": [(D + "flow-matching.md", "python benchmarks/flow_digits.py --model benchmarks/results/flow-digits/model --out benchmarks/results/flow-digits-noise0.5 --noise-forget 0.5")],
    "gpu-h200": [(D + "memory.md", "bash benchmarks/gpu_check.sh (its memory part: benchmarks/memory.py --device cuda --models sd --sd-latent 64 --sd-batch 2 --measure-steps 5)")],
    "halting": [(D + "halting.md", "python benchmarks/halting.py --digits 3 7 --settings real gaussian:0.5 gaussian:0.75 --out benchmarks/results/halting"),
                (D + "halting.md", "python benchmarks/halting.py --digits 3 7 --seed 1 --settings real gaussian:0.5 gaussian:0.75 --out benchmarks/results/halting"),
                (D + "halting.md", "python benchmarks/halting.py --digits 3 --settings gaussian:0.1@0.1 gaussian:0.25@0.1 gaussian:0.5@0.1 --out benchmarks/results/halting"),
                (D + "halting.md", "python benchmarks/halting.py --digits 3 7 --settings gaussian:0.75+0.25 --out benchmarks/results/halting"),
                (D + "halting.md", "python benchmarks/halting.py --digits 3 --settings gaussian:0.5+0.25 --out benchmarks/results/halting")],
    "halting-fashion-mnist": [(D + "halting.md", "python benchmarks/halting.py --model fashion-mnist --digits 0 --lr 1e-4 --steps 200 --settings real gaussian:0.5 data-free:1.0 --out benchmarks/results/halting-fashion-mnist")],
    "memory": [(D + "memory.md", "python benchmarks/memory.py --out benchmarks/results/memory")],
    "memory-large/weight_side.json": [(D + "memory.md", "python benchmarks/memory_accounting.py --out benchmarks/results/memory-large")],
    "memory-large/cpu": [(D + "memory.md", 'export OMP_NUM_THREADS=1 OUT=benchmarks/results/memory-large/cpu # the 2 cores are shared M="python benchmarks/memory.py --append --out $OUT"')],
    "memory-large/cpu-1024": [(D + "memory.md", 'M="python benchmarks/memory.py --append --out benchmarks/results/memory-large/cpu-1024 --mmap-threshold 131072 --latent 128 --lora-rank 16 --weights bf16"')],
    "probes-digits": [(D + "probes.md", "python benchmarks/probes.py --methods safemax halted salun sa safemax-gaussian --out benchmarks/results/probes-digits")],
    "probes-digits-robust": [(D + "probes.md", "python benchmarks/probes.py --methods safemax-robust --out benchmarks/results/probes-digits-robust")],
    "probes-digits-retrain": [(D + "probes.md", "python benchmarks/probes.py --methods retrain --retrained benchmarks/results/retrain-digits/unet-without-3 --out benchmarks/results/probes-digits-retrain")],
    "retain-dip": [(D + "retain-dip.md", "python benchmarks/retain_dip.py --out benchmarks/results/retain-dip")],
    "retain-dip/kept-contrast4-rows0.25": [(D + "retain-dip.md", "python benchmarks/retain_dip.py --variants kept-contrast4 kept-contrast8 kept-contrast4-rows0.25 --out benchmarks/results/retain-dip")],
    "retain-dip/kept-contrast8": [(D + "retain-dip.md", "python benchmarks/retain_dip.py --variants kept-contrast4 kept-contrast8 kept-contrast4-rows0.25 --out benchmarks/results/retain-dip")],
    "retain-dip/kept-contrast4": [(D + "retain-dip.md", "python benchmarks/retain_dip.py --variants kept-contrast4 kept-contrast8 kept-contrast4-rows0.25 --out benchmarks/results/retain-dip"),
                                  (D + "retain-dip.md", "python benchmarks/retain_dip.py --classes 1 2 4 6 7 8 9 --variants warmup0 kept-contrast4 --out benchmarks/results/retain-dip")],
    "retain-dip/warmup0": [(D + "retain-dip.md", "python benchmarks/retain_dip.py --out benchmarks/results/retain-dip"),
                           (D + "retain-dip.md", "python benchmarks/retain_dip.py --classes 1 2 4 6 7 8 9 --variants warmup0 kept-contrast4 --out benchmarks/results/retain-dip")],
    "retrain-digits/every-attack.json": [(D + "robust.md", "python benchmarks/robust_attack.py --methods safemax --seed 0 1 2 --attacks weak strong long lora inversion --name every-attack --out benchmarks/results/retrain-digits"),
                                         (D + "robust.md", "python benchmarks/robust_attack.py --methods retrain --retrained benchmarks/results/retrain-digits/unet-without-3 --seed 0 1 2 --attacks weak strong long lora inversion --name every-attack --out benchmarks/results/retrain-digits")],
    "retrain-digits/unet-without-3": [(D + "robust.md", "python -m safemax.zoo.train --only unet --exclude-class 3 --out D")],
    "retrain-fashion-mnist/every-attack.json": [(D + "robust.md", "python benchmarks/robust_attack.py --model fashion-mnist --forget 0 --methods safemax safemax-robust salun:retain_weight=1,steps=200 sa:steps=200 --retrained benchmarks/results/retrain-fashion-mnist/unet-without-0 --seed 0 1 2 --attacks weak strong long lora inversion --name every-attack --out benchmarks/results/retrain-fashion-mnist")],
    "retrain-fashion-mnist/unet-without-0": [(D + "robust.md", "python -m safemax.zoo.train --dataset fashion-mnist --only unet --exclude-class 0 --out D")],
    "retrain-fashion-mnist/unet-without-0-evaluate.json": [(D + "robust.md", "safemax evaluate --model benchmarks/results/retrain-fashion-mnist/unet-without-0 --dataset fashion-mnist --forget 0 --n-forget 100 --n-per-class 30")],
    "robust-digits/robust.json": [(D + "robust.md", "python benchmarks/robust_attack.py --out benchmarks/results/robust-digits")],
    "robust-digits/robust-attack_radius=0.001.json": [(D + "robust.md", "python benchmarks/robust_attack.py --methods safemax-robust --settings attack_radius=0.001 --out benchmarks/results/robust-digits",
                                                       "python benchmarks/robust_attack.py --out benchmarks/results/robust-digits (and --methods safemax-robust --settings attack_radius=0.001 for the second row)")],
    "robust-digits/robust-attacked_retain_weight=1.json": [(D + "robust.md", "python benchmarks/robust_attack.py --methods safemax-robust --settings attacked_retain_weight=1 --attacks weak strong long lora inversion --out benchmarks/results/robust-digits")],
    "robust-digits/robust-attack_radius=2e-4,attacked_retain_weight=1.json": [(D + "robust.md", "python benchmarks/robust_attack.py --methods safemax-robust --settings attack_radius=2e-4,attacked_retain_weight=1 --attacks weak strong long lora inversion --out benchmarks/results/robust-digits")],
    "robust-digits/safemax-every-attack.json": [(D + "robust.md", "python benchmarks/robust_attack.py --methods safemax --attacks weak strong long lora inversion --out /tmp/r # (kept as benchmarks/results/robust-digits/safemax-every-attack.json)")],
    "robust-digits/digit-7.json": [(D + "robust.md", "python benchmarks/robust_attack.py --forget 7 --methods safemax safemax-robust --seed 0 --attacks weak strong long lora inversion --name digit-7 --out benchmarks/results/robust-digits")],
    "step-cost": [(D + "step-cost.md", "PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python benchmarks/step_cost.py --out benchmarks/results/step-cost"),
                  (D + "step-cost.md", "PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python benchmarks/step_cost.py --phases 12 --out benchmarks/results/step-cost")],
    "step-cost-rows": [(D + "step-cost.md", "OMP_NUM_THREADS=1 python benchmarks/step_cost.py --reps 20 --out benchmarks/results/step-cost-rows")],
    "step-cost-kept-contrast": [(D + "retain-dip.md", "python benchmarks/step_cost.py --reps 30 --out benchmarks/results/step-cost-kept-contrast")],
    "step-cost-kept-contrast-batched": [(D + "retain-dip.md", "python benchmarks/step_cost.py --reps 30 --trainers safemax kept-contrast kept-contrast-separate --out benchmarks/results/step-cost-kept-contrast-batched")],
    "step-cost-fashion-mnist": [(D + "retain-dip.md", "OMP_NUM_THREADS=1 python benchmarks/step_cost.py --model fashion-mnist --trainers safemax kept-contrast --reps 30 --out benchmarks/results/step-cost-fashion-mnist")],
    "stopping-digits": [(D + "stopping.md", "python benchmarks/stopping.py benchmarks/results/classes-digits --out benchmarks/results/stopping-digits")],
    "stopping-fashion-mnist": [(D + "stopping.md", "python benchmarks/stopping.py benchmarks/results/classes-fashion-mnist --out benchmarks/results/stopping-fashion-mnist")],
    "stopping-fashion-mnist-lr1e-4": [(D + "stopping.md", "python benchmarks/stopping.py benchmarks/results/classes-fashion-mnist-lr1e-4 --out benchmarks/results/stopping-fashion-mnist-lr1e-4")],
    "stopping-held-out": [(D + "stopping.md", "python benchmarks/stopping.py benchmarks/results/classes-digits benchmarks/results/classes-fashion-mnist-lr1e-4 --choose-on digits:0-4 --out benchmarks/results/stopping-held-out")],
    "stopping-kept-contrast": [(D + "stopping.md", "python benchmarks/stopping.py benchmarks/results/stopping-kept-contrast/default benchmarks/results/stopping-kept-contrast/kept-contrast4 --out benchmarks/results/stopping-kept-contrast")],
    "stopping-kept-contrast/default": [(D + "stopping.md", "python benchmarks/classes.py --model digits --classes 3 5 --steps 200 --curve-every 25 --n-forget 100 --n-per-class 30 --seeds ${@:2} --out benchmarks/results/stopping-kept-contrast/$1")],
    "stopping-kept-contrast/kept-contrast4": [(D + "stopping.md", "python benchmarks/classes.py --model digits --classes 3 5 --steps 200 --curve-every 25 --n-forget 100 --n-per-class 30 --seeds ${@:2} --out benchmarks/results/stopping-kept-contrast/$1")],
    "stopping-retain-dip": [(D + "stopping.md", "python benchmarks/stopping.py benchmarks/results/retain-dip/warmup0 benchmarks/results/retain-dip/kept-contrast4 --out benchmarks/results/stopping-retain-dip")],
    "tau-sweep": [(D + "early-fraction.md", "python benchmarks/tau_sweep.py --out tau-sweep")],
    "tuned-fashion-mnist": [(D + "tuned-baselines.md", "python benchmarks/tune_baselines.py --model fashion-mnist --status --out benchmarks/results/tuned-fashion-mnist"),
                            (D + "index.md", "python benchmarks/tune_baselines.py --model fashion-mnist --attacks weak strong long lora inversion --out benchmarks/results/tuned-fashion-mnist")],
}


def flat(text: str) -> str:
    """A page's words as a command is matched against them: backticks, line continuations and
    runs of whitespace aside."""
    return re.sub(r"\s+", " ", text.replace("\\\n", " ").replace("`", "")).strip()


def git(root: str, *args) -> str:
    done = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def results_files(root: str = ROOT) -> list:
    """The JSON results files under benchmarks/results/ (paths from ``root``): those git tracks
    and the new ones it does not ignore; not sidecars, not a saved model's config files."""
    listed = git(root, "ls-files", "--cached", "--others", "--exclude-standard", "--", RESULTS).splitlines()
    out = []
    for path in sorted(set(listed)):
        folder, name = os.path.split(path)
        if not name.endswith(".json") or name.endswith(SIDECAR) or not os.path.isfile(os.path.join(root, path)):
            continue
        if name in MODEL_CONFIGS and any(f.endswith(".safetensors") for f in os.listdir(os.path.join(root, folder))):
            continue
        out.append(path)
    return out


def history(root: str, path: str) -> dict:
    """What git knows of ``path``: the commit that added it there (renames not followed: git's
    guess would tie near-identical results files to each other), the one that last changed it,
    their dates, and the last commit before that one."""
    added = git(root, "log", "--no-renames", "--diff-filter=A", "--format=%H %cI", "--", path).splitlines()
    last = git(root, "log", "-1", "--no-renames", "--format=%H %cI %P", "--", path).split()
    if not added or not last:
        raise RuntimeError(f"{path}: not in git history (commit it first; its record is its own provenance)")
    added_in, added_on = added[-1].split()   # the first time it was added at this path
    return dict(source=SOURCE, added_in=added_in, added_on=added_on, last_changed_in=last[0], last_changed_on=last[1],
                measured_at_or_before=last[2] if len(last) > 2 else None, dirty=None)


def commands(root: str, path: str, pages: dict = None) -> list:
    """The documented commands of the folder that holds ``path`` (the longest key of COMMANDS it
    is under), each checked against its page."""
    rel = os.path.relpath(path, RESULTS)
    keys = [k for k in COMMANDS if rel == k or rel.startswith(k + "/")]
    if not keys:
        return []
    pages = {} if pages is None else pages
    out = []
    for page, command, *words in COMMANDS[max(keys, key=len)]:
        if page not in pages:
            with open(os.path.join(root, page), encoding="utf-8") as f:
                pages[page] = flat(f.read())
        quoted = words[0] if words else command
        if flat(quoted) not in pages[page]:
            raise RuntimeError(f"{path}: {quoted!r} is not in {page} (the page changed? quote it as it is)")
        out.append(dict(command=command, quoted_from=page, **({"as_the_page_says": quoted} if words else {})))
    return out


def layout(text: str, data):
    """``(indent, final newline)`` that write ``data`` back as ``text`` is, or None."""
    for indent in (2, 1, None, 4):
        for end in ("", "\n"):
            if json.dumps(data, indent=indent) + end == text:
                return indent, end
    return None


def backfill(root: str = ROOT, dry_run: bool = False) -> list:
    """Write the record of every results file that has none; ``[(path, "in place" | "sidecar")]``."""
    done, pages = [], {}
    for path in results_files(root):
        full = os.path.join(root, path)
        with open(full, encoding="utf-8") as f:
            text = f.read()
        data = json.loads(text)
        if isinstance(data, dict) and "provenance" in data:
            continue
        side = (full[:-len(".json")]) + SIDECAR
        if os.path.exists(side):
            continue
        record = history(root, path)
        documented = commands(root, path, pages)
        if documented:
            record["commands"] = documented
        form = layout(text, data) if isinstance(data, dict) else None
        how = "in place" if form else "sidecar"
        done.append((path, how))
        if dry_run:
            continue
        if form:
            indent, end = form
            out, target = json.dumps({**data, "provenance": record}, indent=indent) + end, full
        else:   # a list, or an object whose layout json cannot write back: the sidecar
            with open(full, "rb") as f:
                sha = hashlib.sha256(f.read()).hexdigest()
            out, target = json.dumps(dict(describes=os.path.basename(path), sha256=sha, provenance=record), indent=2) + "\n", side
        with open(target + ".tmp", "w", encoding="utf-8") as f:
            f.write(out)
        os.replace(target + ".tmp", target)
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="say what would be written, write nothing")
    p.add_argument("--root", default=ROOT, help="the checkout (default: this one)")
    args = p.parse_args(argv)
    done = backfill(args.root, args.dry_run)
    for path, how in done:
        print(f"{'would write' if args.dry_run else 'wrote'} {how}: {path}")
    print(f"{len(done)} files {'lack' if args.dry_run else 'given'} a record from git history")
    return 0


if __name__ == "__main__":
    sys.exit(main())
