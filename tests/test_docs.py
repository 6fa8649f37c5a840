"""The docs a user reads: every relative link and anchor in README.md, docs/*.md and
benchmarks/README.md resolves, every repository path they and the configs' comments name exists,
and every `make` target the README names exists in the Makefile."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation out, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def anchors(md: Path) -> set[str]:
    body = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.*)$", body, flags=re.M)}


def broken_links(root: Path) -> list[str]:
    """'file: target' for each relative link (or anchor) that does not resolve."""
    bad = []
    extra = [f for f in [root / "benchmarks" / "README.md"] if f.is_file()]
    for md in [root / "README.md", *sorted((root / "docs").glob("*.md")), *extra]:
        text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists():
                bad.append(f"{md.relative_to(root)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{md.relative_to(root)}: {target} (no such heading)")
    return bad


def missing_make_targets(root: Path) -> list[str]:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (root / "Makefile").read_text(), flags=re.M))
    text = (root / "README.md").read_text()
    code = re.findall(r"`[^`\n]+`", text) + re.findall(r"^(?: {4}|\t).*$", text, flags=re.M)  # spans, code lines
    named = {t for c in code for t in re.findall(r"\bmake ([a-z][a-z-]*)", c)}
    return sorted(named - targets)


def test_every_relative_link_and_anchor_resolves():
    assert broken_links(ROOT) == []


def test_every_make_target_the_readme_names_exists():
    assert missing_make_targets(ROOT) == []


def test_the_link_check_fails_on_a_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "folds.md").write_text("# Folds\n\n## The policy\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/folds.md#the-policy) [gone](docs/blend.md) [bad anchor](docs/folds.md#no-such) [web](https://x.y)\n"
        "```\n[in code](nowhere.md)\n```\n"
    )
    (tmp_path / "Makefile").write_text("all:\n\ttrue\n")
    assert broken_links(tmp_path) == [
        "README.md: docs/blend.md (no such file)",
        "README.md: docs/folds.md#no-such (no such heading)",
    ]
    (tmp_path / "README.md").write_text("`make all`, then to make one:\n\n    make blend\n")
    assert missing_make_targets(tmp_path) == ["blend"]


TRACKED = ("src/", "configs/", "benchmarks/", "docs/", "tests/", ".ci/")
PATHLIKE = re.compile(r"(?<![\w./-])((?:src|configs|benchmarks|docs|tests|\.ci)/[\w./-]*[\w/])")


def dead_paths(root: Path) -> list[str]:
    """'file: path' for each repository path (src/..., configs/..., docs/..., benchmarks/..., tests/...)
    named in README.md, docs/*.md, benchmarks/README.md or a config's comments that does not exist.
    Templates ({name}, *) are skipped: they name generated files."""
    bad = []
    files = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "configs").glob("*.yaml"))]
    files += [f for f in [root / "benchmarks" / "README.md"] if f.is_file()]
    for f in files:
        text = f.read_text()
        for m in PATHLIKE.finditer(text):
            path = m.group(1).rstrip(".")
            end = m.end(1)
            if end < len(text) and text[end] in "{*<":
                continue
            if not (root / path).exists():
                bad.append(f"{f.relative_to(root)}: {path}")
    return sorted(set(bad))


def test_every_repository_path_the_docs_and_configs_name_exists():
    assert dead_paths(ROOT) == []


def test_the_path_check_sees_a_dead_path(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("")
    (tmp_path / "README.md").write_text("see `src/a.py`, src/gone.py and features/{set}/ and src/x_{name}.py\n")
    (tmp_path / "configs" / "c.yaml").write_text("# (see src/smart_product/blend.py)\nx: 1\n")
    assert dead_paths(tmp_path) == ["README.md: src/gone.py", "configs/c.yaml: src/smart_product/blend.py"]
