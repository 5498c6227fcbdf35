"""docs/interfaces.md's module map matches the tree: every module and package of bcmcore/ and
data_prep/ has its line, and every line names something that exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `((?:bcmcore|data_prep)/[^`]*)` \|")


def map_entries(text):
    """The paths named by the rows of the '## Module map' section."""
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for line in section.splitlines() if (m := ROW.match(line))]


def tree_entries():
    """Every module (a .py other than __init__.py) and every package (as 'dir/') of the library."""
    out = set()
    for top in ("bcmcore", "data_prep"):
        for f in (ROOT / top).rglob("*.py"):
            rel = f.relative_to(ROOT).as_posix()
            out.add(rel[: -len("__init__.py")] if f.name == "__init__.py" else rel)
    return out


def test_every_module_has_one_line_and_every_line_a_module():
    listed = map_entries((ROOT / "docs" / "interfaces.md").read_text())
    assert len(listed) == len(set(listed)), "a module is listed twice"
    tree = tree_entries()
    assert sorted(tree - set(listed)) == [], "modules missing from the map in docs/interfaces.md"
    assert sorted(set(listed) - tree) == [], "map lines naming no module of the tree"


def test_the_map_check_sees_a_missing_module():
    """The check is not vacuous: a map without one line is caught."""
    text = (ROOT / "docs" / "interfaces.md").read_text()
    listed = map_entries(text)
    assert "bcmcore/editing.py" in listed and len(listed) > 50
    cut = "\n".join(line for line in text.splitlines() if "`bcmcore/editing.py`" not in line)
    assert tree_entries() - set(map_entries(cut)) == {"bcmcore/editing.py"}
