"""The one-screen summary of ``benchmarks/gpu_acceptance.sh``: did every step pass, how much
faster is triton than eager, sdpa and torch.compile on attention and on a block (measured by the
pytest-benchmark suite), and what did the autotuner pick (recorded by ``fastvit profile``).

    python -m fastvit.profiling.acceptance OUTDIR --step tests=0 --step profile=0 --step bench=0

reads ``OUTDIR/bench.json`` (``--benchmark-json``), ``OUTDIR/report/results.json`` (``fastvit
profile --out OUTDIR/report``) and, if present, ``OUTDIR/tests.xml`` (pytest's JUnit XML). Exit
status 0 only if every step exited 0 and both files hold what they should (triton timings
included); otherwise 1, with the problems listed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

__all__ = ["summarise", "speedups", "main"]

SUMMARY_OPS = ("attention", "block")
OTHERS = ("eager", "sdpa", "compile")


def _load_json(path: Path, problems: list[str]):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        problems.append(f"{path.name} is missing ({path})")
    except (OSError, json.JSONDecodeError) as exc:
        problems.append(f"{path.name} is unreadable: {type(exc).__name__}: {exc}")
    return None


def speedups(bench: dict) -> list[dict]:
    """Per (op, mode, resolution, target) of ``SUMMARY_OPS`` with a triton timing: the median of
    each other backend divided by triton's (> 1: triton is faster), from a pytest-benchmark JSON."""
    medians: dict[tuple, dict[str, float]] = {}
    for b in bench.get("benchmarks", []):
        params, info = b.get("params") or {}, b.get("extra_info") or {}
        op = info.get("op") or str(b.get("group", "")).split("-")[0]
        if op not in SUMMARY_OPS or "backend" not in params:
            continue
        key = (op, params["mode"], int(params["res"]), params["target"])
        medians.setdefault(key, {})[params["backend"]] = float(b["stats"]["median"])
    rows = []
    for (op, mode, res, target), m in sorted(medians.items()):
        if "triton" not in m:
            continue
        rows.append({"op": op, "mode": mode, "img_size": res, "target": target, "triton_ms": m["triton"] * 1e3,
                     **{f"vs_{o}": m[o] / m["triton"] for o in OTHERS if o in m}})
    return rows


def _junit_counts(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    n = Counter()
    for s in suites:
        for k in ("tests", "failures", "errors", "skipped"):
            n[k] += int(s.get(k, 0))
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    return f"{passed} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped"


def _autotune_lines(results: dict) -> list[str]:
    picks = (results.get("autotune") or {}).get("picks") or []
    if not picks:
        return ["Autotuner picks: none recorded (nothing was autotuned in the profile run)"]
    by_kernel: dict[str, list[dict]] = {}
    for p in picks:
        by_kernel.setdefault(p["kernel"], []).append(p)
    lines = [f"Autotuner picks (profile run): {len(picks)} choice(s) over {len(by_kernel)} kernel(s); most common:"]
    for kernel, ps in sorted(by_kernel.items()):
        configs = Counter(", ".join(f"{k}={v}" for k, v in p["config"].items()) for p in ps)
        cfg, n = configs.most_common(1)[0]
        lines.append(f"  {kernel:<24} {len(ps):>2} key(s)  {cfg}" + (f"  (x{n})" if len(ps) > 1 else ""))
    return lines


def summarise(out_dir, steps: dict[str, int]) -> tuple[str, bool]:
    """The summary text and whether the acceptance run passed."""
    out_dir = Path(out_dir)
    problems = [f"step {name!r} exited with status {rc}" for name, rc in steps.items() if rc != 0]
    bench = _load_json(out_dir / "bench.json", problems)
    results = _load_json(out_dir / "report" / "results.json", problems)
    rows = speedups(bench) if bench is not None else []
    if bench is not None:
        missing = [op for op in SUMMARY_OPS if not any(r["op"] == op for r in rows)]
        if missing:
            problems.append(f"bench.json has no triton timing for {', '.join(missing)} (were the triton cases "
                            "skipped? see the benchmark log)")
    if results is not None:
        for f in results.get("failures") or []:
            problems.append(f"profile case {f['case']!r} raised {f['error']}")

    ok = not problems
    lines = [f"fastvit GPU acceptance: {'PASS' if ok else 'FAIL'}"]
    tests = _junit_counts(out_dir / "tests.xml")
    for name, rc in steps.items():
        extra = f": {tests}" if name == "tests" and tests else ""
        lines.append(f"  [{'pass' if rc == 0 else 'FAIL'}] {name} (exit {rc}){extra}")
    if rows:
        lines += ["", "Speed-up of triton (measured; median of the other backend / triton's; > 1: triton faster):",
                  f"  {'op':<10}{'mode':<8}{'px':>5}  {'target':<10}{'triton ms':>10}"
                  + "".join(f"{'vs ' + o:>11}" for o in OTHERS)]
        for r in rows:
            cells = "".join(f"{r[f'vs_{o}']:>10.2f}x" if f"vs_{o}" in r else f"{'-':>11}" for o in OTHERS)
            lines.append(f"  {r['op']:<10}{r['mode']:<8}{r['img_size']:>5}  {r['target']:<10}{r['triton_ms']:>10.3f}"
                         + cells)
        for o in OTHERS:
            vals = [r[f"vs_{o}"] for r in rows if f"vs_{o}" in r]
            if vals:
                mean = statistics.geometric_mean(vals)
                lines.append(f"  geometric mean vs {o}: {mean:.2f}x over {len(vals)} case(s)")
    if results is not None:
        lines += [""] + _autotune_lines(results)
    if problems:
        lines += ["", "Problems:"] + [f"  - {p}" for p in problems]
    return "\n".join(lines), ok


def _step(text: str) -> tuple[str, int]:
    name, sep, rc = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, int(rc)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=EXIT_STATUS, e.g. tests=0; got {text!r}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastvit.profiling.acceptance",
                                     description="Summarise a benchmarks/gpu_acceptance.sh run on one screen.")
    parser.add_argument("out_dir", metavar="OUTDIR", help="the folder gpu_acceptance.sh wrote")
    parser.add_argument("--step", type=_step, action="append", default=[],
                        help="NAME=EXIT_STATUS of a step that ran, in order (repeatable)")
    args = parser.parse_args(argv)
    text, ok = summarise(args.out_dir, dict(args.step))
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
