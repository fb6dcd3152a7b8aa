"""Every ```python and ```bash block of README.md runs (issue "Docs that run").

The README is parsed as markdown (markdown-it-py), so fences inside list items count too; each ```python or ```bash
fence becomes one test whose id names the nearest heading above it, the block's index under that heading and its
language (e.g. ``web-demo-0-bash``). New blocks are picked up by themselves. How they run:

- **One working folder** W (a temp folder) for the whole README, in README order, like a reader's shell: a block
  may use what an earlier block *under the same heading* wrote; when such a block is run alone (``-k``), those
  earlier blocks are run first (once), and if one of them fails this block fails naming it.
- **Python blocks** run with the interpreter running pytest (the venv's python under ``scripts/test.sh``), cwd W,
  ``PYTHONPATH`` = this checkout's ``src`` first (the checkout is what gets imported), one torch thread,
  ``HF_HUB_OFFLINE=1`` (nothing is downloaded).
- **Bash blocks** run with ``bash -euo pipefail`` in W, the checkout's ``.venv/bin`` (then the interpreter's folder)
  first on PATH, the same environment as Python blocks. The README's commands that use the clone's own files
  (``scripts/…``, ``benchmarks/…``, ``.venv/…``) are meant to run from the clone's root: those relative paths are
  made absolute, so the scripts act on this checkout while everything a command writes lands in W.
  ``bash scripts/demo.sh`` gets ``--out W/out/demo`` right after the script name (``generate`` takes the last
  ``--out``), so the demo writes into W rather than the clone's ``out/demo`` (argparse still creates that
  default folder, empty; it is git-ignored).

Rules the blocks cannot follow literally, handled here:

(a) ``bash scripts/test.sh`` would run this test again (and the whole suite inside it): it runs with
    ``--collect-only -q`` inserted after the script name. That still does the full set-up (apt, venv, pinned
    packages) and proves that every test module imports.
(b) A command that starts a server (``nested-diffusion serve`` / ``nested-diffusion api``, also through
    ``-m nested_diffusion.cli``) runs in the background, in its own process group, with ``--port <a free port>``
    inserted after the subcommand; the block goes on once http://127.0.0.1:<port>/ answers HTTP (any status;
    failing if the server exits first or takes over SERVER_WAIT_S), and the server's process group is terminated
    (SIGTERM, then SIGKILL after 10 s) when the block ends. A server command that names its port
    (``--port 8000``) gets the free port there instead, and ``:8000`` in the rest of the block (the URLs of its
    curl / client lines) becomes ``:<that port>``.
(c) Weights and data that users have and we do not (``--model-path sd-1.5/``, ``path/to/…``): ``FIXTURES`` maps
    each such name to a tiny random-weight stand-in (``fixtures_tiny`` / ``fixtures_modern``) saved under the
    same name in W before the first block that mentions it runs. A ``path/to/…`` name without an entry fails
    with a message saying to add one. Blocks then run unchanged against them: they prove the code runs as
    written, not the image quality a real checkpoint gives.
(d) A block that cannot run even so (hardware, clusters, hours of compute) has the line
    ``<!-- readme-test: skip REASON -->`` right before its fence and is reported as skipped with REASON. Keep
    these few. Any other ``readme-test:`` comment is an error.

Fences labelled ``text`` (or another language that is no command) are listings and are not run; an unlabelled
fence, or a shell/Python block labelled other than ``bash`` / ``python`` (``sh``, ``console``, ``py`` …), fails
``test_fences_are_labelled`` so a command block cannot be missed silently.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RUN_LANGS = ("python", "bash")
MISLABELLED = {"sh", "shell", "zsh", "console", "shell-session", "shellsession", "py", "python3", "pycon",
               "ipython", "pytb"}
DIRECTIVE = re.compile(r"<!--\s*readme-test:(.*?)-->")
BLOCK_TIMEOUT_S = 900   # generous: a fresh machine's first set-up; the blocks themselves take seconds
SERVER_WAIT_S = 300
REPO_PATHS = re.compile(r"(?<![\w./~$-])(scripts|benchmarks|\.venv)/")
SERVER = re.compile(r"((?<![\w.-])nested-diffusion|-m\s+nested_diffusion\.cli)(\s+)(serve|api)\b")


# ------------------------------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Block:
    heading: str
    n: int            # index among the run-language blocks under this heading
    lang: str
    code: str
    line: int         # 1-based README line of the opening fence
    skip: str | None  # reason, from <!-- readme-test: skip REASON -->
    directive_error: str | None = None

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-") or "readme"
        return f"{slug}-{self.n}-{self.lang}"


def fences(text: str):
    """(heading, info, content, first line index) of every fence, in document order."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    heading = "README"
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            heading = tokens[i + 1].content
        elif tok.type == "fence":
            yield heading, tok.info.strip(), tok.content, tok.map[0]


