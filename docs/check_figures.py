"""Check that the figures README.md and the docs quote are the figures in the results files.

The benchmark scripts write their results to benchmarks/results/ (JSON, and the Markdown tables
they make from it); the README and the docs quote them by hand. Each claim in CLAIMS ties quoted
figures to where they come from, in one line:

    C(doc, text, source[, of])

    doc     the file that quotes them
    text    the words as the doc has them, with a format field where each figure goes
            ("| retain accuracy | {:.3f} | {:.3f} |"): str.format renders the figures into it
    source  the results file (under benchmarks/results/) and where the figures are in it:
              J(file, "a.b", ...)          JSON values by path ("[key=value]" picks a list's item
                                           by a key, "[2]" by index, "[a.b]" a key with a dot;
                                           one path per figure)
              Cell(file, {col: text}, c)   column c of the one row whose cells match, in any table
                                           of a Markdown results file; the figures are the cell's
                                           numbers in order ("0.57 ± 0.47 (0.63)": 0.57, 0.47, 0.63)
              Cells(file, [{...}, ...], c) the same for several rows: one tuple of numbers per row
              Text(file, regex)            the groups of the regex's first match in a text file
              Texts(file, regex)           every match: one tuple of groups per match
    of      (optional) a named function that derives the figures from what the source gives:
            a range over rows, a difference, a ratio

The checker renders each claim's text from its file and requires it in the doc (any run of
whitespace, a line break included, counts as one space; a negative figure is written with "−",
U+2212, as the docs write it). It prints one line per failed claim — the doc, the text it looked
for, the file, the figures there — and exits 1 if any claim fails.

It tests itself on every run: each figure of each claim, changed in its last digit, must make the
claim's text absent from the doc — so a re-measured result, or a figure edited by hand, fails its
claim instead of matching the same words elsewhere.

Usage: python docs/check_figures.py [--doc=README.md=COPY.md ...]
    --doc reads COPY.md in place of that doc (an edited copy, say) against the same claims.

Standard library only: it runs in the docs' environment, without torch.
"""
import json
import re
import string
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NUMBER = re.compile(r"[−-]?\d[\d,]*(?:\.\d+)?(?:e[−-]?\d+)?")


class Num(float):
    """A figure: formats like a float, writes its minus sign as "−"."""
    def __format__(self, spec):
        return float.__format__(self, spec).replace("-", "−")


class Int(int):
    """A whole-number figure (a step count): formats like an int, minus as "−"."""
    def __format__(self, spec):
        return int.__format__(self, spec).replace("-", "−")


