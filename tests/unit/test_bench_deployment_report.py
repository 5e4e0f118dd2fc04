"""``python -m bench --deployment default`` writes its subsection in place and keeps every other section."""

from __future__ import annotations

from pathlib import Path

from bench._report import DEPLOY_SECTION, DEPLOY_SUBSECTION, NOTES_MARKER, write_deployment


def test_a_missing_section_is_added_below_the_notes(tmp_path: Path) -> None:
    path = tmp_path / "b.md"
    path.write_text(f"# Benchmarks\n\ntable\n\n{NOTES_MARKER}\n\n## Other\n\ntext\n")
    write_deployment(path, [DEPLOY_SUBSECTION, "", "first"])
    text = path.read_text()
    assert text.index(NOTES_MARKER) < text.index("## Other") < text.index(DEPLOY_SECTION)
    assert text.endswith(f"{DEPLOY_SECTION}\n\n{DEPLOY_SUBSECTION}\n\nfirst\n")


def test_the_subsection_is_replaced_and_its_neighbours_kept(tmp_path: Path) -> None:
    path = tmp_path / "b.md"
    path.write_text(
        f"# B\n\n{NOTES_MARKER}\n\n{DEPLOY_SECTION}\n\n### Someone's CPU work\n\ntheirs\n\n"
        f"{DEPLOY_SUBSECTION}\n\nold\n\n### After\n\nalso theirs\n\n## Next section\n\nkept\n"
    )
    write_deployment(path, [DEPLOY_SUBSECTION, "", "new"])
    text = path.read_text()
    assert "old" not in text and f"{DEPLOY_SUBSECTION}\n\nnew\n" in text
    assert "### Someone's CPU work\n\ntheirs" in text and "### After\n\nalso theirs" in text
    assert text.endswith("## Next section\n\nkept\n")
    assert text.count(DEPLOY_SECTION) == 1


def test_a_section_without_the_subsection_gets_it_at_its_end(tmp_path: Path) -> None:
    path = tmp_path / "b.md"
    path.write_text(f"{NOTES_MARKER}\n\n{DEPLOY_SECTION}\n\n### Theirs\n\nx\n\n## Next\n\ny\n")
    write_deployment(path, [DEPLOY_SUBSECTION, "", "mine"])
    text = path.read_text()
    assert text.index("### Theirs") < text.index(DEPLOY_SUBSECTION) < text.index("## Next")
