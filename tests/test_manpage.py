"""The man page and the shell completion, both generated from the argparse definitions: the
page in docs/ is up to date (``make man``) and renders with man(1); bash completes commands,
options and choices with the script ``ioband completion bash`` prints."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ioband.cli import build_parser
from tests.conftest import require_real

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "ioband.1"


def commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return list(sub.choices)


def without_date(page: str) -> str:
    return "\n".join(ln for ln in page.splitlines() if not ln.startswith(".TH "))


def test_the_man_page_is_up_to_date(tmp_path):
    out = tmp_path / "ioband.1"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "manpage.py"), str(out)], check=True)
    assert without_date(out.read_text()) == without_date(PAGE.read_text()), (
        "docs/ioband.1 is stale: run `make man`"
    )


def test_the_man_page_renders_every_command():
    man = shutil.which("man")
    require_real(man is not None, "man is not installed")
    res = subprocess.run([man, "-l", str(PAGE)], capture_output=True, text=True, timeout=60,
                         env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin", "LANG": "C"})  # fmt: skip
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert text.startswith("IOBAND(1)")
    for name in commands():
        assert f"ioband {name}" in text, name
    for option in ("--config", "--json", "--interval", "--table", "--format"):
        assert option in text, option


def complete(words: list[str]) -> list[str]:
    """What bash completes for the last of ``words``, with the generated script loaded."""
    line = " ".join(words)
    script = subprocess.run([sys.executable, "-m", "ioband", "completion", "bash"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    state = (f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMP_LINE='{line}';"
             f" COMP_POINT={len(line)}")  # fmt: skip
    probe = f"{script}\n{state}; _shtab_ioband; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    res = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_bash_completes_commands_options_and_choices():
    require_real(shutil.which("bash") is not None, "bash is not installed")
    assert complete(["ioband", "st"]) == ["status"]
    assert set(complete(["ioband", ""])) >= set(commands())
    assert "--json" in complete(["ioband", "status", "--j"])
    assert complete(["ioband", "status", "--format", "d"]) == ["diskstats"]
    assert complete(["ioband", "completion", "z"]) == ["zsh"]


@pytest.mark.parametrize("shell", ["zsh", "tcsh"])
def test_other_shells(shell):
    res = subprocess.run([sys.executable, "-m", "ioband", "completion", shell],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert "ioband" in res.stdout and "status" in res.stdout
