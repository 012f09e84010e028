"""Check that every relative link in the repository's top-level Markdown files points to a file
that exists (and, for a link into a Markdown file with #anchor, to a heading there).

mkdocs build --strict checks the links inside docs/; README.md and CONTRIBUTING.md are outside the
site, where GitHub renders them, so this checks them. External links (http:, https:, mailto:)
cannot be checked offline and are skipped. Usage: python docs/check_links.py [FILE.md ...]
"""
import re
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ["README.md", "CONTRIBUTING.md"]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")


def anchors(path: Path) -> set:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped, spaces → '-'."""
    out, inside = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            inside = not inside
        if inside or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
        out.add(text.replace(" ", "-"))
    return out


def links(path: Path):
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
        if inside:
            continue
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        for m in LINK.finditer(line):
            yield number, m.group(1)


def check(path: Path) -> list:
    errors = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        if not dest.exists():
            errors.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest):
            errors.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return errors


def main(argv) -> int:
    files = [Path(a).resolve() for a in argv] or [ROOT / f for f in FILES]
    errors, count = [], 0
    for f in files:
        if not f.exists():
            errors.append(f"{f}: missing")
            continue
        count += sum(1 for _ in links(f))
        errors += check(f)
    for e in errors:
        print(e, file=sys.stderr)
    print(f"check_links: {count} links in {len(files)} files, {len(errors)} broken")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
