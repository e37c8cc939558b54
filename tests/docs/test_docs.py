"""The documentation: README.md and the MkDocs site under docs/.

    .venv/bin/python -m pytest tests/docs -q            # build, fences, links, every shell block checked
    .venv/bin/python -m pytest tests/docs -q -m slow    # also RUN every runnable shell block

Default run (a few seconds plus one `--help` pass over the CLI):
- `mkdocs build --strict` of mkdocs.yml passes (links, anchors and nav validated), and a broken
  anchor does fail such a build (so the validation is really on);
- every page's code fences pair up and every Markdown heading renders as a heading (the README
  once had two unclosed fences that turned two whole sections into code);
- README.md stays short (<= 400 lines) and its relative links and anchors resolve;
- every ```bash block: `bash -n` passes, every `recsys <command> [<sub-command>]` it calls exists,
  every `--option` it passes is in that command's live `--help`, every configs/, features/, tests/
  or docs/ path it names exists.

Slow run: every ```bash block WITHOUT `<!-- long -->` on the line before its fence runs, page by
page in order, in a temporary copy of the repository (state carries from block to block within a
page), each within a time limit. ``data/synthetic_ctr`` (what ``make run`` writes, 8M rows) stands
there as a 100,000-row set of the same generator; ``:8000`` becomes a free port.
"""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import markdown
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
README = ROOT / "README.md"
MAX_README_LINES = 400
LONG_MARK = "<!-- long -->"
BLOCK_TIMEOUT_S = 900
# The site's Markdown extensions (mkdocs.yml), for rendering pages outside mkdocs.
EXTENSIONS = ["tables", "attr_list", "md_in_html", "toc", "pymdownx.superfences"]


def pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# -- fences ----------------------------------------------------------------------------------

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page: its language, 1-based line of the opening fence, text
    (dedented by the fence's indent) and whether `<!-- long -->` stands on the line before."""

    page: Path
    line: int
    info: str
    text: str
    long: bool

    @property
    def where(self) -> str:
        return f"{rel(self.page)}:{self.line}"


def parse_fences(path: Path) -> tuple[list[Block], list[str], set[int]]:
    """Pair the fences of a Markdown file the way CommonMark does.

    Returns:
        The blocks, the problems (an unclosed fence, or a fence with a language opening while
        another block is open: the sign of a fence that never closed), and the 1-based line
        numbers that lie inside code blocks (fences included).
    """
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    problems: list[str] = []
    in_code: set[int] = set()
    open_at = None  # (line index, indent, fence, info)
    body: list[str] = []
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if open_at is None:
            if m and not (m["fence"][0] == "`" and "`" in m["info"]):
                open_at = (i, len(m["indent"].expandtabs(4)), m["fence"], m["info"].strip())
                body = []
                in_code.add(i + 1)
            continue
        in_code.add(i + 1)
        start, indent, fence, info = open_at
        if m and m["fence"][0] == fence[0] and len(m["fence"]) >= len(fence) and not m["info"].strip():
            prev = lines[start - 1].strip() if start > 0 else ""
            text = "\n".join(b[indent:] if b[:indent].strip() == "" else b.lstrip() for b in body)
            blocks.append(Block(path, start + 1, info.split()[0] if info else "", text, prev == LONG_MARK))
            open_at = None
        elif m and m["info"].strip() and m["fence"][0] == fence[0]:
            problems.append(
                f"{rel(path)}:{i + 1}: a fence with a language ({line.strip()!r}) inside the block opened at line "
                f"{start + 1}: that block's closing fence is missing"
            )
            body.append(line)
        else:
            body.append(line)
    if open_at is not None:
        problems.append(f"{rel(path)}:{open_at[0] + 1}: code fence {open_at[2]!r} is never closed")
    return blocks, problems, in_code


def bash_blocks() -> list[Block]:
    return [b for p in pages() for b in parse_fences(p)[0] if b.info in ("bash", "sh", "shell")]


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_fences_pair_up_and_headings_render(page: Path):
    blocks, problems, in_code = parse_fences(page)
    assert not problems, "\n".join(problems)
    # Every Markdown heading outside code must come out of the renderer as a heading.
    lines = page.read_text(encoding="utf-8").split("\n")
    headings = [
        (n, line) for n, line in enumerate(lines, 1) if n not in in_code and re.match(r"^#{1,6} \S", line)
    ]
    rendered = markdown.markdown(page.read_text(encoding="utf-8"), extensions=EXTENSIONS)
    got = [
        re.sub(r"[`*]", "", html.unescape(re.sub(r"<[^>]+>", "", h))).strip()
        for h in re.findall(r"<h[1-6][^>]*>(.*?)</h[1-6]>", rendered)
    ]
    want = [re.sub(r"[`*]", "", line.lstrip("#").strip()) for _, line in headings]
    missing = [f"{rel(page)}:{n}: {line}" for (n, line), w in zip(headings, want) if w not in got]
    assert not missing, "headings that do not render as headings:\n" + "\n".join(missing)
    assert len(got) == len(want), f"{rel(page)}: {len(want)} headings in the source, {len(got)} rendered"
    # A list item after a nested code block that is not indented enough renders as "- ..." text.
    stray = [
        p.strip()[:120] for p in re.findall(r"<p>(.*?)</p>", rendered, flags=re.S) if re.search(r"\n\s*[-*+] \S", p)
    ]
    assert not stray, f"{rel(page)}: list items rendered as paragraph text (indent a list item's block by 4):\n" + "\n".join(stray)


def test_fence_check_catches_an_unclosed_block(tmp_path: Path):
    # The README's old bug: a table fence opened, never closed, the next section swallowed.
    page = tmp_path / "bad.md"
    page.write_text("# A\n\n```\nmodel  samples/s\n\n## B\n\n```bash\nrecsys train x.yaml\n```\n")
    _, problems, _ = parse_fences(page)
    assert problems and "line 3" in problems[0] and "closing fence is missing" in problems[0]
    page.write_text("# A\n\n```text\nx\n")
    assert "never closed" in parse_fences(page)[1][0]


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; at most {MAX_README_LINES}: move detail to docs/"


# -- links -------------------------------------------------------------------------------------


def heading_ids(page: Path) -> set[str]:
    md = markdown.Markdown(extensions=EXTENSIONS)
    return set(re.findall(r'id="([^"]+)"', md.convert(page.read_text(encoding="utf-8"))))


def test_readme_links_resolve():
    """README.md is outside the site (mkdocs does not check it): its relative links and anchors."""
    _, _, in_code = parse_fences(README)
    problems = []
    for n, line in enumerate(README.read_text(encoding="utf-8").split("\n"), 1):
        if n in in_code:
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (ROOT / path) if path else README
            if not dest.exists():
                problems.append(f"README.md:{n}: {target}: {path} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in heading_ids(dest):
                problems.append(f"README.md:{n}: {target}: no heading #{anchor} in {path or 'README.md'}")
    assert not problems, "\n".join(problems)


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True, text=True, env=env, timeout=300,
    )


def test_mkdocs_build_strict(tmp_path: Path):
    proc = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "training" / "index.html").exists()


def test_mkdocs_strict_rejects_a_broken_anchor(tmp_path: Path):
    # The same validation settings as mkdocs.yml, on a two-page site whose link names a missing heading.
    config = tmp_path / "mkdocs.yml"
    site_config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:")[0]
    config.write_text(site_config + "\nnav:\n  - index.md\n  - other.md\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\nSee [there](other.md#no-such-heading).\n")
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A heading\n")
    proc = mkdocs_build(config, tmp_path / "site")
    assert proc.returncode != 0
    assert "no-such-heading" in proc.stdout + proc.stderr


# -- shell blocks: syntax, commands, options, paths -------------------------------------------


