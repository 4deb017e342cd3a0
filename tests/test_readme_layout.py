"""The README and docs/architecture.md describe this repository: no link leaves it, every module they name exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def named_paths(line: str) -> list[Path]:
    """The first path on a line, and every ``x.py`` named after it, relative to that path's folder."""
    first = Path(line.split()[0])
    folder = first if line.split()[0].endswith("/") else first.parent
    return [first] + [folder / name for name in re.findall(r"(?<![\w/.])(\w+\.py)\b", line.split(None, 1)[-1])]


def test_the_readme_points_nowhere_outside_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    assert "../" not in text
    assert "shared/DESIGN" not in text
    assert "../" not in ARCHITECTURE.read_text(encoding="utf-8")


def test_the_layout_links_the_architecture_and_names_only_what_exists() -> None:
    layout = section(README.read_text(encoding="utf-8"), "Layout")
    assert "[docs/architecture.md](docs/architecture.md)" in layout
    lines = [line.strip() for line in layout.splitlines() if line.startswith("    ") and line.strip()]
    assert len(lines) > 20
    named = [path for line in lines for path in named_paths(line)]
    assert [str(p) for p in named if not (ROOT / p).exists()] == []
    # What the issue found missing from the old Layout is there now.
    for path in ("streamfilter/diff", "streamfilter/store/hf.py", "streamfilter/verify.py", "streamfilter/status.py",
                 "streamfilter/progress.py", "streamfilter/metrics.py", "streamfilter/demo.py",
                 "streamfilter/diffdemo.py"):  # fmt: skip
        assert Path(path) in {Path(str(p).rstrip("/")) for p in named}, path


def test_the_layout_names_every_module() -> None:
    """A module added without a line in the Layout is caught here, not by the next reader."""
    layout = section(README.read_text(encoding="utf-8"), "Layout")
    lines = [line.strip() for line in layout.splitlines() if line.startswith("    ") and line.strip()]
    named = {Path(str(p).rstrip("/")) for line in lines for p in named_paths(line)}
    modules = [p.relative_to(ROOT) for p in (ROOT / "streamfilter").rglob("*.py") if p.name not in ("__init__.py",
               "__main__.py", "_version.py")]  # fmt: skip
    # A package named on its own line (``streamfilter/diff/``) names what is in it, when its line lists no files.
    listed_packages = {p for p in named if (ROOT / p).is_dir()}
    missing = [
        str(m) for m in modules
        if m not in named and not any(m.parent == pkg and not _lists_files(lines, pkg) for pkg in listed_packages)
    ]  # fmt: skip
    assert missing == [], missing


def _lists_files(lines: list[str], package: Path) -> bool:
    return any(Path(line.split()[0].rstrip("/")) == package and ".py" in line for line in lines)


def test_the_architecture_names_only_modules_that_exist() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    rows = [line for line in section(text, "Modules").splitlines() if line.startswith("| `streamfilter/")]
    assert len(rows) > 15
    missing = []
    for row in rows:
        first, rest = row.split("|")[1], row.split("|", 2)[2]
        paths = re.findall(r"`(streamfilter/[\w/.]+)`", first)
        folder = Path(paths[0]) if paths[0].endswith("/") else Path(paths[0]).parent
        named = [Path(p) for p in paths] + [folder / n for n in re.findall(r"`(\w+\.py)`", first + rest)]
        missing += [str(p) for p in named if not (ROOT / p).exists()]
    for path in re.findall(r"`(streamfilter/[\w/]+(?:\.py)?)`", text):
        if not (ROOT / path).exists():
            missing.append(path)
    assert missing == []
