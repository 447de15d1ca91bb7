"""The docs stay true: the config reference (docs/config.md) matches the config models, the README names every
command and links each to a docs page that explains it, and every relative link in README.md and docs/ resolves."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str):
    """The lines of a markdown text outside fenced code blocks."""
    fenced = False
    for line in text.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def links(text: str) -> list[str]:
    """Targets of the markdown links and images of a text, outside code blocks and code spans."""
    return [m.group(1) for line in prose_lines(text) for m in LINK.finditer(CODE_SPAN.sub("", line))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link targets kept as their text, lowercased, punctuation dropped, spaces to
    hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for target in links(path.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{path.relative_to(root)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{path.relative_to(root)}: {target} (no heading with anchor #{anchor})")
    return problems


def all_commands() -> list[str]:
    from typer.main import get_command

    from rlhfkit.cli import app

    root = get_command(app)
    names = []
    for name, command in root.commands.items():
        subs = getattr(command, "commands", None)
        names.extend([f"rlhfkit {name} {sub}" for sub in subs] if subs else [f"rlhfkit {name}"])
    return names


def test_config_reference_is_current():
    result = subprocess.run([sys.executable, "tools/readme_config.py", "--check"], cwd=ROOT)
    assert result.returncode == 0, "docs/config.md is stale: run `python tools/readme_config.py`"


def test_every_command_is_documented():
    readme = README.read_text()
    assert "make demo" in readme and "make test" in readme
    for full in all_commands():
        named = re.compile(rf"`{re.escape(full)}(?=[` ])")
        rows = [line for line in readme.split("\n") if named.search(line)]
        assert rows, f"README does not document `{full}`"
        pages = [
            (README.parent / target).resolve()
            for line in rows
            for target in links(line)
            if target.partition("#")[0].startswith("docs/") and target.partition("#")[0].endswith(".md")
        ]
        assert pages, f"README names `{full}` but links it to no docs page"
        existing = [page for page in pages if page.exists()]
        assert existing, f"README links `{full}` to a docs page that does not exist: {pages}"
        assert any(re.search(rf"{re.escape(full)}(?![\w-])", page.read_text()) for page in existing), (
            f"the docs page README links for `{full}` ({existing[0].relative_to(ROOT)}) does not mention it"
        )


def test_relative_links_resolve():
    files = [README, *sorted(DOCS.glob("*.md"))]
    assert len(files) > 1, "docs/ has no pages"
    problems = [problem for path in files for problem in broken_links(path)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_link_checker_catches_breakage(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## Worked example: reward hacking, on purpose\n")
    page.write_text(
        "# Page\n\n[ok](other.md) [ok](other.md#worked-example-reward-hacking-on-purpose) [ok](#page)\n"
        "[missing](nope.md) [bad anchor](other.md#nowhere) `[code](nope.md)`\n\n```\n[fenced](nope.md)\n```\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "page.md: nope.md (no such file)",
        "page.md: other.md#nowhere (no heading with anchor #nowhere)",
    ]
