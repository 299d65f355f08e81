"""Two rules of the profiling code: the report records the command as typed but names no folder
of this machine, and only the CLI's entry writes ``TRITON_INTERPRET`` (library code never
writes the environment)."""
from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from fastvit._cli_args import portable_command
from fastvit.cli import choose_triton_mode, main

ROOT = Path(__file__).resolve().parents[1]
TINY = "vit_tiny_patch16_224"


# -- the command as typed, without this machine's paths ------------------------------------------
def test_portable_command_rewrites_absolute_paths_only():
    cwd, home = Path("/srv/projects/repo"), Path("/home/ana")
    cmd = portable_command(["profile", "--out", "/srv/projects/repo/docs/cpu-report", "--reps", "3"], cwd, home)
    assert cmd == "fastvit profile --out docs/cpu-report --reps 3"
    assert portable_command(["profile", "--out=/home/ana/runs/r 1"], cwd, home) == "fastvit profile --out=~/'runs/r 1'"
    assert portable_command(["profile", "--out", "/tmp/pytest-7/report0"], cwd, home) == \
        "fastvit profile --out .../report0"
    assert portable_command(["profile", "--out", "/srv/projects/repo"], cwd, home) == "fastvit profile --out ."
    assert portable_command(["profile", "--out", "report", "--model", TINY], cwd, home) == \
        f"fastvit profile --out report --model {TINY}"
    assert portable_command([], cwd, home) == "fastvit"


_ABSOLUTE = re.compile(r"(?:^|[\s`'\"(=])/[A-Za-z0-9_.-]")  # a token that starts with "/"


def test_report_names_no_folder_of_this_machine(tmp_path):
    out_dir = tmp_path / "report"
    argv = ["profile", "--model", TINY, "--resolutions", "32", "--backends", "eager", "--reps", "2", "--no-progress",
            "--no-plots", "--out", str(out_dir)]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(argv) == 0, err.getvalue()
    results = json.loads((out_dir / "results.json").read_text())
    assert results["command"] == (f"fastvit profile --model {TINY} --resolutions 32 --backends eager --reps 2 "
                                  "--no-progress --no-plots --out .../report")
    for name in ("report.md", "results.json"):
        text = (out_dir / name).read_text()
        for folder in {str(tmp_path), os.getcwd(), str(Path.home()), str(ROOT), sys.prefix}:
            assert folder not in text, (name, folder)
        assert not _ABSOLUTE.search(text), (name, _ABSOLUTE.search(text))


# -- TRITON_INTERPRET: the CLI's entry, nowhere else ------------------------------------------------
def _args(command, device=None):
    return types.SimpleNamespace(command=command, device=device)


@pytest.mark.parametrize("command,device,environ,modules,decided", [
    ("profile", "cpu", {}, {}, "set"),
    ("memory", "cpu", {}, {}, "set"),
    ("profile", "cpu", {"TRITON_INTERPRET": "0"}, {}, None),       # the user's choice stands
    ("profile", "cuda", {}, {}, None),                             # the real compiler on a GPU
    ("profile", "cpu", {}, {"triton": object()}, None),            # too late once triton is imported
    ("bench", "cpu", {}, {}, None),                                # never runs triton on a CPU
    ("flops", None, {}, {}, None),
])
def test_choose_triton_mode(command, device, environ, modules, decided):
    env = dict(environ)
    assert choose_triton_mode(_args(command, device), env, modules) == decided
    assert env == ({**environ, "TRITON_INTERPRET": "1"} if decided else environ)


def test_help_says_what_the_cli_does_to_triton_interpret(capsys):
    for argv in (["--help"], ["profile", "--help"], ["memory", "--help"]):
        assert main(argv) == 0
        help_text = " ".join(capsys.readouterr().out.split())
        assert "set TRITON_INTERPRET=1 before Triton is imported" in help_text, argv


def test_cli_chooses_the_interpreter_in_a_fresh_process(tmp_path):
    """Without TRITON_INTERPRET in the environment, `fastvit memory --backends triton` on a CPU
    still measures triton: the CLI chose the interpreter before anything imported triton."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-m", "fastvit.cli", "memory", "--model", TINY, "--resolutions", "32",
                        "--backends", "triton", "--modes", "inference", "--device", "cpu", "--json", "--no-progress"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(p.stdout)["rows"]
    assert row["available"] and row["peak_bytes"] == row["model_bytes"] > 0


def _environ_writes(path: Path) -> list[str]:
    """Lines of ``path`` that write the process environment."""
    tree = ast.parse(path.read_text(), filename=str(path))

    def is_environ(node) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "environ") or \
               (isinstance(node, ast.Name) and node.id == "environ")

    hits = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        if any(isinstance(t, ast.Subscript) and is_environ(t.value) for t in targets):
            hits.append(f"{path.name}:{node.lineno}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if (is_environ(f.value) and f.attr in ("setdefault", "update", "pop", "popitem", "clear", "__setitem__")) \
                    or f.attr in ("putenv", "unsetenv"):
                hits.append(f"{path.name}:{node.lineno}")
    return hits


def test_only_the_cli_writes_the_environment():
    files = sorted((ROOT / "fastvit").rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py"))
    assert len(files) > 20
    writes = {str(f.relative_to(ROOT)): _environ_writes(f) for f in files}
    assert writes.pop("fastvit/cli.py"), "the CLI's own write was not found: the scan is broken"
    assert {f: w for f, w in writes.items() if w} == {}