def figure(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return Int(value) if isinstance(value, int) else Num(value)


def number(text):
    """A number as a results file writes it: "3,788" → 3788, "−0.5" → −0.5."""
    text = text.replace(",", "").replace("−", "-")
    return figure(int(text) if re.fullmatch(r"-?\d+", text) else float(text))


def numbers(text):
    return tuple(number(m) for m in NUMBER.findall(text))


# --- where the figures are ---------------------------------------------------------------------

class J:
    """Values in a JSON results file, one per path: "after.retain_acc", "[rule=nats:0.01:5].stopped".
    The path "" is the whole file (for an `of` that derives its figures from it)."""
    def __init__(self, file, *paths):
        self.file, self.paths = file, paths

    def load(self):
        data = json.loads((RESULTS / self.file).read_text(encoding="utf-8"))
        return tuple(figure(self.walk(data, path)) for path in self.paths)

    @staticmethod
    def walk(data, path):
        for part in re.findall(r"\[[^\]]*\]|[^.\[\]]+", path):
            if part.startswith("[") and isinstance(data, dict) and part[1:-1] in data:
                data = data[part[1:-1]]   # [safemax:kept_guidance=7.5]: a dict's key with "=" in it
                continue
            if part.startswith("["):
                key, eq, want = part[1:-1].partition("=")
                if not eq:   # [2]: a list's item; [guidance_7.5]: a dict's key with a dot in it
                    data = data[key] if isinstance(data, dict) else data[int(key)]
                    continue
                found = [x for x in data if str(x.get(key)) == want]
                if len(found) != 1:
                    raise KeyError(f"{len(found)} items with {key}={want}")
                data = found[0]
            else:
                data = data[part]
        return data

    def __str__(self):
        return f"{self.file} [{', '.join(self.paths) or 'the whole file'}]"


def tables(path):
    """Every Markdown table of a file: (header, rows); cells stripped of ** and backticks."""
    def cells(line):
        return [c.strip().replace("**", "").replace("`", "") for c in line.strip().strip("|").split("|")]
    lines, out, i = path.read_text(encoding="utf-8").splitlines(), [], 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|[\s:|-]+\|", lines[i + 1].strip()):
            header, rows, i = cells(lines[i]), [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            out.append((header, rows))
        else:
            i += 1
    return out


class Cells:
    """For each of `rows` ({header: cell}), the one row that matches it in a table of a results .md
    that has the column(s) `col`: the numbers of those cells, in order — or with `means=True` each
    cell's first number only (a "0.57 ± 0.47 (0.63)" cell gives 0.57)."""
    def __init__(self, file, rows, col, means=False):
        self.file, self.rows, self.means = file, tuple(rows), means
        self.cols = (col,) if isinstance(col, str) else tuple(col)

    def load(self):
        return [self.find(want) for want in self.rows]

    def find(self, want):
        hits = [tuple(row[header.index(c)] for c in self.cols)
                for header, rows in tables(RESULTS / self.file)
                if all(c in header for c in self.cols) and all(k in header for k in want)
                for row in rows if all(row[header.index(k)] == v for k, v in want.items())]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} rows match {want} with the columns {self.cols}")
        return tuple(x for cell in hits[0] for x in numbers(cell)[:1 if self.means else None])

    def __str__(self):
        rows = "; ".join(", ".join(f"{k}={v}" for k, v in r.items()) for r in self.rows)
        return f"{self.file} [row {rows} | column {', '.join(self.cols)}]"


class Cell(Cells):
    """The one row matching `row` ({header: cell}) in a table of a results .md with the column(s)
    `col`: the numbers of those cells, in order."""
    def __init__(self, file, row, col, means=False):
        super().__init__(file, [row], col, means)

    def load(self):
        return super().load()[0]


class Texts:
    """Every match of a regex (multi-line mode) in a text results file: one tuple of groups each."""
    def __init__(self, file, pattern):
        self.file, self.pattern = file, pattern

    def load(self):
        found = re.findall(self.pattern, (RESULTS / self.file).read_text(encoding="utf-8"), re.M)
        if not found:
            raise KeyError(f"no match for /{self.pattern}/")
        return [tuple(number(g) for g in ((m,) if isinstance(m, str) else m)) for m in found]

    def __str__(self):
        return f"{self.file} [/{self.pattern}/]"


class Both:
    """Several sources' figures one after the other (the same figure of two runs in one text)."""
    def __init__(self, *sources):
        self.sources = sources

    def load(self):
        return tuple(f for source in self.sources for f in source.load())

    def __str__(self):
        return " + ".join(map(str, self.sources))


class Text(Texts):
    """The first match of a regex in a text results file: its groups."""
    def load(self):
        return super().load()[0]


# --- figures derived from a source ---------------------------------------------------------------

def span(rows):
    """(lowest, highest) of each row's first number: a range such as "0.41–0.66"."""
    return min(r[0] for r in rows), max(r[0] for r in rows)


def spans(rows):
    """(lowest, highest) of each column over the rows: ranges such as "3–8×" and "1.06–1.23×"."""
    return tuple(f(r[i] for r in rows) for i in range(len(rows[0])) for f in (min, max))


def joined(rows):
    """The rows' numbers one after the other: several cells' figures in one text."""
    return tuple(x for row in rows for x in row)


def means(rows):
    """Each row's first number (a cell's mean, without its ±)."""
    return tuple(r[0] for r in rows)


def points_lost(values):
    """(before − after) × 100: points of accuracy lost."""
    before, after = values
    return (figure((before - after) * 100),)


def short_lr(values):
    """A learning rate as the docs write it (1e-4), and the rest unchanged."""
    lr, *rest = values
    mantissa, exp = f"{float(lr):.0e}".split("e")
    return (f"{mantissa}e{int(exp)}", *rest)


def priced_held_seconds(tuned):
    """{garment: {setting: seconds}} over the head-to-head runs that held the bar: preparation plus
    the held steps × the setting's step, both as tune_baselines.py priced them side by side."""
    sps, prep = tuned["prices"]["seconds_per_step"], tuned["prices"]["prep_seconds"]
    out = {}
    for setting, runs in tuned["head_to_head"].items():
        for run in runs:
            if run["steps_to_forget_held"] is not None:
                out.setdefault(run["forget"], {})[setting] = prep[run["spec"]] + run["steps_to_forget_held"] * sps[run["spec"]]
    return out


def baselines_over_safemax(values):
    """(lowest, highest) ratio of a baseline's priced held time to SAFEMax's (either setting),
    over the garments where both held the bar."""
    (tuned,) = values
    ratios = [b_seconds / s_seconds
              for held in priced_held_seconds(tuned).values()
              for b, b_seconds in held.items() if not b.startswith("safemax/")
              for s, s_seconds in held.items() if s.startswith("safemax/")]
    return figure(min(ratios)), figure(max(ratios))


def garments_held(values):
    """On how many garments SAFEMax held the bar (with both settings), of how many; Selective
    Amnesia; SalUn tuned."""
    (tuned,) = values
    def held(setting):
        return sum(r["steps_to_forget_held"] is not None for r in tuned["head_to_head"][setting])
    return tuple(figure(n) for n in (min(held("safemax/tuned"), held("safemax/published")),
                                     len(tuned["classes"]), held("sa/tuned"), held("salun/tuned")))


def points(values):
    """Shares' differences as points (×100)."""
    return tuple(figure(100 * v) for v in values)


def counted(values):
    """(how many, of how many, the share) from a share and its n."""
    share, n = values
    return figure(round(share * n)), n, share


def flow_halt_headline(v):
    """README's still-halting sentence from three runs' (4 stds, retain before/after, Fréchet before/after):
    each run's std (all four samplers must round alike), the worst retain change and Fréchet rise."""
    runs = [v[i:i + 8] for i in range(0, len(v), 8)]
    stds = []
    for r in runs:
        if len({round(x, 3) for x in r[:4]}) > 2:
            raise ValueError(f"the samplers disagree: {r[:4]}")
        stds.append(r[0])
    return (*stds, max(100 * abs(r[5] - r[4]) for r in runs), max(100 * (r[7] / r[6] - 1) for r in runs))


# --- the claims ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    doc: str
    text: str
    source: object
    of: object = None

    def figures(self):
        values = self.source.load()
        return tuple(self.of(values) if self.of else values)

    def render(self, figures):
        return flat(self.text.format(*figures))


C = Claim

README, HOME, INDEX, METRICS, COMPARE, EMBEDDED, CONCEPTS = (
    "README.md", "docs/index.md", "docs/results/index.md", "docs/metrics.md", "docs/results/compare.md",
    "docs/results/embedded-model.md", "docs/results/concepts.md")
TUNED_PAGE = "docs/results/tuned-baselines.md"
FLOW_PAGE = "docs/results/flow-matching.md"
HALTING_PAGE = "docs/results/halting.md"

# The results files, and the commands that wrote them
DEMO = "demo/report.json"                                  # safemax demo
DEMO_FLOW = "demo-flow-digits/report.json"                  # safemax demo --dataset flow-digits
DEMO_FM = "demo-fashion-mnist/report.json"                 # safemax demo --dataset fashion-mnist --forget 0
CLASSES = "classes-digits/classes.md"                      # benchmarks/classes.py --model digits
DIGIT_3 = "classes-digits/runs/class3-seed0.json"          #   its run forgetting digit 3
CLASSES_FM = "classes-fashion-mnist-lr1e-4/classes.md"     # benchmarks/classes.py --model fashion-mnist --lr 1e-4 --steps 200
T_SHIRT = "classes-fashion-mnist-lr1e-4/runs/class0-seed0.json"
ANKLE_BOOT_SEED_2 = "classes-fashion-mnist-lr1e-4/runs/class9-seed2.json"
STOP = "[rule=nats:0.01:5]"                                # the default rule's row in:
STOPPING = "stopping-digits/stopping.json"                 # benchmarks/stopping.py benchmarks/results/classes-digits
HELD_OUT = "stopping-held-out/held-out.json"               # benchmarks/stopping.py ... --choose-on digits:0-4
HELD_DIGITS = "groups[name=digits 5–9 (held out)].rules[rule=nats:0.02:5]"   # the rule chosen on digits 0–4
COMPARE_RUN = "compare/results.json"                       # safemax compare --out compare (one seed)
HELD_COMPARE = "compare-held-out/summary.json"             # benchmarks/held_out.py --classes 7 (priced, confirmed)
H7 = "summaries[forget=7]"                                 #   its digit 7


def POOLED(method, *keys):
    """The JSON paths of ``method``'s mean and 95% half-width of each of ``keys`` over the held-out digits."""
    return [f"pooled.{method}.{k}.{part}" for k in keys for part in ("mean", "half")]


COMPARE_ATTACKS = "compare-attacks/results.md"             # safemax compare --attacks weak strong long lora inversion (one seed)
ATTACKS = "retrain-digits/every-attack.md"                 # benchmarks/robust_attack.py ... --seed 0 1 2 (three seeds)
TUNED = "tuned-fashion-mnist/tuned.json"                   # benchmarks/tune_baselines.py --model fashion-mnist
FLOW = "flow-digits/results.json"                          # benchmarks/flow_digits.py
HALTING_LR = "halting-digits-lr/halting.md"               # benchmarks/halting.py --digits 3 --lr ... --out halting-digits-lr
HALTING_LR_ROWS = [("real forget images", "real", "1e-4, 200", "0.0001", "200"),
                   ("`gaussian_fraction=0.5`", "gaussian:0.5", "1e-4, 200", "0.0001", "200"),
                   ("`gaussian_fraction=0.5`", "gaussian:0.5", "2e-4, 100", "0.0002", "100")]
HALTING_LR_COLUMNS = ("retain acc", "Fréchet", "std DDIM-50", "std DDPM")
HALTING_HEAVY = "halting-digits-heavy/halting.md"          # benchmarks/halting.py --digits 3 7 ... --n-per-class 200
HALTING_HEAVY_ROWS = [(d, label, setting, lr, lr_cell, steps)
                      for d in (3, 7)
                      for label, setting, lr, lr_cell, steps in (
                          ("the original", "original", "—", "—", "—"),
                          ("real forget images (today's default)", "real", "5e-4, 100", "0.0005", "100"),
                          ("`gaussian_fraction=0.5`", "gaussian:0.5", "1e-4, 200", "0.0001", "200"))]
FLOW_HALT = "flow-digits-halt/{}/results.json"             # benchmarks/flow_digits.py --model ... --out flow-digits-halt/<run>
STD_BY_SAMPLER = [f"after.forget_std_by_sampler.euler{n}_shift{s}" for s in (1, 3) for n in (28, 50)]
# the flow halting page's rows: its text and the run's figures, from one template (flow_halt_rows writes the rows)
FLOW_HALT_TUNING = "| {} | {{:.3f}} / {{:.3f}} | {{:.3f}} / {{:.3f}} | {{:.2f}} | {{:.3f}} | {{:.2f}} | {{:.0f}} |"
FLOW_HALT_TUNING_PATHS = [*STD_BY_SAMPLER, "after.fa", "after.retain_acc", "after.frechet", "unlearn_seconds"]
FLOW_HALT_REPORT = ("| {} | {} | {{:.3f}} / {{:.3f}} | {{:.3f}} / {{:.3f}} | {{:.2f}} | {{:.3f}} → {{:.3f}} | "
                    "{{:.2f}} → {{:.2f}} |")
FLOW_HALT_REPORT_PATHS = [*STD_BY_SAMPLER, "after.fa", "before.retain_acc", "after.retain_acc", "before.frechet",
                          "after.frechet"]
FLOW_HALT_RUNS = [   # (label, run folder) of the digit-3 table: the setting is chosen there
    ("`ode` (today's default), 100 steps", "ode"),
    ("`still`, `gaussian_fraction=0.5`, 100 steps", "still-gf0.5"),
    ("`still`, `gaussian_fraction=0.5`, 100 steps at lr 3e-4", "still-gf0.5-lr3e-4"),
    ("**`still`, `gaussian_fraction=0.5`, 300 steps** (chosen)", "still-gf0.5-300steps")]
FLOW_HALT_REPORTED = [(d, label, f"digit{d}-{run}") for d in (7, 5) for label, run in
                      (("`ode` (today's default), 100 steps", "ode"),
                       ("`still`, `gaussian_fraction=0.5`, 300 steps", "still-gf0.5-300steps"))]
KERNELS = "kernels-cpu/summary.txt"                        # pytest --benchmark-only
GPU_MEMORY = "gpu-h200/memory.json"                        # benchmarks/gpu_check.sh (commit 91e38ef)
SD_TRAINING = "sd-pipeline/training.json"                  # python -m safemax.zoo.sd_pipeline (the zoo pipeline's record)
SD3_QUALITY = "sd3-pipeline/quality.json"                  # python -m safemax.zoo.sd_quality --pipeline fashion-mnist-sd3 --n 4
SD_QUALITY = "sd-pipeline/quality.json"                    # python -m safemax.zoo.sd_quality --n 4
SD3_HALT = "sd3-halting/safemax-flow_halt=still-gaussian_fraction=0.5-forget_guidance=7/dress-seed0"
SD3_LONG = "sd3-halting/safemax-flow_halt=still-gaussian_fraction=0.5-forget_guidance=7-steps=300-batch_size=64/dress-seed0"
SD3_HOLD = "sd3-halting/safemax-flow_halt=still-gaussian_fraction=0.5-forget_guidance=7-unconditional_hold=1/dress-seed0"
SD3_HOLD_LONG = ("sd3-halting/safemax-flow_halt=still-gaussian_fraction=0.5-forget_guidance=7-unconditional_hold=1"
                 "-steps=300-batch_size=16/dress-seed0")
RESIDUALS = "sd3-halting/residuals/residuals.json"   # benchmarks/guided_residuals.py on SD3_LONG and SD3_HOLD
CONCEPTS_SD_JSON = "concepts-sd/summary.json"             # benchmarks/concept_erasure.py --out benchmarks/results/concepts-sd
CONCEPTS_SD_TUNE_JSON = "concepts-sd-tune/summary.json"   # benchmarks/concept_erasure.py --tune --out benchmarks/results/concepts-sd-tune
AT_ONCE = "concepts-sd-at-once/at-once.md"                # benchmarks/concept_erasure.py --at-once 1 2 5 --methods uce safemax salun
ALL_75, ALL_1 = "methods.safemax.overall[guidance_7.5]", "methods.safemax.overall.guidance_1"
CONFIRMED = "tuned-fashion-mnist/confirmed/confirmed.json"  # benchmarks/confirm_held.py (the tuned head-to-head, afterwards)
PULLOVER_CONFIRM = "tuned-fashion-mnist/head-to-head/class2/confirm/{}.json"   #   a pullover run's confirmation
KC4 = "safemax:lr=0.0001,kept_contrast=4"                  #   SAFEMax's tuned setting there
KG = "methods[safemax:kept_guidance=7.5]"                 #   its SAFEMax with kept_guidance=7.5
KG_75, KG_1 = KG + ".overall[guidance_7.5]", KG + ".overall.guidance_1"
UCE_T = "methods[uce:tokens=after,erase_scale=20]"           #   UCE's setting tuned on the dress

# rows of ATTACKS (mean ± 95% interval over three seeds)
SAFEMAX = {"method": "safemax", "steps": "100"}            # the demo's fit
SAFEMAX_200 = {"method": "safemax", "steps": "200"}
ROBUST = {"method": "safemax-robust:attack_scope=class-embedding,attack_radius=0.5,attack_steps=2"}  # the default
SALUN = {"method": "salun:retain_weight=1"}                # 200 steps
SA = {"method": "sa"}                                      # 200 steps
RETRAINED = {"method": "retrain"}
# the fused op's forward+backward against the plain masked MSE, per shape: (× eager, × compiled)
PLAIN_MSE = r"^cpu\s+\S+\s+fwd\+bwd\s+plain MSE\s+\S+\s+\S+\s+\S+\s+([\d.]+)x\s+([\d.]+)x"


def mean(metric):  # a row of classes.md's "Mean ± 95% t-interval over the classes" table
    return {"metric": metric}


CLAIMS = [
    # README, Results: the demo ------------------------------------------------------------------
    C(README, "`safemax demo`, {} steps, {:.0f} s on two CPU", J(DEMO, "steps", "unlearn_seconds")),
    C(README, '| forget accuracy (digit 3 → "3") | {:.3f} | **{:.3f}** |', J(DEMO, "before.fa", "after.fa")),
    C(README, "| retain accuracy (other digits → themselves) | {:.3f} | {:.3f} |", J(DEMO, "before.retain_acc", "after.retain_acc")),
    C(README, "| retain Fréchet distance (classifier features) | {:.3f} | {:.3f} |", J(DEMO, "before.frechet", "after.frechet")),
    C(README, "| forget samples: pixel mean / std / kurtosis | {:.2f} / {:.2f} / {:.2f} | {:.2f} / {:.2f} / {:.2f} |",
      J(DEMO, "before.gaussian_mean", "before.gaussian_std", "before.gaussian_kurtosis",
        "after.gaussian_mean", "after.gaussian_std", "after.gaussian_kurtosis")),
    # README: every digit (seed 0; Fréchet on 900 retain samples), the three baselines, the stopping rule
    C(README, "forget accuracy goes {:.3f} ± {:.3f} → **{:.3f}** in every run", Cell(CLASSES, mean("FA"), ("before", "after"))),
    C(README, "retain accuracy {:.3f} ± {:.3f} → {:.3f} ± {:.3f}, the Fréchet", Cell(CLASSES, mean("retain acc"), ("before", "after"))),
    C(README, "the Fréchet distance {:.2f} ± {:.2f} → {:.2f} ± {:.2f} (on 900", Cell(CLASSES, mean("Fréchet"), ("before", "after"))),
    C(README, "measures {:.3f} on the demo's 270", J(DEMO, "before.frechet")),
    C(README, "and {:.2f} on `safemax compare`'s 180", J(COMPARE_RUN, "original.frechet")),
    C(README, "stopped all {} of those runs after {:.0f} steps on average with the bar met in {} —",
      J(STOPPING, STOP + ".stopped", STOP + ".mean_stop", STOP + ".met_at_stop")),
    C(README, "the rule it picks met the bar at {} of {} stops on the held-out digits 5–9",
      J(HELD_OUT, HELD_DIGITS + ".met_at_stop", HELD_DIGITS + ".runs")),
    # README: Fashion-MNIST
    C(README, "(its own defaults: lr {}, {} steps", J(DEMO_FM, "lr", "steps"), short_lr),
    C(README, "takes forget accuracy {:.2f} → {:.2f}, the T-shirts", J(DEMO_FM, "before.fa", "after.fa")),
    C(README, "Gaussian noise (pixel std {:.2f}), retain accuracy {:.3f} → {:.3f}",
      J(DEMO_FM, "after.gaussian_std", "before.retain_acc", "after.retain_acc")),
    C(README, "retain accuracy moves by {:.1f} ± {:.1f} points", Text(CLASSES_FM, r"Over these 9 runs: retain accuracy (\S+) ± (\S+) points")),
    C(README, "one seeded run of nine ends {:.1f} points below", J(ANKLE_BOOT_SEED_2, "before.retain_acc", "after.retain_acc"), points_lost),
    # README: against the baselines (safemax compare, one seed)
    C(README, "confirmed on {} kept samples, enough to resolve 2 points", J(HELD_COMPARE, H7 + ".heavy.retain_samples")),
    C(README, "step **{:.0f} ± {:.0f} ({:.1f} ± {:.1f} s** at the step price", J(HELD_COMPARE, *POOLED("safemax", "confirmed", "priced_seconds"))),
    C(README, "Selective Amnesia takes {:.1f} ± {:.1f}× as long", J(HELD_COMPARE, *POOLED("sa", "vs_safemax"))),
    C(README, "as long ({:.1f}–{:.1f}× per digit)", J(HELD_COMPARE, "summaries[forget=5].methods.sa.vs_safemax",
                                                     H7 + ".methods.sa.vs_safemax")),
    C(README, "the light measurement alone ({} kept samples, which cannot resolve 2 points) had said",
      J(COMPARE_RUN, "settings.n_per_class"), lambda v: (9 * v[0],)),   # (9 kept digits)
    C(README, "had said {} steps ({:.1f} s) and {:.1f}×.",
      J(COMPARE_RUN, "methods.safemax.steps_to_forget_held", "methods.safemax.seconds_to_forget_held",
        "methods.sa.held_time_to_forget_vs_safemax")),
    # README: the attacks — three seeds (ATTACKS), and the one seed of safemax compare
    C(README, "SAFEMax's forget accuracy is {:.2f} ± {:.2f}, SalUn's (with a usable retain weight) {:.2f} and Selective Amnesia's {:.2f};",
      Cells(ATTACKS, [SAFEMAX, SALUN, SA], "weak"), lambda rows: (*rows[0][:2], rows[1][0], rows[2][0])),
    C(README, "a LoRA attacker brings SAFEMax back to {:.2f}, SalUn to {:.2f}, Selective Amnesia to {:.2f}.",
      Cells(ATTACKS, [SAFEMAX, SALUN, SA], "lora"), means),
    C(README, "gave SAFEMax {:.2f} and", J(COMPARE_RUN, "methods.safemax.attack[lr=0.0001].fa_after")),
    C(README, "gave SAFEMax 0.13 and {:.2f}: a seed", Cell(COMPARE_ATTACKS, {"method": "SAFEMax"}, "lora")),
    C(README, "(lr 1e-3: all {:.2f}–{:.2f})", Cells(ATTACKS, [SAFEMAX, ROBUST, SALUN, SA], "strong"), span),
    C(README, "teach it the 3 (weak {:.2f}, strong {:.2f}, long {:.2f})", Cell(ATTACKS, RETRAINED, ("weak", "strong", "long"), means=True)),
    C(README, "two and SalUn on one, at {:.0f}–{:.0f}× SAFEMax's time", J(TUNED, ""), baselines_over_safemax),
    # README: flow matching, the fused op
    C(README, "std {:.3f}, {:.3f} and {:.3f} for digits 3, 7 and 5 under Euler 28 and 50 at shift 1 and 3,\nthe kept digits within {:.1f} points and {:.1f} % Fréchet",
      Both(*[J(FLOW_HALT.format(run), *STD_BY_SAMPLER, "before.retain_acc", "after.retain_acc", "before.frechet", "after.frechet")
             for run in ("still-gf0.5-300steps", "digit7-still-gf0.5-300steps", "digit5-still-gf0.5-300steps")]),
      flow_halt_headline),
    C(README, "takes digit 3 from FA {:.2f} to **{:.2f}** with retain accuracy {:.3f} → {:.3f};",
      J(FLOW, "before.fa", "after.fa", "before.retain_acc", "after.retain_acc")),
    C(README, "is {:.0f}–{:.0f}× faster than the same loss written as a plain masked MSE in eager PyTorch and {:.2f}–{:.2f}× faster",
      Texts(KERNELS, PLAIN_MSE), spans),

    # The headline: every row of docs/results/index.md's table; docs/index.md has its first rows ----
    *[claim for doc in (INDEX, HOME) for claim in [
        C(doc, "| FA {:.3f} → **{:.3f}**; retain accuracy {:.3f} → {:.3f}", J(DEMO, "before.fa", "after.fa", "before.retain_acc", "after.retain_acc")),
        C(doc, "| `safemax demo`: {} steps, {:.0f} s, one seed |", J(DEMO, "steps", "unlearn_seconds")),
        C(doc, "FA **0.000** in 16 of 16 runs; retain {:.3f} ± {:.3f} → {:.3f} ± {:.3f}", Cell(CLASSES, mean("retain acc"), ("before", "after"))),
        C(doc, "| T-shirts: FA {:.2f} → **{:.2f}**, pixel std **{:.2f}**; retain {:.3f} → {:.3f} |",
          J(DEMO_FM, "before.fa", "after.fa", "after.gaussian_std", "before.retain_acc", "after.retain_acc")),
        C(doc, "| digits 7, 5, 9 (no method tuned on them): bar held and confirmed from **{:.0f} ± {:.0f} steps ({:.1f} ± {:.1f} s)**; "
               "Selective Amnesia {:.1f} ± {:.1f}× longer",
          J(HELD_COMPARE, *POOLED("safemax", "confirmed", "priced_seconds"), *POOLED("sa", "vs_safemax"))),
        C(doc, "| held on {} of {} garments; " + ("the baselines on {} and {}" if doc == HOME else "Selective Amnesia on {}, SalUn on {}"),
          J(TUNED, ""), garments_held),
        C(doc, " at {:.0f}–{:.0f}× the time (light measurement;", J(TUNED, ""), baselines_over_safemax),
        C(doc, "at least {:.1f}–{:.1f}× against SAFEMax's confirmed steps",
          J(CONFIRMED, f"rows[id=6/{KC4}].priced_seconds", "rows[id=6/sa:lr=0.0001,ewc_lambda=10].priced_seconds",
            f"rows[id=9/{KC4}].priced_seconds", "rows[id=9/sa:lr=0.0001,ewc_lambda=10].priced_seconds"),
          lambda v: (figure(v[1] / v[0]), figure(v[3] / v[2]))),
        C(doc, "| FA **{:.2f} ± {:.2f}**; SalUn {:.2f}, Selective Amnesia {:.2f} | three seeds",
          Cells(ATTACKS, [SAFEMAX, SALUN, SA], "weak"), lambda rows: (*rows[0][:2], rows[1][0], rows[2][0])),
        C(doc, "| every method {:.2f}–{:.2f}; retrained without the 3: {:.2f} |",
          Cells(ATTACKS, [SAFEMAX, ROBUST, SALUN, SA, RETRAINED], "strong"), lambda rows: (*span(rows[:4]), rows[4][0])),
    ]],
    C(INDEX, "; Fréchet {:.3f} → {:.3f} |", J(DEMO, "before.frechet", "after.frechet")),
    C(INDEX, "; bar held from step {:.0f} ± {:.0f} |", Cell(CLASSES, mean("held step to the bar"), "after")),
    C(INDEX, "| FA **0.000** in every run; retain {:.3f} ± {:.3f} → {:.3f} ± {:.3f} | Fashion-MNIST",
      Cell(CLASSES_FM, mean("retain acc"), ("before", "after"))),
    C(INDEX, "| stopped {} of {} runs, at step {:.0f} on average; bar met at {} stops |",
      J(STOPPING, STOP + ".stopped", STOP + ".runs", STOP + ".mean_stop", STOP + ".met_at_stop")),
    C(INDEX, "the baselines 200 (one seed, 500 steps: {:.2f}) |", J(COMPARE_RUN, "methods.safemax.attack[lr=0.0001].fa_after")),
    C(INDEX, "| FA **{:.2f} ± {:.2f}**; SalUn {:.2f}, Selective Amnesia {:.2f} | the same runs",
      Cells(ATTACKS, [SAFEMAX, SALUN, SA], "lora"), lambda rows: (*rows[0][:2], rows[1][0], rows[2][0])),
    C(INDEX, "| the same runs (one seed, 500 steps: {:.2f}) |", Cell(COMPARE_ATTACKS, {"method": "SAFEMax"}, "lora")),
    C(INDEX, "| inversion FA {:.2f} ± {:.2f} against {:.2f} ± {:.2f} (retrained {:.2f});",
      Cells(ATTACKS, [ROBUST, SAFEMAX, RETRAINED], "inversion"), lambda rows: (*rows[0][:2], *rows[1][:2], rows[2][0])),
    C(INDEX, "(retrained 0.15); retain {:.3f} |", Cell(ATTACKS, ROBUST, "retain acc")),
    C(INDEX, "| FA {:.2f} → **{:.2f}**; retain {:.3f} → {:.3f} | a flow-matching",
      J(FLOW, "before.fa", "after.fa", "before.retain_acc", "after.retain_acc")),
    C(INDEX, "| forward+backward {:.0f}–{:.0f}× eager, {:.2f}–{:.2f}× `torch.compile` |", Texts(KERNELS, PLAIN_MSE), spans),
    C(INDEX, "| checkpointing: step peak {:.2f} → {:.2f} GiB |",
      J(GPU_MEMORY, "[config=fp32].step_peak_gib", "[config=fp32 + checkpointing].step_peak_gib")),

    # docs/metrics.md: one model, three baselines --------------------------------------------------
    C(METRICS, "| 100 / 30 (270) | DDIM-50 | {:.3f} | {:.3f} |", J(DEMO, "before.retain_acc", "before.frechet")),
    C(METRICS, "| 100 / 20 (180) | DDIM-25 | {:.3f} | {:.2f} |", J(COMPARE_RUN, "original.retain_acc", "original.frechet")),
    C(METRICS, "| 300 / 100 (900) | DDIM-50 | {:.3f} ± {:.3f} | {:.2f} ± {:.2f} |",
      Cells(CLASSES, [mean("retain acc"), mean("Fréchet")], "before"), joined),
    C(METRICS, "give {:.2f} on 180 samples,", J(COMPARE_RUN, "original.frechet")),
    C(METRICS, "on 180 samples, {:.2f} on 270 and", J(DEMO, "before.frechet")),
    C(METRICS, "{:.2f} on 900 (digit 3's own run", J(DIGIT_3, "before.frechet")),
    C(METRICS, "its demo measures {:.3f} retain accuracy and a Fréchet distance of {:.1f} on 270 samples (FA {:.3f} on 100",
      J(DEMO_FM, "before.retain_acc", "before.frechet", "before.fa")),
    C(METRICS, "every class {:.3f} and {:.1f} on 900 samples (FA {:.3f} on 300)",
      J(T_SHIRT, "before.retain_acc", "before.frechet", "before.fa")),

    # docs/results/embedded-model.md: the Stable Diffusion pipeline's training and its bar ---------
    C(EMBEDDED, "CLIP {:,} steps × 256 in {} s, VAE {:,} × 64 in {} s (L1 reconstruction {:.3f}), UNet {:,} × 128 in {:,} s",
      J(SD_TRAINING, "stages.clip.steps", "stages.clip.seconds", "stages.vae.steps", "stages.vae.seconds",
        "stages.vae.reconstruction_l1", "stages.unet.steps", "stages.unet.seconds")),
    C(EMBEDDED, "**{:,} of {:,}** ({:.3f}) are their class", J(SD_QUALITY, "overall.value", "overall.n"), counted),
    C(EMBEDDED, "(the lowest classes: coat {:.3f}, shirt {:.3f}; every other class 1.000), and {} of {} samples of the empty",
      J(SD_QUALITY, "per_class.Coat.value", "per_class.Shirt.value", "empty_prompt.garments.value",
        "empty_prompt.garments.n"), lambda v: (v[0], v[1], *counted(v[2:])[:2])),

    # concept erasure on the Stable Diffusion pipeline: README and docs/results/concepts.md -----------
    C(README, "their class {:,} times in {:,})", J(SD_QUALITY, "overall.value", "overall.n"), counted),
    # docs/results/flow-matching.md: halting on the SD3 pipeline (benchmarks/pipeline_halting.py)
    *[C(FLOW_PAGE, f"| {label} | {{:.3f}} / {{:.3f}} | {{:.3f}} / {{:.3f}} | {{:.3f}} | {{:+.1f}} |",
        J(f"sd3-halting/{run}/dress-seed0/halting.json", "measured.guidance_7.std", "std_extra_steps.guidance_7",
          "measured.guidance_1.std", "std_extra_steps.guidance_1", "measured.guidance_7.fa_erase",
          "measured.guidance_7.others"),
        lambda v: (v[0][1], v[1], v[2][1], v[3], v[4][1], 100 * (v[5][1] - v[5][0])))
      for label, run in (("`ode` (the default)", "safemax"),
                         ("`still`, `gaussian_fraction=0.5`", "safemax-flow_halt=still-gaussian_fraction=0.5"),
                         ("`still`, `gaussian_fraction=0.5`, `forget_guidance=7`",
                          "safemax-flow_halt=still-gaussian_fraction=0.5-forget_guidance=7"),
                         ("the same, 300 steps of 64 (24× the samples)",
                          "safemax-flow_halt=still-gaussian_fraction=0.5-forget_guidance=7-steps=300-batch_size=64"),
                         ("`forget_guidance=7` + `unconditional_hold=1` (100 steps of 8)",
                          "safemax-flow_halt=still-gaussian_fraction=0.5-forget_guidance=7-unconditional_hold=1"))],
    C(README, "have std {:.3f} / {:.3f} at guidance 7.0 (Euler 28 / 50), FA {:.3f}, the other classes {:+.1f} points",
      J(SD3_HOLD_LONG + "/halting.json", "measured.guidance_7.std", "std_extra_steps.guidance_7",
        "measured.guidance_7.fa_erase", "measured.guidance_7.others"),
      lambda v: (v[0][1], v[1], v[2][1], 100 * (v[3][1] - v[3][0]))),
    C(FLOW_PAGE, "| **the same, 300 steps of 16** | **{:.3f} / {:.3f}** | {:.3f} / {:.3f} | **{:.3f}** | {:+.1f} |",
      J(SD3_HOLD_LONG + "/halting.json", "measured.guidance_7.std", "std_extra_steps.guidance_7",
        "measured.guidance_1.std", "std_extra_steps.guidance_1", "measured.guidance_7.fa_erase",
        "measured.guidance_7.others"),
      lambda v: (v[0][1], v[1], v[2][1], v[3], v[4][1], 100 * (v[5][1] - v[5][0]))),
    C(FLOW_PAGE, "(commit `{}`, a clean worktree; 6× erase's samples, a quarter of the 300-of-64 fit's): at\n  guidance 7.0 the dress's final latents have std **{:.3f}** after Euler 28 and **{:.3f}** after 50\n  — inside the issue's 0.95–1.05 — its forget accuracy is {:.3f} on the erasing prompts and on the\n  paraphrases, the other classes keep every point ({:+.1f}) and the kept classes' Fréchet distance\n  moves {:.0f} → {:.0f} ({:+.0f} %). The guided residual at σ = 0.04 is down to {:.2f} (from {:.2f}), its drift\n  term to {:.2f}. Without guidance the chain is not still (std {:.2f}, FA {:.3f})",
      Both(J(SD3_HOLD_LONG + "/safemax.json", "provenance.commit"),
           J(SD3_HOLD_LONG + "/halting.json", "measured.guidance_7.std", "std_extra_steps.guidance_7",
             "measured.guidance_7.fa_erase", "measured.guidance_7.fa_paraphrase", "measured.guidance_7.others",
             "measured.guidance_7.frechet", "measured.guidance_1.std", "measured.guidance_1.fa_erase"),
           J(RESIDUALS, "runs[2].per_sigma[6].guided", "runs[0].per_sigma[6].guided", "runs[2].per_sigma[6].drift")),
      lambda v: (v[0][:7], v[1][1], v[2], v[3][1] if v[3][1] == v[4][1] else float("nan"), 100 * (v[5][1] - v[5][0]),
                 v[6][0], v[6][1], 100 * (v[6][1] / v[6][0] - 1), v[9], v[10], v[11], v[7][1], v[8][1])),
    C(FLOW_PAGE, "drift term is {:.2f} of the guided residual's {:.2f} at σ = 0.04, the fit's own {:.3f}",
      J(RESIDUALS, "runs[0].per_sigma[6].drift", "runs[0].per_sigma[6].guided", "runs[0].per_sigma[6].own")),
    C(FLOW_PAGE, "(commit `{}`, a clean worktree) the drift term falls from {:.2f}\n  to {:.2f} at σ = 0.04, and the guided forget accuracy from {:.3f} to **{:.3f}** with the other\n  classes {:+.1f} points (Fréchet {:.0f} → {:.0f})",
      Both(J(SD3_HOLD + "/safemax.json", "provenance.commit"),
           J(RESIDUALS, "runs[0].per_sigma[6].drift", "runs[1].per_sigma[6].drift"),
           J(SD3_HALT + "/halting.json", "measured.guidance_7.fa_erase"),
           J(SD3_HOLD + "/halting.json", "measured.guidance_7.fa_erase", "measured.guidance_7.others",
             "measured.guidance_7.frechet")),
      lambda v: (v[0][:7], v[1], v[2], v[3][1], v[4][1], 100 * (v[5][1] - v[5][0]), v[6][0], v[6][1])),
    C(FLOW_PAGE, "The guided std is {:.3f}, not yet 1: what is left is mostly the fit's own\n  error ({:.2f})",
      Both(J(SD3_HOLD + "/halting.json", "measured.guidance_7.std"), J(RESIDUALS, "runs[1].per_sigma[6].own")),
      lambda v: (v[0][1], v[1])),
    C(FLOW_PAGE, "(commit `{}`, a clean worktree; {:,.0f} s, lr 1e-4) lowers the guided forget accuracy from\n  {:.3f} to {:.3f} and keeps the other classes ({:+.1f} points, Fréchet {:.0f} → {:.0f})",
      Both(J(SD3_LONG + "/safemax.json", "provenance.commit", "seconds.fit"),
           J(SD3_HALT + "/halting.json", "measured.guidance_7.fa_erase"),
           J(SD3_LONG + "/halting.json", "measured.guidance_7.fa_erase", "measured.guidance_7.others",
             "measured.guidance_7.frechet")),
      lambda v: (v[0][:7], v[1], v[2][1], v[3][1], 100 * (v[4][1] - v[4][0]), v[5][0], v[5][1])),
    C(CONCEPTS, "**ESD-x, {} runs** (the three concepts at seed 0, the\n  sneaker at seeds 1 and 2): at guidance 7.5 the erasing prompts are still their class in {:.3f}\n  [{:.2f}, {:.2f}] of the samples and the paraphrases in {:.3f}",
      J(CONCEPTS_SD_JSON, "methods[esd-x].runs", *(f"methods[esd-x].overall[guidance_7.5].{k}" for k in
                                                  ("fa_erase.value", "fa_erase.ci95[0]", "fa_erase.ci95[1]", "fa_paraphrase.value")))),
    C(CONCEPTS, "at\n  guidance 1, {:.3f}. The other classes {:+.1f} points. Prefix attack {:.3f}, soft {:.3f} (seed 0). **ESD-u, {} runs** (seed 0): {:.3f}\n  [{:.2f}, {:.2f}] at guidance 7.5, {:.3f} at guidance 1; the other classes {:+.1f} points; prefix\n  attack {:.3f}, soft {:.3f}",
      J(CONCEPTS_SD_JSON, "methods[esd-x].overall.guidance_1.fa_erase.value", "methods[esd-x].overall[guidance_7.5].others.change",
        "methods[esd-x].overall.attacks.prefix.value", "methods[esd-x].overall.attacks.soft.value", "methods[esd-u].runs",
        *(f"methods[esd-u].overall[guidance_7.5].{k}" for k in ("fa_erase.value", "fa_erase.ci95[0]", "fa_erase.ci95[1]")),
        "methods[esd-u].overall.guidance_1.fa_erase.value", "methods[esd-u].overall[guidance_7.5].others.change",
        "methods[esd-u].overall.attacks.prefix.value", "methods[esd-u].overall.attacks.soft.value"),
      lambda v: (v[0], 100 * v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], 100 * v[9], v[10], v[11])),
    C(CONCEPTS, "(SAFEMax prefix {:.3f} / soft {:.3f}; their\nbest {:.3f} / {:.3f})",
      J(CONCEPTS_SD_JSON, "methods.safemax.overall.attacks.prefix.value", "methods.safemax.overall.attacks.soft.value",
        *(f"{m}.overall.attacks.prefix.value" for m in ("methods.uce", UCE_T, "methods[esd-x]", "methods[esd-u]")),
        *(f"{m}.overall.attacks.soft.value" for m in ("methods.uce", UCE_T, "methods[esd-x]", "methods[esd-u]"))),
      lambda v: (v[0], v[1], min(v[2:6]), min(v[6:10]))),
    C(CONCEPTS, "paraphrases at most 5 % — met ({:.3f}); kept classes within 2 points and neighbours within 5 —\nmissed ({:.1f} and {:.1f}); time at most a fifth of ESD's — met ({:.0f} s against ESD-x's {:,.0f} s)",
      J(CONCEPTS_SD_JSON, "methods.safemax.overall[guidance_7.5].fa_paraphrase.value",
        "methods.safemax.overall[guidance_7.5].others.change", "methods.safemax.overall[guidance_7.5].neighbours.change",
        "methods.safemax.overall.erase_seconds.mean", "methods[esd-x].overall.erase_seconds.mean"),
      lambda v: (v[0], 100 * v[1], 100 * v[2], v[3], v[4])),
    C(CONCEPTS, "seed 2's sneaker in part ({:.3f})", J("concepts-sd/esd-x/sneaker-seed2/report.json",
                                                       "after[guidance_7.5].sneaker.fa_erase.value")),
    C(CONCEPTS, "seed 2's\n  sneaker took {:,.0f} s beside four others", J("concepts-sd/esd-x/sneaker-seed2/safemax.json", "seconds.erase")),
    C(CONCEPTS, "A run takes {:,.0f} ± {:,.0f} s (ESD-x;", J(CONCEPTS_SD_JSON, "methods[esd-x].overall.erase_seconds.mean",
                                                      "methods[esd-x].overall.erase_seconds.ci95_half")),
    # docs/results/embedded-model.md: the SD3 pipeline's bar (missed on the shirt)
    C(EMBEDDED, "at SD3's own guidance {:.1f} and {} Euler steps, four samples of\n  each of the 270 class prompts, **{:,} of {:,}** ({:.3f}) are their class",
      J(SD3_QUALITY, "guidance_scale", "num_inference_steps", "overall.value", "overall.n"),
      lambda v: (v[0], v[1], *counted(v[2:]))),
    C(EMBEDDED, "and {} of {} samples of the empty prompt are garments — but the\n  **shirt** is drawn as a shirt in only **{:.3f}** [{:.2f}, {:.2f}] of its samples (every other class\n  {:.3f} or more; the pullover {:.3f}, the sandal {:.3f})",
      J(SD3_QUALITY, "empty_prompt.garments.value", "empty_prompt.garments.n", "per_class.Shirt.value",
        "per_class.Shirt.ci95", "per_class", "per_class.Pullover.value", "per_class.Sandal.value"),
      lambda v: (figure(round(v[0] * v[1])), v[1], v[2], v[3][0], v[3][1],
                 min(c["value"] for k, c in v[4].items() if k != "Shirt"), v[5], v[6])),
    C(README, "erases a garment ({:.0f} s a run", J(CONCEPTS_SD_JSON, "methods.safemax.overall.erase_seconds.mean")),
    C(README, "forget accuracy {:.3f} → {:.3f} on {} samples",
      J(CONCEPTS_SD_JSON, f"{ALL_75}.fa_paraphrase_before.value", f"{ALL_75}.fa_paraphrase.value", f"{ALL_75}.fa_paraphrase.n")),
    C(README, "moves its neighbours by {:.1f} and the other classes by {:.1f} points",
      J(CONCEPTS_SD_JSON, *(f"methods.safemax.by_concept.sneaker[guidance_7.5].{k}.change" for k in ("neighbours", "others"))),
      points),
    C(README, "costs the other classes {:.1f} and {:.1f} points",
      J(CONCEPTS_SD_JSON, *(f"methods.safemax.by_concept.{c}[guidance_7.5].others.change" for c in ("t-shirt", "bag"))),
      lambda v: tuple(-x for x in points(v))),
    C(README, "SAFEMax's tuned held step on the ankle boot ({} steps) stands", J(CONFIRMED, f"rows[id=9/{KC4}].confirmed")),
    C(TUNED_PAGE, "| shirt | SAFEMax default | {} | **{}** | {:.3f}, {:.3f} ({:.3f}) |",
      J(CONFIRMED, "rows[id=6/safemax:lr=0.0001].held", "rows[id=6/safemax:lr=0.0001].confirmed",
        "rows[id=6/safemax:lr=0.0001].heavy.fa", "rows[id=6/safemax:lr=0.0001].heavy.retain_acc",
        "rows[id=6/safemax:lr=0.0001].heavy_floor")),
    C(TUNED_PAGE, "| ankle boot | SAFEMax default | {} | **{}** | at {}: {:.3f}, {:.3f}; at {}: {:.3f}, {:.3f} ({:.3f}) |",
      J(CONFIRMED, "rows[id=9/safemax:lr=0.0001].held", "rows[id=9/safemax:lr=0.0001].confirmed",
        "rows[id=9/safemax:lr=0.0001].points[0].step", "rows[id=9/safemax:lr=0.0001].points[0].heavy.fa",
        "rows[id=9/safemax:lr=0.0001].points[0].heavy.retain_acc", "rows[id=9/safemax:lr=0.0001].points[1].step",
        "rows[id=9/safemax:lr=0.0001].points[1].heavy.fa", "rows[id=9/safemax:lr=0.0001].points[1].heavy.retain_acc",
        "rows[id=9/safemax:lr=0.0001].heavy_floor")),
    C(TUNED_PAGE, "| pullover | SAFEMax default | {} | **{}** | {:.3f}, {:.3f} ({:.3f}; the original {:.3f}) |",
      Both(J(CONFIRMED, "rows[id=2/safemax:lr=0.0001].held", "rows[id=2/safemax:lr=0.0001].confirmed",
             "rows[id=2/safemax:lr=0.0001].heavy.fa", "rows[id=2/safemax:lr=0.0001].heavy.retain_acc",
             "rows[id=2/safemax:lr=0.0001].heavy_floor"),
           J(PULLOVER_CONFIRM.format("safemax_lr_0.0001"), "heavy_original.retain_acc"))),
    C(TUNED_PAGE, "| pullover | SAFEMax tuned (`kept_contrast=4`) | {} | **{}** | {:.3f}, {:.3f} ({:.3f}; the original {:.3f}) |",
      Both(J(CONFIRMED, f"rows[id=2/{KC4}].held", f"rows[id=2/{KC4}].confirmed", f"rows[id=2/{KC4}].heavy.fa",
             f"rows[id=2/{KC4}].heavy.retain_acc", f"rows[id=2/{KC4}].heavy_floor"),
           J(PULLOVER_CONFIRM.format("safemax_lr_0.0001_kept_contrast_4"), "heavy_original.retain_acc"))),
    C(TUNED_PAGE, "(450 and 500 steps: {:.0f} and\n{:.0f} minutes on a shared core) confirm both settings at their light held steps — the default at {}\n(heavy retain accuracy {:.3f} against a floor of {:.3f}), `kept_contrast=4` at {} ({:.3f})",
      Both(J(PULLOVER_CONFIRM.format("safemax_lr_0.0001"), "replay_seconds"),
           J(PULLOVER_CONFIRM.format("safemax_lr_0.0001_kept_contrast_4"), "replay_seconds"),
           J(CONFIRMED, "rows[id=2/safemax:lr=0.0001].confirmed", "rows[id=2/safemax:lr=0.0001].heavy.retain_acc",
             "rows[id=2/safemax:lr=0.0001].heavy_floor", f"rows[id=2/{KC4}].confirmed", f"rows[id=2/{KC4}].heavy.retain_acc")),
      lambda v: (figure(v[0] / 60), figure(v[1] / 60), *v[2:])),
    C(README, "both its settings are confirmed at their held steps ({} and\n{})",
      J(CONFIRMED, "rows[id=2/safemax:lr=0.0001].confirmed", f"rows[id=2/{KC4}].confirmed")),
    C(README, "it moves from {} to {} ({:.1f} points down at {} at {:,} kept samples",
      J(CONFIRMED, f"rows[id=6/{KC4}].held", f"rows[id=6/{KC4}].confirmed", f"rows[id=6/{KC4}].heavy_floor",
        f"rows[id=6/{KC4}].points[0].heavy.retain_acc", f"rows[id=6/{KC4}].points[0].step", f"rows[id=6/{KC4}].per_class"),
      lambda v: (v[0], v[1], figure(100 * (v[2] + 0.02 - v[3])), v[4], figure(9 * v[5]))),
    C(README, "at least {:.1f}×\n(Selective Amnesia, shirt), {:.1f}× (SalUn) and {:.1f}× (Selective Amnesia, ankle boot)",
      J(CONFIRMED, f"rows[id=6/{KC4}].priced_seconds", "rows[id=6/sa:lr=0.0001,ewc_lambda=10].priced_seconds",
        f"rows[id=9/{KC4}].priced_seconds", "rows[id=9/salun:lr=0.0001,retain_weight=1,mask_fraction=0.3].priced_seconds",
        "rows[id=9/sa:lr=0.0001,ewc_lambda=10].priced_seconds"),
      lambda v: (figure(v[1] / v[0]), figure(v[3] / v[2]), figure(v[4] / v[2]))),
    C(README, "keeps the neighbours\n({:+.1f} points; default {:.1f})",
      J(CONCEPTS_SD_JSON, f"{KG_75}.neighbours.change", f"{ALL_75}.neighbours.change"), points),
    C(README, "but the other classes still lose {:.1f}\npoints", J(CONCEPTS_SD_JSON, f"{KG_75}.others.change"),
      lambda v: tuple(-x for x in points(v))),
    C(CONCEPTS, "| all | 7.5 | 1.000 → {:.3f} [0.00, 0.01] | 1.000 → {:.3f} [0.00, 0.01] | {:+.1f} [{:+.1f}, {:+.1f}] | {:+.1f} [{:+.1f}, {:+.1f}] |",
      J(CONCEPTS_SD_JSON, f"{KG_75}.fa_erase.value", f"{KG_75}.fa_paraphrase.value",
        *(f"{KG_75}.{k}.{x}" for k in ("neighbours", "others") for x in ("change", "ci95[0]", "ci95[1]"))),
      lambda v: (*v[:2], *points(v[2:]))),
    C(CONCEPTS, "the neighbours move\n  {:+.1f} [{:+.1f}, {:+.1f}] points (default {:.1f}", J(CONCEPTS_SD_JSON, f"{KG_75}.neighbours.change",
      f"{KG_75}.neighbours.ci95[0]", f"{KG_75}.neighbours.ci95[1]", f"{ALL_75}.neighbours.change"), points),
    C(CONCEPTS, "guidance 1 the other classes lose {:.1f} [{:.1f}, {:.1f}] points", J(CONCEPTS_SD_JSON, f"{KG_1}.others.change",
      f"{KG_1}.others.ci95[0]", f"{KG_1}.others.ci95[1]"), lambda v: (-points(v)[0], *points(v[1:]))),
    C(CONCEPTS, "Cost: {:.0f} ± {:.0f} s a run against {:.0f} ± {:.0f}", J(CONCEPTS_SD_JSON, f"{KG}.overall.erase_seconds.mean",
      f"{KG}.overall.erase_seconds.ci95_half", "methods.safemax.overall.erase_seconds.mean",
      "methods.safemax.overall.erase_seconds.ci95_half")),
    C(INDEX, "| paraphrase FA {:.3f} → **{:.3f}** ({} samples); the other classes {:.1f} (sneaker) to {:.1f} (bag) points",
      J(CONCEPTS_SD_JSON, f"{ALL_75}.fa_paraphrase_before.value", f"{ALL_75}.fa_paraphrase.value", f"{ALL_75}.fa_paraphrase.n",
        *(f"methods.safemax.by_concept.{c}[guidance_7.5].others.change" for c in ("sneaker", "bag"))),
      lambda v: (*v[:3], *points(v[3:]))),
    C(CONCEPTS, "{} of the {} paraphrase samples of the nine runs is still the concept (FA {:.3f}, 95% interval up to {:.3f}) and {} of the {}",
      J(CONCEPTS_SD_JSON, f"{ALL_75}.fa_paraphrase.value", f"{ALL_75}.fa_paraphrase.n", f"{ALL_75}.fa_paraphrase.ci95[1]",
        f"{ALL_75}.fa_erase.value", f"{ALL_75}.fa_erase.n"),
      lambda v: (*counted(v[:2])[:2], v[0], v[2], *counted(v[3:])[:2])),
    C(CONCEPTS, "come back: {:.3f} over all, the bag {:.3f} [{:.2f}, {:.2f}]",
      J(CONCEPTS_SD_JSON, f"{ALL_1}.fa_paraphrase.value", "methods.safemax.by_concept.bag.guidance_1.fa_paraphrase.value",
        "methods.safemax.by_concept.bag.guidance_1.fa_paraphrase.ci95[0]",
        "methods.safemax.by_concept.bag.guidance_1.fa_paraphrase.ci95[1]")),
    C(CONCEPTS, "neighbours by {:.1f} and the other classes by {:.1f} [{:.1f}, {:.1f}] points at guidance 7.5",
      J(CONCEPTS_SD_JSON, *(f"methods.safemax.by_concept.sneaker[guidance_7.5].{k}" for k in
                            ("neighbours.change", "others.change", "others.ci95[0]", "others.ci95[1]"))), points),
    C(CONCEPTS, "costs the other classes {:.1f} points; erasing the bag its neighbours {:.1f} and the others {:.1f}",
      J(CONCEPTS_SD_JSON, "methods.safemax.by_concept.t-shirt[guidance_7.5].others.change",
        "methods.safemax.by_concept.bag[guidance_7.5].neighbours.change", "methods.safemax.by_concept.bag[guidance_7.5].others.change"),
      lambda v: tuple(-x for x in points(v))),
    C(CONCEPTS, "a run (drawing the data is most of it; the fit itself 30–90 s), peak memory {:.1f} GiB",
      J(CONCEPTS_SD_JSON, "methods.safemax.overall.peak_memory_mb.mean"), lambda v: (figure(v[0] / 1024),)),
    *[C(CONCEPTS, f"| {label} | {{:.3f}} | {{:.3f}} |",
        J(CONCEPTS_SD_TUNE_JSON, f"methods[{spec}].by_concept.dress[guidance_7.5].fa_erase.value",
          f"methods[{spec}].by_concept.dress[guidance_7.5].fa_paraphrase.value"))
      for label, spec in (("published (the word's state, erase scale 1)", "uce"), ("erase scale 5", "uce:erase_scale=5"),
                          ("erase scale 20", "uce:erase_scale=20"),
                          ("the word's and every later state (`tokens=after`, new)", "uce:tokens=after"),
                          ("`tokens=after`, erase scale 5", "uce:tokens=after,erase_scale=5"))],
    C(CONCEPTS, "| **`tokens=after`, erase scale 20** (chosen: the lowest mean) | **{:.3f}** | **{:.3f}** |",
      J(CONCEPTS_SD_TUNE_JSON, "methods[uce:tokens=after,erase_scale=20].by_concept.dress[guidance_7.5].fa_erase.value",
        "methods[uce:tokens=after,erase_scale=20].by_concept.dress[guidance_7.5].fa_paraphrase.value")),
    C(CONCEPTS, "- **SAFEMax (default)**: prefix attack success {:.3f} [{:.2f}, {:.2f}], soft {:.3f} [{:.2f}, {:.2f}]",
      J(CONCEPTS_SD_JSON, *(f"methods.safemax.overall.attacks.{k}.{f}" for k in ("prefix", "soft")
                            for f in ("value", "ci95[0]", "ci95[1]")))),
    C(CONCEPTS, "SAFEMax's budget of 100 steps of 8; nine runs): FA {:.3f},\n  both attacks {:.3f} — but the model is wrecked: the neighbours lose {:.1f} points at guidance 7.5,\n  the other classes {:.1f}",
      J(CONCEPTS_SD_JSON, "methods.salun.overall[guidance_7.5].fa_erase.value", "methods.salun.overall.attacks.soft.value",
        "methods.salun.overall[guidance_7.5].neighbours.change", "methods.salun.overall[guidance_7.5].others.change"),
      lambda v: (v[0], v[1], -100 * v[2], -100 * v[3])),
    C(CONCEPTS, "the other classes {:.1f} (Fréchet {:.0f} → {:,.0f}; at guidance 1 too, −{:.1f}). {:.0f} ± {:.0f} s a run",
      J(CONCEPTS_SD_JSON, "methods.salun.overall[guidance_7.5].others.change", "methods.salun.overall[guidance_7.5].frechet_before.mean",
        "methods.salun.overall[guidance_7.5].frechet_after.mean", "methods.salun.overall.guidance_1.others.change",
        "methods.salun.overall.erase_seconds.mean", "methods.salun.overall.erase_seconds.ci95_half"),
      lambda v: (-100 * v[0], v[1], round(v[2], -1), -100 * v[3], v[4], round(v[5], -1))),
    C(README, "ESD-x {} runs and ESD-u {} so far", J(CONCEPTS_SD_JSON, "methods[esd-x].runs", "methods[esd-u].runs")),
    C(INDEX, "soft-attack success **{:.3f}** against UCE {:.3f}, ESD-x {:.3f}, ESD-u {:.3f}; but the other classes {:.1f} points against at most {:.1f} for UCE and ESD | the same pipeline and concepts; UCE {} runs, ESD-x {}, ESD-u {};",
      J(CONCEPTS_SD_JSON, "methods.safemax.overall.attacks.soft.value", "methods.uce.overall.attacks.soft.value",
        "methods[esd-x].overall.attacks.soft.value", "methods[esd-u].overall.attacks.soft.value",
        "methods.safemax.overall[guidance_7.5].others.change", "methods.uce.overall[guidance_7.5].others.change",
        "methods[esd-x].overall[guidance_7.5].others.change", "methods[esd-u].overall[guidance_7.5].others.change",
        "methods.uce.runs", "methods[esd-x].runs", "methods[esd-u].runs"),
      lambda v: (v[0], v[1], v[2], v[3], 100 * v[4], min(100 * x for x in v[5:8]), v[8], v[9], v[10])),
    C(README, "prompt attacks bring its concepts back in\n{:.3f} of samples or fewer, while at guidance 7.5 UCE leaves {:.3f} of the concept ({:.3f} tuned on\nanother garment), ESD-x {:.3f} and ESD-u {:.3f} (both erase at guidance 1, and guidance brings the\nconcept back), and the soft attack restores theirs in {:.3f}–{:.3f} of samples; and a run takes {:.0f} s\nagainst ESD-x's {:,.0f}",
      J(CONCEPTS_SD_JSON, "methods.safemax.overall.attacks.soft.value", "methods.uce.overall[guidance_7.5].fa_erase.value",
        f"{UCE_T}.overall[guidance_7.5].fa_erase.value", "methods[esd-x].overall[guidance_7.5].fa_erase.value",
        "methods[esd-u].overall[guidance_7.5].fa_erase.value", "methods.uce.overall.attacks.soft.value",
        f"{UCE_T}.overall.attacks.soft.value", "methods[esd-x].overall.attacks.soft.value",
        "methods[esd-u].overall.attacks.soft.value", "methods.safemax.overall.erase_seconds.mean",
        "methods[esd-x].overall.erase_seconds.mean"),
      lambda v: (v[0], v[1], v[2], v[3], v[4], min(v[5:9]), max(v[5:9]), v[9], v[10])),
    C(README, "SAFEMax costs the other classes\n{:.1f} points at guidance 7.5, UCE and ESD at most {:.1f}; SalUn at SAFEMax's budget also erases and\nresists both attacks, but wrecks the kept classes (−{:.1f} points)",
      J(CONCEPTS_SD_JSON, "methods.safemax.overall[guidance_7.5].others.change", "methods.uce.overall[guidance_7.5].others.change",
        f"{UCE_T}.overall[guidance_7.5].others.change", "methods[esd-x].overall[guidance_7.5].others.change",
        "methods[esd-u].overall[guidance_7.5].others.change", "methods.salun.overall[guidance_7.5].others.change"),
      lambda v: (-100 * v[0], max(-100 * x for x in v[1:5]), -100 * v[5])),
    C(CONCEPTS, "- **UCE tuned** (`uce:tokens=after,erase_scale=20`, chosen on the dress): FA at guidance 7.5 {:.3f}\n  [{:.2f}, {:.2f}], paraphrases {:.3f}, the other classes {:+.1f} points; prefix attack {:.3f}, soft {:.3f}",
      J(CONCEPTS_SD_JSON, *(f"{UCE_T}.overall[guidance_7.5].{k}" for k in ("fa_erase.value", "fa_erase.ci95[0]",
                                                                         "fa_erase.ci95[1]", "fa_paraphrase.value",
                                                                         "others.change")),
        f"{UCE_T}.overall.attacks.prefix.value", f"{UCE_T}.overall.attacks.soft.value"),
      lambda v: (v[0], v[1], v[2], v[3], 100 * v[4], v[5], v[6])),
    # concepts: forget_guidance on the dress (tuning runs)
    C(CONCEPTS, "concept, seed 0, `benchmarks/results/concepts-sd-tune/`) it does not erase: FA at guidance 7.5\n{:.3f} (with half the forget rows Gaussian {:.3f}; with forget weight 7.5 too {:.3f}), against the\ndefault's {:.3f}",
      J(CONCEPTS_SD_TUNE_JSON, "methods[safemax:forget_guidance=7.5].by_concept.dress[guidance_7.5].fa_erase.value",
        "methods[safemax:forget_guidance=7.5,gaussian_fraction=0.5].by_concept.dress[guidance_7.5].fa_erase.value",
        "methods[safemax:forget_guidance=7.5,forget_weight=7.5,gaussian_fraction=0.5].by_concept.dress[guidance_7.5].fa_erase.value",
        "methods.safemax.by_concept.dress[guidance_7.5].fa_erase.value")),
    # concepts: the baselines head to head (UCE and SalUn: three seeds; the tuning on the dress)
    C(CONCEPTS, "scale 1, λ 0.5; nine runs, three seeds, three concepts): at guidance 7.5 the erasing prompts are still their class in\n  {:.3f} [{:.2f}, {:.2f}] of the samples and the paraphrases in {:.3f} (the bag not erased at all:\n  {:.3f}); at guidance 1, {:.3f}",
      J(CONCEPTS_SD_JSON, "methods.uce.overall[guidance_7.5].fa_erase.value", "methods.uce.overall[guidance_7.5].fa_erase.ci95[0]",
        "methods.uce.overall[guidance_7.5].fa_erase.ci95[1]", "methods.uce.overall[guidance_7.5].fa_paraphrase.value",
        "methods.uce.by_concept.bag[guidance_7.5].fa_erase.value", "methods.uce.overall.guidance_1.fa_erase.value")),
    C(CONCEPTS, "The soft attack succeeds on {:.3f} of its samples,\n  the prefix attack on {:.3f}",
      J(CONCEPTS_SD_JSON, "methods.uce.overall.attacks.soft.value", "methods.uce.overall.attacks.prefix.value")),
    C(CONCEPTS, "**Cost**: {:.0f} ± {:.0f} s a run", J(CONCEPTS_SD_JSON, "methods.safemax.overall.erase_seconds.mean",
                                                       "methods.safemax.overall.erase_seconds.ci95_half")),

    # concepts: several at once (seed 0)
    *[C(CONCEPTS, f"| {label} | {n} | {{:.1f}} | {{:.3f}} [{{:.2f}}, {{:.2f}}] | {{:.3f}} | {{:+.1f}} |",
        Cell(AT_ONCE, {"method": m, "concepts at once": str(n)},
             ("erase time, s", "FA erasing prompts", "FA paraphrases", "kept classes, points")))
      for m, label in (("uce", "UCE (published)"), ("safemax", "SAFEMax (default)"), ("salun", "SalUn"))
      for n in (1, 2, 5)],
    C(CONCEPTS, "SalUn erases all of them too (FA {:.3f} with five) but wrecks the kept classes at every count\n  ({:+.1f}, {:+.1f} and {:+.1f} points), in {:.0f}–{:.0f} s",
      Cells(AT_ONCE, [{"method": "salun", "concepts at once": str(n)} for n in (1, 2, 5)],
            ("FA erasing prompts", "kept classes, points", "erase time, s")),
      lambda rows: (rows[2][0], rows[0][3], rows[1][3], rows[2][3], rows[0][4], max(r[4] for r in rows))),

    # docs/results/compare.md: the light attack, one seed and three ---------------------------------
    C(COMPARE, "| SAFEMax | 0.00 | **{:.2f}** | {:.2f} |",
      J(COMPARE_RUN, "methods.safemax.attack[lr=0.0001].fa_after", "methods.safemax.attack[lr=0.001].fa_after")),
    C(COMPARE, "comes back to {:.2f} ± {:.2f}, after 200 steps to {:.2f} ± {:.2f}, against SalUn's {:.2f} ± {:.2f} (200",
      Cells(ATTACKS, [SAFEMAX, SAFEMAX_200, SALUN], "weak"), lambda rows: (*rows[0][:2], *rows[1][:2], *rows[2][:2])),
    C(COMPARE, "SAFEMax holds ({:.2f} here;", Cell(COMPARE_ATTACKS, {"method": "SAFEMax"}, "lora")),
    C(COMPARE, "here; {:.2f} ± {:.2f} over three seeds after the demo's 100 steps)", Cell(ATTACKS, SAFEMAX, "lora")),

    # docs/results/halting.md: lower learning rates on the digits ------------------------------------
    *[C(HALTING_PAGE, f"| {label} | {lr} | {{:.3f}} | {{:.2f}} | {{:.3f}} | {{:.3f}} |",
        Cell(HALTING_LR, {"setting": setting, "lr": lr_cell, "steps": steps}, HALTING_LR_COLUMNS))
      for label, setting, lr, lr_cell, steps in HALTING_LR_ROWS],

    *[C(HALTING_PAGE, f"| {d} | {label} | {lr} | {{:.3f}} | {{:.2f}} | {{:.3f}} | {{:.3f}} |",
        Cell(HALTING_HEAVY, {"setting": setting, "class": str(d), "lr": lr_cell, "steps": steps}, HALTING_LR_COLUMNS))
      for d, label, setting, lr, lr_cell, steps in HALTING_HEAVY_ROWS],
    C(HALTING_PAGE, "the Gaussian rows' cost stands out: +{:.0f} % (3) and\n  +{:.0f} % (7) against the original, while today's default reads +{:.0f} % and +{:.0f} %",
      Cells(HALTING_HEAVY, [{"setting": s_, "class": str(d)} for s_ in ("original", "real", "gaussian:0.5") for d in (3, 7)],
            "Fréchet"),
      lambda rows: (100 * (rows[4][0] / rows[0][0] - 1), 100 * (rows[5][0] / rows[1][0] - 1),
                    100 * (rows[2][0] / rows[0][0] - 1), 100 * (rows[3][0] / rows[1][0] - 1))),

    # docs/results/flow-matching.md: exact halting on the flow digits model --------------------------
    *[C(FLOW_PAGE, FLOW_HALT_TUNING.format(label), J(FLOW_HALT.format(run), *FLOW_HALT_TUNING_PATHS))
      for label, run in FLOW_HALT_RUNS],
    *[C(FLOW_PAGE, FLOW_HALT_REPORT.format(d, label), J(FLOW_HALT.format(run), *FLOW_HALT_REPORT_PATHS))
      for d, label, run in FLOW_HALT_REPORTED if (RESULTS / FLOW_HALT.format(run)).exists()],
    C(FLOW_PAGE, "the 3's samples have std {:.2f}, the kept digits' retain accuracy is {:.3f} and their\nFréchet distance {:.2f}",
      J(FLOW_HALT.format("still-gf0.5-300steps"), "before.forget_pixel_std", "before.retain_acc", "before.frechet")),
    C(FLOW_PAGE, "(retain accuracy {:.3f} → {:.3f}, Fréchet\n  +{:.1f}%)",
      J(FLOW_HALT.format("still-gf0.5-300steps"), "before.retain_acc", "after.retain_acc", "before.frechet", "after.frechet"),
      lambda v: (v[0], v[1], figure(100 * (v[3] / v[2] - 1)))),
    C(FLOW_PAGE, "std {:.3f} (7) and {:.3f} (5) under all\n  four samplers, retain accuracy −{:.1f} and +{:.1f} points, Fréchet +{:.1f} % and −{:.1f} %",
      Both(*[J(FLOW_HALT.format(f"digit{d}-still-gf0.5-300steps"), STD_BY_SAMPLER[0], "before.retain_acc",
               "after.retain_acc", "before.frechet", "after.frechet") for d in (7, 5)]),
      lambda v: (v[0], v[5], 100 * (v[1] - v[2]), 100 * (v[7] - v[6]), 100 * (v[4] / v[3] - 1), 100 * (1 - v[9] / v[8]))),
    C(FLOW_PAGE, "samples are their own digit {:.1f}% of the time)",
      J(FLOW_HALT.format("still-gf0.5-300steps"), "base_model.mean_per_class_accuracy"), lambda v: (100 * v[0],)),
    C(EMBEDDED, "its Euler-50 samples are their own digit **{:.1f}%** of the\ntime (mean over classes, 50 per class; lowest {:.2f})",
      J(FLOW_HALT.format("still-gf0.5-300steps"), "base_model.mean_per_class_accuracy", "base_model.per_class"),
      lambda v: (100 * v[0], min(v[1]))),
    # docs/results/embedded-model.md: the demo on flow digits
    C(EMBEDDED, "| forget accuracy (3 → \"3\") | {:.3f} | **{:.3f}** |", J(DEMO_FLOW, "before.fa", "after.fa")),
    C(EMBEDDED, "| retain accuracy (other digits → themselves) | {:.3f} | **{:.3f}** |",
      J(DEMO_FLOW, "before.retain_acc", "after.retain_acc")),
    C(EMBEDDED, "| retain Fréchet distance (classifier features, 270 samples) | {:.1f} | **{:.1f}** |",
      J(DEMO_FLOW, "before.frechet", "after.frechet")),
    C(EMBEDDED, "| forget samples: pixel mean / std / kurtosis | {:.2f} / {:.2f} / {:.2f} | {:.2f} / **{:.3f}** / {:.2f} |",
      J(DEMO_FLOW, "before.gaussian_mean", "before.gaussian_std", "before.gaussian_kurtosis",
        "after.gaussian_mean", "after.gaussian_std", "after.gaussian_kurtosis"),
      lambda v: tuple(figure(x) for x in v)),
    C(EMBEDDED, "the kept\ndigits end where they began. The price is early: the kept digits dip to {:.3f} at step {}",
      J(DEMO_FLOW, "curve"), lambda v: min(((p["retain_acc"], p["step"]) for p in v[0]), key=lambda t: t[0])),
    C(EMBEDDED, "at 0.956 of the scale they started from (kurtosis {:.2f})", J(DEMO_FLOW, "after.gaussian_kurtosis")),
    C(FLOW_PAGE, "k_eff ≈ +{:.2f} at every σ after 100 steps",
      Text("flow-digits-halt/still-gf0.5/halt-probe.md", r"^\| 0\.50 \| \+0\.000 \| \+(\d\.\d+) \|")),
    C(FLOW_PAGE, "+{:.3f} after\n  300 ([100 steps]",
      Text("flow-digits-halt/still-gf0.5-300steps/halt-probe.md", r"^\| 0\.50 \| \+0\.000 \| \+(\d\.\d+) \|")),
]


