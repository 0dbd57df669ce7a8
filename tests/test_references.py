"""Comments and docstrings only point at files that are in the repository."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SKIP = {".git", "build", "dist", "node_modules"}
FILE_REFERENCE = re.compile(r"(?<![\w/.-])((?:\.?[\w-]+/)*[\w-]+\.md)\b|(" + re.escape(".notes") + "/)")


def python_files() -> list[Path]:
    return [p for p in REPO.rglob("*.py")
            if not any(part in SKIP or part.startswith(".venv") for part in p.relative_to(REPO).parts)]


def test_referenced_files_exist():
    names = {p.name for p in REPO.rglob("*.md") if ".venv" not in str(p)}
    missing = []
    for path in python_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for markdown, notes in FILE_REFERENCE.findall(line):
                if notes or not ((REPO / markdown).exists() or Path(markdown).name in names):
                    missing.append(f"{path.relative_to(REPO)}:{number}: {markdown or notes}")
    assert not missing, "references to files not in the repo:\n" + "\n".join(missing)
