"""The documentation stays true to the code: generated options tables are current, and every cited doc exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITING = ("synthdp", "benchmarks", "examples", "scripts", "tests", "docs")
DOC_PATH = re.compile(r"docs/[A-Za-z0-9_./-]+\.md")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def text_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in CITING:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md", ".sh", ".toml"}]
    return files


def anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {anchor(line.lstrip("#")) for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")}


def test_options_tables_match_the_option_declarations() -> None:
    stale = load_script("options_tables").stale()
    assert not stale, f"stale options tables in {[str(p) for p in stale]}: run python scripts/options_tables.py"


def test_every_cited_doc_exists() -> None:
    missing = {f"{path.relative_to(ROOT)} cites {cited}" for path in text_files()
               for cited in DOC_PATH.findall(path.read_text(encoding="utf-8", errors="replace"))
               if not (ROOT / cited).exists()}
    assert not missing, "\n".join(sorted(missing))


def test_links_between_docs_resolve() -> None:
    """Relative links in the README and docs/ reach a file, and a #fragment reaches one of its headings."""
    broken = []
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            file_part, _, fragment = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif fragment and dest.is_file() and fragment not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