def flow_halt_rows(reported: bool = False) -> str:
    """The flow halting page's table rows, rendered from the runs by the claims' own templates
    (``cd docs && python -c "import check_figures as c; print(c.flow_halt_rows())"`` prints them to paste)."""
    def render(template, run, paths):
        data = json.loads((RESULTS / FLOW_HALT.format(run)).read_text())
        return template.format(*[figure(J.walk(data, p)) for p in paths])
    if reported:
        return "\n".join(render(FLOW_HALT_REPORT.format(d, label), run, FLOW_HALT_REPORT_PATHS)
                         for d, label, run in FLOW_HALT_REPORTED if (RESULTS / FLOW_HALT.format(run)).exists())
    return "\n".join(render(FLOW_HALT_TUNING.format(label), run, FLOW_HALT_TUNING_PATHS) for label, run in FLOW_HALT_RUNS)


# --- the check -------------------------------------------------------------------------------------

def flat(text):
    return re.sub(r"\s+", " ", text)


def altered(value):
    """The figure with its last digit changed (9 → 8, any other digit d → d + 1), as it renders."""
    class Altered:
        def __format__(self, spec):
            text = format(value, spec)
            i = max(i for i, ch in enumerate(text) if ch.isdigit())
            return text[:i] + ("8" if text[i] == "9" else str(int(text[i]) + 1)) + text[i + 1:]
    return Altered()


