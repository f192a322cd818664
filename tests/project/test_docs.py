"""The README stays a landing page, CI runs the README's test command, and the manual's links hold.

The links are also checked by `mkdocs build --strict` in the test command; the checks here need no
mkdocs, so a broken link or a missing page fails the suite wherever it runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
DOCS = ROOT / "docs"
MAX_README_LINES = 200

# A Markdown link or image whose target is a relative path (not a URL, not an in-page anchor).
LINK = re.compile(r"!?\[[^\]]*\]\((?!https?://|mailto:|#)([^)\s]+)\)")


def readme_test_command(text: str) -> str:
    """The one command of the README's "Tests (fresh machine)" block."""
    block = re.search(r"^## Tests \(fresh machine\)\n\n```bash\n(.*?)\n```", text, re.S | re.M)
    assert block, "README has no `## Tests (fresh machine)` section with a bash block"
    lines = block.group(1).splitlines()
    assert len(lines) == 1, "the README's test command is one line"
    return lines[0]


def ci_command() -> str:
    """The line .ci/run runs after its header and `rm -rf .venv .venv-vllm`."""
    lines = [ln for ln in CI.read_text().splitlines() if ln.strip()]
    i = lines.index("rm -rf .venv .venv-vllm")
    rest = lines[i + 1 :]
    assert len(rest) == 1, f".ci/run runs one command after the cleanup, found {len(rest)} lines"
    return rest[0]


def test_readme_is_a_landing_page() -> None:
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, (
        f"README.md has {n} lines (at most {MAX_README_LINES}); the manual goes in docs/"
    )


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    assert ci_command() == readme_test_command(README.read_text())


def test_the_test_command_builds_the_manual_strictly() -> None:
    cmd = readme_test_command(README.read_text())
    assert "&& lint-imports && mkdocs build --strict && pytest -q" in cmd


def test_the_test_command_reader_rejects_a_second_line() -> None:
    two = "## Tests (fresh machine)\n\n```bash\npytest -q\nruff check .\n```\n"
    with pytest.raises(AssertionError, match="one line"):
        readme_test_command(two)


def nav_pages(items: list) -> list[str]:
    out: list[str] = []
    for item in items:
        for value in item.values() if isinstance(item, dict) else [item]:
            out.extend(nav_pages(value) if isinstance(value, list) else [value])
    return out


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = nav_pages(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert len(set(nav)) == len(nav), "a page is twice in the nav"


@pytest.mark.parametrize(
    "page",
    [README, *sorted(DOCS.rglob("*.md"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_relative_links_point_at_files_that_exist(page: Path) -> None:
    # Fenced code is not Markdown: a `](x)` inside it is no link.
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).resolve().exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_readme_links_every_manual_page() -> None:
    linked = {t.split("#", 1)[0] for t in LINK.findall(README.read_text())}
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")} | {"docs/benchmarks/README.md"}
    assert not pages - linked, f"README does not link {sorted(pages - linked)}"


def test_the_annotated_spec_is_the_quickstart_spec() -> None:
    # The README annotates search_spaces/quickstart.yaml: the same spec, only the comments differ.
    block = re.search(r"^## A spec, annotated\n.*?```yaml\n(.*?)```", README.read_text(), re.S | re.M)
    assert block, "README has no annotated spec"
    shown = yaml.safe_load(block.group(1))
    assert shown == yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
