"""Every command in the docs is run by a test (issue 8).

Each fenced block in the docs must name its language; each shell block (bash/sh/shell) must be
preceded by a directive comment saying how it is checked:

    <!-- doctest: offline -->           run here, from the repository root, exit status 0
    <!-- doctest: cluster -->           run here too, but it needs the control-plane binaries
    <!-- doctest: skip — <reason> -->   not runnable here; the reason names what covers it

so a new command cannot enter the docs without a decision about how it is tested.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(
    [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *(ROOT / d / "README.md" for d in ("plugin", "extender", "operator")),
     ROOT / "charts" / "k80s" / "README.md", ROOT / "proto" / "README.md"]
)
SHELL = {"bash", "sh", "shell"}
FENCE = re.compile(r"^```(\S*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*doctest:\s*(offline|cluster|skip)\b\s*(?:[—:-]\s*(.*?))?\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    directive: str | None
    reason: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, language = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        d = DIRECTIVE.match(prev.strip())
        out.append(Block(path, start + 1, language, d.group(1) if d else None, (d.group(2) or "") if d else "",
                         "\n".join(lines[start + 1 : j])))
        i = j + 1
    return out


ALL = [b for path in DOCS if path.exists() for b in blocks(path)]
SHELL_BLOCKS = [b for b in ALL if b.language in SHELL]


def test_the_docs_have_shell_blocks_to_check() -> None:
    assert len(SHELL_BLOCKS) >= 5 and any(b.directive == "offline" for b in SHELL_BLOCKS)


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_every_fence_names_its_language(block: Block) -> None:
    assert block.language, f"{block.id}: give the fence a language (bash, text, yaml, json, …)"


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b.id for b in SHELL_BLOCKS])
def test_every_shell_block_says_how_it_is_checked(block: Block) -> None:
    assert block.directive, f"{block.id}: add <!-- doctest: offline|cluster|skip — reason --> above the block"
    if block.directive == "skip":
        assert len(block.reason) > 10, f"{block.id}: a skipped block needs a reason"


def run_block(block: Block, env: dict[str, str]) -> None:
    script = f"set -euo pipefail\ncd {ROOT}\n{block.code}\n"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (
        f"{block.id} exited {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "TERM": "dumb"}


OFFLINE = [b for b in SHELL_BLOCKS if b.directive == "offline"]
CLUSTER = [b for b in SHELL_BLOCKS if b.directive == "cluster"]


@pytest.mark.parametrize("block", OFFLINE, ids=[b.id for b in OFFLINE])
def test_offline_commands_run(block: Block) -> None:
    run_block(block, _env())


@pytest.mark.controlplane
@pytest.mark.parametrize("block", CLUSTER, ids=[b.id for b in CLUSTER])
def test_cluster_commands_run(block: Block, k8s_bins: Path) -> None:
    env = _env()
    env["PATH"] = f"{k8s_bins}{os.pathsep}{env['PATH']}"
    env["K80S_TEST_BIN_DIR"] = str(k8s_bins)
    run_block(block, env)