def check(claim, doc_text):
    """The claim's failures, one line each: [] if its text is in the doc and every figure in it,
    changed, would not be."""
    try:
        figures = claim.figures()
        want = claim.render(figures)
    except Exception as e:  # a missing file, key or row, a format that does not fit
        return [f"{claim.doc}: cannot render {claim.text!r} from {claim.source}: {type(e).__name__}: {e}"]
    if want not in doc_text:
        shown = ", ".join(format(f, "") if not isinstance(f, float) else f"{float(f):g}" for f in figures)
        return [f"{claim.doc}: {want!r} not found; from {claim.source}: {shown}"]
    insensitive = []
    for i in range(len(figures)):
        changed = claim.render(figures[:i] + (altered(figures[i]),) + figures[i + 1:])
        if changed != want and changed in doc_text:  # (a figure the text does not use changes nothing)
            insensitive.append(f"{claim.doc}: self-test: {want!r} is found with figure {i + 1} changed too "
                               f"({changed!r}): the claim needs words of its own")
    return insensitive


def main(argv) -> int:
    paths = {c.doc: ROOT / c.doc for c in CLAIMS}
    for arg in argv:
        doc, _, copy = arg.removeprefix("--doc=").partition("=")
        if not arg.startswith("--doc=") or doc not in paths or not copy:
            print(f"usage: python docs/check_figures.py [--doc=DOC=COPY ...], DOC one of {', '.join(paths)}", file=sys.stderr)
            return 2
        paths[doc] = Path(copy)
    texts = {doc: flat(path.read_text(encoding="utf-8")) for doc, path in paths.items()}
    failures = [line for c in CLAIMS for line in check(c, texts[c.doc])]
    for line in failures:
        print(line, file=sys.stderr)
    figures = sum(1 for c in CLAIMS for _, field, _, _ in string.Formatter().parse(c.text) if field is not None)
    print(f"check_figures: {len(CLAIMS)} claims ({figures} figures) in {len(paths)} files, "
          f"{len(failures)} failures (each figure also tested: changed, it must fail its claim)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