def parse_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks, counts = [], {}
    for heading, info, content, start in fences(text):
        lang = info.split()[0].lower() if info else ""
        if lang not in RUN_LANGS:
            continue
        skip = error = None
        before = lines[start - 1].strip() if start > 0 else ""
        m = DIRECTIVE.search(before)
        if m:
            words = m.group(1).strip().split(None, 1)
            if len(words) == 2 and words[0] == "skip":
                skip = words[1]
            else:
                error = (f"README line {start}: unknown readme-test directive {before!r}; the only one is "
                         f"'<!-- readme-test: skip REASON -->'")
        n = counts[heading] = counts.get(heading, -1) + 1
        blocks.append(Block(heading, n, lang, content, start + 1, skip, error))
    return blocks


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------- fixtures
def _sd(path: Path) -> None:
    from fixtures_tiny import tiny_sd
    tiny_sd().save_pretrained(path)


def _dit(path: Path) -> None:
    from fixtures_tiny import ID2LABEL, tiny_dit_components

    from nested_diffusion.pipelines import NestedDiTPipeline
    comp = tiny_dit_components()
    comp["id2label"] = {i: ID2LABEL.get(i, f"object {i}") for i in range(1000)}  # every class named, as DiT-XL/2
    NestedDiTPipeline(**comp).save_pretrained(path)                            # (the stock class drops id2label)
    index = path / "model_index.json"                                          # the published folder's class
    index.write_text(json.dumps({**json.loads(index.read_text()), "_class_name": "DiTPipeline"}, indent=2))


def _clip(path: Path) -> None:
    from fixtures_tiny import tiny_clip
    path.mkdir(parents=True, exist_ok=True)
    tiny_clip(str(path))


def _prompts(path: Path) -> None:
    path.write_text("a photo of a cat\na red dog\nthe blue cat\n", encoding="utf-8")


def _modern(name: str):
    def build(path: Path) -> None:
        import fixtures_modern
        getattr(fixtures_modern, name)().save_pretrained(path)
    return build


def _taesd(path: Path) -> None:
    from fixtures_modern import tiny_taesd
    tiny_taesd(16).save_pretrained(path)   # FLUX's 16 latent channels, as taef1


FIXTURES = {
    "sd-1.5": _sd,
    "path/to/stable-diffusion-v1-5": _sd,
    "dit-xl-2-256": _dit,
    "clip-l14": _clip,
    "prompts.txt": _prompts,
    "path/to/sdxl-base-1.0": _modern("tiny_sdxl"),
    "path/to/sd3.5-medium": _modern("tiny_sd3"),
    "path/to/FLUX.1-dev": _modern("tiny_flux"),
    "path/to/taef1": _taesd,
}


def mentions(code: str, name: str) -> bool:
    return re.search(r"(?<![\w.-])" + re.escape(name) + r"(?![\w.-])", code) is not None


# ------------------------------------------------------------------------------------------------- running
WAIT_HTTP = r'''
import sys, time, urllib.error, urllib.request
port, pid, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # never through a proxy
end = time.monotonic() + limit
while time.monotonic() < end:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "X"
    if state in ("Z", "X"):
        sys.exit(f"the server exited before answering on 127.0.0.1:{port}")
    try:
        opener.open(f"http://127.0.0.1:{port}/", timeout=5).close()
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)                                  # an HTTP answer, whatever its status
    except OSError:
        time.sleep(0.25)
sys.exit(f"no HTTP answer on 127.0.0.1:{port} within {limit:.0f} s")
'''

