"""The docs name what the code has: every module of unikd/ in the architecture's layout, every pairing file in
the README's table."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fenced_block_after(text: str, heading: str) -> str:
    """The first ``` block after `heading`."""
    rest = text[text.index(heading) :]
    start = rest.index("```\n") + len("```\n")
    return rest[start : rest.index("```", start)]


def names_file(text: str, name: str) -> bool:
    """Whether `name` (a file name) stands in `text` as a word of its own, not inside a longer name."""
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w])", text) is not None


def test_architecture_layout_names_every_module() -> None:
    layout = fenced_block_after((ROOT / "docs/ARCHITECTURE.md").read_text(), "## Layout")
    modules = sorted(path for path in (ROOT / "unikd").rglob("*.py") if path.name != "__init__.py")
    assert len(modules) > 100
    missing = [str(path.relative_to(ROOT)) for path in modules if not names_file(layout, path.name)]
    assert missing == [], f"docs/ARCHITECTURE.md's layout does not name {missing}"


def test_names_file_takes_whole_names_only() -> None:
    assert names_file("heads/center_head.py (a head)", "center_head.py")
    assert names_file("fpn.py; lss.py", "lss.py")
    assert not names_file("depth_lss.py", "lss.py")
    assert not names_file("step_checkpoints.py", "checkpoints.py")
    assert not names_file("checkpoints.pyc", "checkpoints.py")


def test_readme_pairing_table_lists_every_pairing_file() -> None:
    """Each row is a file name's ending (`..._camera_exp_distill_lidar.py`); a file belongs to the row with the
    longest ending it has. Every pairing file has a row, and every row a file."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| file | student <- teacher |") :].split("\n\n", 1)[0]
    endings = re.findall(r"^\| `\.\.\.(_\w+\.py)` \|", table, flags=re.MULTILINE)
    files = sorted(path.name for path in (ROOT / "exps/nuscenes/BEVFusion").glob("*_distill_*.py"))
    assert len(files) == 11
    rows = {}
    for name in files:
        matching = [ending for ending in endings if name.endswith(ending)]
        assert matching, f"README.md's pairing table has no row for {name}"
        rows[name] = max(matching, key=len)
    assert sorted(rows.values()) == sorted(endings), "a row of README.md's pairing table names no file, or two rows one"
