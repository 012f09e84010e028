"""A comparison's report as a console table and as markdown."""
from safemax.evaluation.attacks import BREAK_FA, describe
from safemax.harness.bar import retain_sample
from safemax.zoo import model_info

LABELS = {"safemax": "SAFEMax", "salun": "SalUn", "sa": "Selective Amnesia", "ga": "gradient ascent",
          "safemax-robust": "robust SAFEMax"}


def label(spec: str) -> str:
    name, _, rest = spec.partition(":")
    return LABELS.get(name, name) + (f" ({rest})" if rest else "")


def _fmt(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


def _ratio_text(r) -> str:
    if r is None:
        return "—"
    return f"> {r['>']:.1f}×" if isinstance(r, dict) else f"{r:.1f}×"


def table(report: dict) -> str:
    """A console table of the comparison."""
    lines = [f"{'method':<26} {'lr':>6} {'prep s':>7} {'first: steps':>12} {'s':>6} {'held: steps':>11} "
             f"{'s':>6} {'held ±1':>7} {'vs SAFEMax':>10} {'FA':>5} {'retain':>6} {'Fréchet':>8}"]
    for name, r in report["methods"].items():
        lines.append(f"{label(name):<26} {r['lr']:>6.0e} {r['prep_seconds']:>7.1f} "
                     f"{_fmt(r['steps_to_forget'], 'd'):>12} {_fmt(r['seconds_to_forget'], '.1f'):>6} "
                     f"{_fmt(r['steps_to_forget_held'], 'd'):>11} {_fmt(r['seconds_to_forget_held'], '.1f'):>6} "
                     f"{_fmt(r.get('steps_to_forget_held_within_one'), 'd'):>7} "
                     f"{_ratio_text(r['held_time_to_forget_vs_safemax']):>10} {r['fa_final']:>5.2f} "
                     f"{r['retain_acc_final']:>6.3f} {r['frechet_final']:>8.2f}")
    return "\n".join(lines)


def _elsewhere(report: dict) -> str:
    """The methods that ran on another machine than the report's (a comparison resumed on another
    machine reuses the finished ones): their wall times do not compare with the others'."""
    here = report["machine"]
    other = {}
    for name, r in report["methods"].items():
        m = r.get("machine", here)
        if (m["cpu"], m["threads"]) != (here["cpu"], here["threads"]):
            other.setdefault(f"{m['cpu']}, {m['threads']} threads", []).append(label(name))
    return "".join(f"; {', '.join(names)} ran on {where} (times not comparable)" for where, names in other.items())


def _power(bar: dict) -> str:
    """The bar's stated power (comparisons written before it have none)."""
    if "retain_se" not in bar:
        return ""
    verdict = "resolves" if bar["resolves_bar"] else "cannot resolve"
    return (f"; judged on {bar['retain_samples']} kept samples a measurement: standard error "
            f"{bar['retain_se']:.3f} of a retain accuracy, {bar['difference_se']:.3f} of the difference to "
            f"the original, which {verdict} the 2-point bar at 2 standard errors")


def markdown(report: dict, sample_rows: list) -> str:
    s, o, m = report["settings"], report["original"], report["machine"]
    info = model_info(s.get("model", "digits"))
    what = f"{'digit' if info.data == 'digits' else 'class'} {info.class_name(s['forget'])}"
    out = [f"# safemax compare: forgetting {what}\n",
           f"Embedded {info.name} model; {s['steps']} steps per method at batch {s['batch_size']} forget + "
           f"{s['batch_size']} retain, Adam; measured every {s['eval_every']} steps ({s['n_forget']} "
           f"forget samples, {s['n_per_class']} per kept class, DDIM {s['num_inference_steps']}). "
           f"Forgotten = FA ≤ {report['bar']['fa_max']:.0%} with retain accuracy ≥ "
           f"{report['bar']['retain_acc_min']:.3f} (original {o['retain_acc']:.3f} − 0.02){_power(report['bar'])}. "
           "Times include "
           f"preparation. Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}"
           f"{_elsewhere(report)}.\n",
           "*First*: the first measurement that meets the bar; *held*: the first from which every "
           "later measurement meets it; *held ±1*: the same where a later measurement may miss the "
           f"retain floor by one retain sample ({retain_sample(s):.4f}) — a held time far above its ±1 "
           "is one sample's flip, not forgetting undone. Ratios: time to forget (held) over "
           "SAFEMax's; \"> x\" where a method never got there (its whole budget over SAFEMax's time).\n",
           "| method | lr | prep s | s / step | first: steps | s | Fréchet there | held: steps | s | "
           "held ±1: steps | vs SAFEMax (held) | final FA | retain acc | Fréchet | forget std |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
           f"| original | | | | | | | | | | | {o['fa']:.2f} | {o['retain_acc']:.3f} | {o['frechet']:.2f} | "
           f"{o['gaussian_std']:.2f} |"]
    for name, r in report["methods"].items():
        note = f" (diverged at step {r['diverged_at_step']})" if r["diverged_at_step"] else ""
        if r.get("raced_out_at") is not None:   # its final figures are that step's
            note += f" (out of the race at step {r['raced_out_at']})"
        out.append(f"| {label(name)}{note} | {r['lr']:g} | {r['prep_seconds']:.1f} | "
                   f"{_fmt(r['step_seconds'], '.2f')} | {_fmt(r['steps_to_forget'], 'd')} | "
                   f"{_fmt(r['seconds_to_forget'], '.1f')} | {_fmt(r['frechet_at_forget'], '.1f')} | "
                   f"{_fmt(r['steps_to_forget_held'], 'd')} | {_fmt(r['seconds_to_forget_held'], '.1f')} | "
                   f"{_fmt(r.get('steps_to_forget_held_within_one'), 'd')} | "
                   f"{_ratio_text(r['held_time_to_forget_vs_safemax'])} | "
                   f"{r['fa_final']:.2f} | {r['retain_acc_final']:.3f} | {r['frechet_final']:.2f} | "
                   f"{r['gaussian_std_final']:.2f} |")
    if s.get("confirm_per_class"):
        heavy = report["original"]["confirm"]
        out += ["", f"Confirmed: each held step re-measured with {s['confirm_per_class']} samples per kept class "
                f"and {3 * s['n_forget']} forget samples (original retain {heavy['retain_acc']:.3f}, bar "
                f"{heavy['retain_acc'] - 0.02:.3f}); *confirmed*: the first held measurement whose heavy "
                "measurement met the bar.\n", "| method | held: steps | confirmed: steps | s |", "| --- | ---: | ---: | ---: |"]
        for name, r in report["methods"].items():
            out.append(f"| {label(name)} | {_fmt(r['steps_to_forget_held'], 'd')} | "
                       f"{_fmt(r.get('steps_to_forget_confirmed'), 'd')} | "
                       f"{_fmt(r.get('seconds_to_forget_confirmed'), '.1f')} |")
    if s["attack"]:
        attacks = s["attacks"]
        out += ["", f"Relearning attacks: Adam on the plain denoising loss on real images of {what} "
                "(each attack on the first of one seeded draw), then forget accuracy again; in brackets: "
                "over the 10 classes only — a damaged sample the 11-class classifier calls "
                f"\"{info.not_a_class}\" may still look most like the class. *Breaks under*: the attacks "
                f"after which FA > {BREAK_FA}.\n"]
        out += [f"- **{a['name']}**: {describe(a)}" for a in attacks] + [""]
        out += ["| method | FA before | " + " | ".join(a["name"] for a in attacks) + " | breaks under |",
                "| --- | ---: | " + " | ".join("---:" for _ in attacks) + " | --- |"]
        for name, r in report["methods"].items():
            a = r.get("attack") or []
            broken = [x["name"] for x in a if x["fa_after"] > BREAK_FA]
            out.append(f"| {label(name)} | {r['fa_final']:.2f} | " +
                       " | ".join(f"{x['fa_after']:.2f} ({x['fa_digits_after']:.2f})" for x in a) +
                       f" | {', '.join(broken) or 'none'} |")
    out += ["", "![forget and retain accuracy against wall time](curves.png)", "",
            "Forget-class samples, one row each: " + ", ".join(label(k) for k in sample_rows) +
            ".\n", "![samples](samples.png)", ""]
    return "\n".join(out)