BASH_PREAMBLE = r'''set -euo pipefail
__servers=()
__stop_servers() {
  local p i
  for p in "${__servers[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  for p in "${__servers[@]}"; do
    for i in $(seq 100); do kill -0 -- "-$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || true
  done
}
trap __stop_servers EXIT
trap 'exit 143' TERM INT
__serve() {  # __serve PORT LOG COMMAND: COMMAND in the background, in its own process group, until PORT answers
  set -m
  { eval "$3"; } >"$2" 2>&1 &
  __servers+=("$!")
  set +m
  if ! "$__PY" "$__WAIT" "$1" "$!" "$__WAIT_S"; then
    echo "--- output of the server command: $3" >&2
    tail -n 60 "$2" >&2
    return 1
  fi
  echo "readme-test: the server answered HTTP on 127.0.0.1:$1"
}
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logical_lines(code: str) -> list[str]:
    """Lines with backslash continuations joined (the newlines kept, so the text runs unchanged)."""
    out, cur = [], ""
    for line in code.splitlines(keepends=True):
        cur += line
        if not line.rstrip("\n").endswith("\\"):
            out.append(cur)
            cur = ""
    return out + ([cur] if cur else [])


def split_comment(line: str) -> tuple[str, str]:
    """(command, trailing comment) of a shell line: a ``#`` that starts a word outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i:]
    return line, ""


def own_ports(code: str) -> str:
    """Rule (b) for servers that name their port: each such port becomes a free one throughout the block."""
    for line in logical_lines(code):
        command = split_comment(line)[0]
        m = re.search(r"--port[= ](\d+)\b", command) if SERVER.search(command) else None
        if m:
            port = free_port()
            code = re.sub(r"(--port[= ]|:)" + m.group(1) + r"\b", lambda k: f"{k.group(1)}{port}", code)
    return code


def bash_script(code: str, work: Path, scratch: Path) -> str:
    code = own_ports(REPO_PATHS.sub(lambda m: f"{shlex.quote(str(REPO))}/{m.group(1)}/", code))
    code = re.sub(r"(/scripts/test\.sh)\b", r"\1 --collect-only -q", code)                     # rule (a)
    code = re.sub(r"(/scripts/demo\.sh)\b", lambda m: f"{m.group(1)} --out {shlex.quote(str(work / 'out/demo'))}",
                  code)
    lines = []
    for line in logical_lines(code):
        command, comment = split_comment(line)
        if SERVER.search(command):                                                                # rule (b)
            named = re.search(r"--port[= ](\d+)\b", command)
            port = int(named.group(1)) if named else free_port()
            if not named:
                command = SERVER.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)} --port {port}", command,
                                     count=1)
            log = scratch / f"server-{port}.log"
            lines.append(f"__serve {port} {shlex.quote(str(log))} {shlex.quote(command.rstrip())}"
                         f"{'  ' + comment.rstrip() if comment else ''}\n")
        else:
            lines.append(line)
    return BASH_PREAMBLE + "".join(lines)


class Session:
    """The shared working folder, the fixtures built in it and the result of every block run so far."""

    def __init__(self, work: Path, scratch: Path):
        self.work, self.scratch = work, scratch
        self.built: set[str] = set()
        self.results: dict[Block, str | None] = {}   # None: ran fine; else the failure report
        (scratch / "wait_http.py").write_text(WAIT_HTTP)

    def env(self) -> dict:
        env = dict(os.environ)
        old = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *old])
        env["PATH"] = os.pathsep.join([str(REPO / ".venv" / "bin"), str(Path(sys.executable).parent),
                                       env.get("PATH", "")])
        env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", MPLBACKEND="Agg",
                   PYTHONUNBUFFERED="1", __PY=sys.executable, __WAIT=str(self.scratch / "wait_http.py"),
                   __WAIT_S=str(SERVER_WAIT_S))
        return env

    def prepare(self, block: Block) -> None:
        unknown = {p.rstrip("/") for p in re.findall(r"path/to/[^\s\"'`),]+", block.code)} - set(FIXTURES)
        if unknown:
            pytest.fail(f"README line {block.line}: {sorted(unknown)} have no stand-in: add a tiny fixture to "
                        f"FIXTURES in tests/test_readme.py (or, if it cannot run, a readme-test: skip comment)")
        for name, build in FIXTURES.items():
            if name not in self.built and mentions(block.code, name):
                build(self.work / name)
                self.built.add(name)

    def run(self, block: Block) -> str | None:
        if block not in self.results:
            self.prepare(block)
            if block.lang == "python":
                path = self.scratch / f"block-line{block.line}.py"
                path.write_text(block.code, encoding="utf-8")
                argv = [sys.executable, str(path)]
            else:
                path = self.scratch / f"block-line{block.line}.sh"
                path.write_text(bash_script(block.code, self.work, self.scratch), encoding="utf-8")
                argv = ["bash", str(path)]
            self.results[block] = self._execute(argv, block, path)
        return self.results[block]

    def _execute(self, argv: list[str], block: Block, path: Path) -> str | None:
        proc = subprocess.Popen(argv, cwd=self.work, env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=BLOCK_TIMEOUT_S)
            status = f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)   # bash's trap then stops any server it started
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
            status = f"timed out after {BLOCK_TIMEOUT_S} s"
            proc.returncode = proc.returncode or 1
        if proc.returncode == 0:
            return None
        tail = "\n".join(line for line in out.splitlines() if not line.startswith("WARNING: Location"))[-6000:]
        ran = path.read_text().removeprefix(BASH_PREAMBLE)   # the helpers' text is the same for every block
        return (f"README line {block.line} ({block.heading!r}, {block.lang}) failed: {status}\n"
                f"--- block as run ({path}{', after the helpers at its top' if block.lang == 'bash' else ''}):\n"
                f"{ran}\n--- output (tail):\n{tail}")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(tmp_path_factory.mktemp("readme_work"), tmp_path_factory.mktemp("readme_scratch"))


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block: Block, session: Session):
    if block.directive_error:
        pytest.fail(block.directive_error)
    if block.skip:
        pytest.skip(f"README line {block.line}: {block.skip}")
    for earlier in BLOCKS:
        if earlier is block:
            break
        if earlier.heading == block.heading and not earlier.skip and not earlier.directive_error:
            if session.run(earlier) is not None:
                pytest.fail(f"an earlier block under {block.heading!r} (README line {earlier.line}) failed, and "
                            f"this one may use what it writes; see that block's test")
    failure = session.run(block)
    if failure:
        pytest.fail(failure, pytrace=False)


def test_fences_are_labelled():
    bad = [(info or "(none)", start + 1) for _, info, _, start in fences(README.read_text(encoding="utf-8"))
           if not info or info.split()[0].lower() in MISLABELLED]
    assert not bad, (f"README fences {bad} (label, line): label commands ```bash or ```python (they are run by "
                     f"tests/test_readme.py) and listings ```text")


def test_parser_finds_nested_fences_headings_and_skips():
    text = ("# Top\n```bash\necho a\n```\n## Sub: part\n- item\n  ```python\n  print(1)\n  ```\n"
            "<!-- readme-test: skip no GPU here -->\n```bash\nnvidia-smi\n```\n```text\nnot run\n```\n"
            "<!-- readme-test: maybe -->\n```python\npass\n```\n")
    got = parse_blocks(text)
    assert [(b.id, b.code, b.line, b.skip) for b in got[:3]] == [
        ("top-0-bash", "echo a\n", 2, None),
        ("sub-part-0-python", "print(1)\n", 7, None),           # dedented out of the list item
        ("sub-part-1-bash", "nvidia-smi\n", 11, "no GPU here")]
    assert len(got) == 4 and got[3].directive_error and "unknown readme-test directive" in got[3].directive_error


def test_bash_rewrites(tmp_path):
    code = ("bash scripts/demo.sh    # demo\nbash scripts/test.sh\n"
            "bash scripts/setup.sh demo && .venv/bin/nested-diffusion serve --pipeline sd \\\n    --model-path x\n"
            "# nested-diffusion serve in a comment stays\nls out/scripts/x   # nested-diffusion serve '#'\n")
    script = bash_script(code, tmp_path / "w", tmp_path)
    assert script.startswith(BASH_PREAMBLE)
    demo, test, serve, rest = script[len(BASH_PREAMBLE):].split("\n", 3)
    assert demo == f"bash {REPO}/scripts/demo.sh --out {tmp_path}/w/out/demo    # demo"
    assert test == f"bash {REPO}/scripts/test.sh --collect-only -q"
    words = shlex.split(serve + "\n" + rest.split("\n", 1)[0])    # the quoted command spans two lines
    assert words[0] == "__serve" and words[2] == f"{tmp_path}/server-{words[1]}.log"
    assert words[3] == (f"bash {REPO}/scripts/setup.sh demo && {REPO}/.venv/bin/nested-diffusion serve --port "
                        f"{words[1]} --pipeline sd \\\n    --model-path x")
    assert rest.split("\n", 1)[1] == ("# nested-diffusion serve in a comment stays\n"
                                      "ls out/scripts/x   # nested-diffusion serve '#'\n")
    assert split_comment("echo '#1' \"a # b\" x#y  # note") == ("echo '#1' \"a # b\" x#y  ", "# note")


def test_a_server_that_names_its_port_gets_a_free_one_everywhere_in_its_block(tmp_path):
    code = "nested-diffusion api --port 8000\ncurl -s http://127.0.0.1:8000/v1/models  # :80001 stays\n"
    body = bash_script(code, tmp_path / "w", tmp_path)[len(BASH_PREAMBLE):]
    words = shlex.split(body.split("\n")[0])
    port = words[1]
    assert port != "8000" and words[3] == f"nested-diffusion api --port {port}"
    assert body.split("\n")[1] == f"curl -s http://127.0.0.1:{port}/v1/models  # :80001 stays"