def logical_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell block as token lists: continuation lines joined, heredoc
    bodies and comments dropped, split at `;`, `&&`, `||`, `|`, `&`."""
    text = text.replace("\\\n", " ")
    out_lines, heredoc_end = [], None
    for line in text.split("\n"):
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if m:
            heredoc_end = m.group(1)
            line = line[: m.start()]
        out_lines.append(line)
    commands: list[list[str]] = []
    for line in out_lines:
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|<>()")
        lex.whitespace_split = True
        lex.commenters = "#"
        try:
            tokens = list(lex)
        except ValueError:
            continue  # bash -n reports real syntax errors
        current: list[str] = []
        for tok in tokens:
            if tok and set(tok) <= set(";&|()"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(tok)
        if current:
            commands.append(current)
    return commands


def recsys_calls(block: Block) -> list[list[str]]:
    """Each `recsys ...` call of a block, from the word after `recsys` (env assignments skipped)."""
    calls = []
    for cmd in logical_commands(block.text):
        words = [w for w in cmd]
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if words and (words[0] == "recsys" or words[0].endswith("/recsys")):
            calls.append(words[1:])
    return calls


def named_paths(block: Block) -> list[str]:
    paths = []
    for cmd in logical_commands(block.text):
        for tok in cmd:
            for part in re.split(r"[=,\[\]]", tok):
                if re.match(r"^(configs|features|tests|docs)/[\w./-]+$", part):
                    paths.append(part.rstrip(".,:"))
    return paths


HELP_SCRIPT = r"""
import contextlib, io, json, sys
from jobs.cli import main
out = {}
for argv in json.loads(sys.argv[1]):
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = main(argv + ["--help"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out[" ".join(argv)] = {"code": code, "text": buf.getvalue()}
print(json.dumps(out))
"""


def live_help(prefixes: set[tuple[str, ...]]) -> dict[str, dict]:
    """`recsys <prefix> --help` for each prefix, in one process (the CLI's imports once)."""
    proc = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT, json.dumps([list(p) for p in sorted(prefixes)])],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def has_subcommands(help_text: str) -> bool:
    usage = help_text.split("\n\n")[0]
    return bool(re.search(r"\{[\w,-]+\}", usage))


@pytest.fixture(scope="module")
def blocks() -> list[Block]:
    found = bash_blocks()
    assert len(found) >= 10, f"only {len(found)} bash blocks found in README.md and docs/"
    return found


def test_bash_blocks_parse(blocks: list[Block]):
    problems = []
    for b in blocks:
        proc = subprocess.run(["bash", "-n"], input=b.text, capture_output=True, text=True)
        if proc.returncode != 0:
            problems.append(f"{b.where}: {proc.stderr.strip()}")
    assert not problems, "\n".join(problems)


def test_bash_blocks_name_existing_paths(blocks: list[Block]):
    missing = [f"{b.where}: {p}" for b in blocks for p in named_paths(b) if not (ROOT / p).exists()]
    assert not missing, "paths named by shell examples that do not exist:\n" + "\n".join(missing)


def call_problems(blocks: list[Block]) -> list[str]:
    """What is wrong with the `recsys` calls of these blocks, against the live `--help` texts."""
    calls = [(b, c) for b in blocks for c in recsys_calls(b)]
    first = live_help({(c[0],) for _, c in calls if c and not c[0].startswith("-")})
    subs = {
        (c[0], c[1]) for _, c in calls
        if len(c) > 1 and c[0] in first and first[c[0]]["code"] == 0 and has_subcommands(first[c[0]]["text"])
    }
    second = live_help(subs) if subs else {}
    problems = []
    for b, call in calls:
        if not call or call[0].startswith("-"):
            continue
        top = first[call[0]]
        if top["code"] != 0:
            problems.append(f"{b.where}: recsys {call[0]}: not a command (`recsys {call[0]} --help` exits {top['code']})")
            continue
        key, args = call[0], call[1:]
        if has_subcommands(top["text"]):
            if not args or args[0].startswith("-"):
                problems.append(f"{b.where}: recsys {call[0]} needs a sub-command")
                continue
            key, args = f"{call[0]} {args[0]}", args[1:]
            entry = second[key]
            if entry["code"] != 0 or "usage:" not in entry["text"]:
                problems.append(f"{b.where}: recsys {key}: not a command (`recsys {key} --help` exits {entry['code']})")
                continue
        text = (second if " " in key else first)[key]["text"]
        for arg in args:
            if arg == "--":
                break
            if not arg.startswith("--") or arg == "--help":
                continue
            flag = arg.split("=", 1)[0]
            if not re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", text):
                problems.append(f"{b.where}: recsys {key}: option {flag} is not in `recsys {key} --help`")
    return problems


def test_bash_blocks_call_existing_commands_and_options(blocks: list[Block], tmp_path: Path):
    assert any(recsys_calls(b) for b in blocks), "no recsys call found in any bash block"
    # Three wrong calls ride along (one `--help` pass for all): each must be reported.
    bad = Block(
        tmp_path / "bad.md", 1, "bash",
        "recsys frobnicate x\nrecsys bench nosuch\nrecsys train configs/ctr_synthetic_full.yaml --no-such-flag\n"
        "recsys synth ctr --out d --rowz 5\n",
        False,
    )
    problems = call_problems([*blocks, bad])
    caught = [p for p in problems if p.startswith(bad.where)]
    assert len(caught) == 4, caught
    assert "recsys frobnicate: not a command" in caught[0] and "recsys bench nosuch: not a command" in caught[1]
    assert "recsys train: option --no-such-flag" in caught[2] and "recsys synth ctr: option --rowz" in caught[3]
    real = [p for p in problems if not p.startswith(bad.where)]
    assert not real, "\n".join(real)


def test_command_extraction():
    block = Block(
        README, 1, "bash",
        "RAY_ADDRESS=x recsys train configs/a.yaml ray.num_workers=2 \\\n    --dry-run  # comment --nope\n"
        "cat > f.yaml <<'EOF'\nrecsys not-a-call --x\nEOF\nrecsys serve b --port 8000 & until curl -s x; do sleep 1; done\n"
        ".venv/bin/recsys bench compression configs/b.yaml --out r \"seeds=[0,1]\" base.config=features/s.yaml\n",
        False,
    )
    assert recsys_calls(block) == [
        ["train", "configs/a.yaml", "ray.num_workers=2", "--dry-run"],
        ["serve", "b", "--port", "8000"],
        ["bench", "compression", "configs/b.yaml", "--out", "r", "seeds=[0,1]", "base.config=features/s.yaml"],
    ]
    assert named_paths(block) == ["configs/a.yaml", "configs/b.yaml", "features/s.yaml"]


# -- shell blocks: run the runnable ones (slow) ------------------------------------------------

COPY = ["configs", "features", "docs", "tests", "README.md", "Makefile", "mkdocs.yml", "pyproject.toml", "requirements", "scripts"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def default_data(tmp_path_factory) -> Path:
    """A 100,000-row stand-in for the 8M-row data set `make run` writes to data/synthetic_ctr."""
    out = tmp_path_factory.mktemp("docs_data") / "synthetic_ctr"
    subprocess.run([str(BIN / "recsys"), "synth", "ctr", "--rows", "100000", "--out", str(out)], check=True, capture_output=True, timeout=300)
    return out


def runnable_pages() -> list[Path]:
    return [p for p in pages() if any(b.info in ("bash", "sh", "shell") and not b.long for b in parse_fences(p)[0])]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("page", runnable_pages(), ids=rel)
def test_runnable_blocks_run(page: Path, tmp_path: Path, default_data: Path):
    work = tmp_path / "repo"
    work.mkdir()
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, symlinks=True)
        elif src.exists():
            shutil.copy2(src, work / name)
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "data").mkdir()
    shutil.copytree(default_data, work / "data" / "synthetic_ctr")
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)  # a local Ray per command, as on a fresh machine
    groups: list[int] = []
    try:
        for n, block in enumerate(b for b in parse_fences(page)[0] if b.info in ("bash", "sh", "shell") and not b.long):
            script = re.sub(r"(localhost|127\.0\.0\.1):8000\b", rf"\g<1>:{port}", block.text).replace("--port 8000", f"--port {port}")
            log = tmp_path / f"block{n}.log"
            with log.open("w") as out:
                # Output to a file, not a pipe: a server a block leaves running (for the next block of
                # the page) must not hold the test up. Each block is its own process group.
                proc = subprocess.Popen(
                    ["bash", "-e", "-o", "pipefail", "-c", script], cwd=work, env=env,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )
                groups.append(proc.pid)
                try:
                    code = proc.wait(timeout=BLOCK_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"{block.where}: still running after {BLOCK_TIMEOUT_S} s; mark it {LONG_MARK}\n{log.read_text()[-3000:]}")
            assert code == 0, f"{block.where}: exit {code}\n{block.text}\n--- output ---\n{log.read_text()[-4000:]}"
    finally:
        for pgid in groups:  # whatever the page's blocks left running (a server)
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
