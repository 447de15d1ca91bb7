"""The GPU run's report: `bench/gpu/run.sh` calls `write`; a person folds its section into BENCHMARKS.md with `fold`.

    python bench/gpu/report.py write --work DIR --junit matrix.xml --out DIR [--log run.log] [--extra JSON]
                                     [--seconds N] [--rehearsal]
    python bench/gpu/report.py fold gpu.md [--into BENCHMARKS.md]

`write` merges the results.json of each bench/run.py that run.sh started (one per model, under --work), renders
them as bench/run.py renders one run (the device named, peak GPU memory), adds the architecture matrix's outcome
from its junit XML, and writes bench.json, gpu.md and, when runs failed, failures.txt (the last lines of each failed
run's log: the child logs stay on the GPU machine). `fold` puts gpu.md's section into BENCHMARKS.md in place of the
one of the same title (appended if there is none); other sections are left as they are.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import spec  # noqa: E402
from bench.run import render_section  # noqa: E402

TAIL_LINES = 40  # of each failed run's log in failures.txt
# the title of a rehearsal's section (RLHFKIT_GPU_DRY=1: the steps on the CPU), which fold refuses
REHEARSAL_TITLE = "## GPU run rehearsed on the CPU (no GPU figures)"


def merge(results: list[dict]) -> tuple[dict, list[dict]]:
    """One meta and one list of rows from several bench/run.py results (one per model)."""
    meta = dict(results[0]["meta"])
    meta["command"] = "bash bench/gpu/run.sh"
    meta["minutes"] = round(sum(r["meta"]["minutes"] for r in results), 1)
    meta["peaks"] = [p for r in results for p in r["meta"]["peaks"]]
    meta["peak_flops"] = max(meta["peaks"]) if meta["peaks"] else None
    meta["load_after"] = results[-1]["meta"]["load_after"]
    meta["versions"] = {k: v for r in results for k, v in r["meta"]["versions"].items()}
    meta["failures"] = [f for r in results for f in r["meta"]["failures"]]
    return meta, [row for r in results for row in r["rows"]]


def matrix_outcome(junit: Path, extra: str, log: Path | None = None) -> list[str]:
    """Lines on the architecture matrix: counts, time, and each failing test with the first line of its message.
    Without the junit XML (a matrix cut short by its time limit: pytest-xdist then writes none), the counts of
    pytest's verbose lines in `log`."""
    if not junit.is_file():
        text = log.read_text(errors="replace") if log and log.is_file() else ""
        outcomes = re.findall(r"\b(PASSED|FAILED|ERROR|SKIPPED) tests/test_architectures\.py::(\S+)", text)
        counts = {kind: sum(k == kind for k, _ in outcomes) for kind in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
        lines = [
            f"Architecture matrix (RLHFKIT_MATRIX_EXTRA='{extra}'): no junit XML, so it was cut short or did not run; "
            f"run.log shows {counts['PASSED']} passed, {counts['FAILED']} failed, {counts['ERROR']} errors, "
            f"{counts['SKIPPED']} skipped before it stopped."
        ]
        return lines + [f"- `{name}`: {kind}" for kind, name in outcomes if kind in ("FAILED", "ERROR")]
    suite = ET.parse(junit).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    passed = tests - failures - errors - skipped
    lines = [
        f"Architecture matrix (`tests/test_architectures.py`, RLHFKIT_MATRIX_EXTRA='{extra}'; the online stages have "
        f"no such keys and ran on the CPU): {passed} passed, {failures} failed, {errors} errors, {skipped} skipped "
        f"in {float(suite.get('time', 0)):.0f} s."
    ]
    for case in suite.iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            message = (problem.get("message") or problem.text or "").strip().splitlines() or [""]
            lines.append(f"- `{case.get('name')}`: {message[0][:200]}")
    return lines


def failure_tails(meta: dict) -> str:
    """The last lines of each failed run's log (the path is in the failure line)."""
    parts = []
    for failure in meta["failures"]:
        match = re.search(r"log (\S+\.log)", failure)
        path = Path(match.group(1)) if match else None
        tail = path.read_text(errors="replace").splitlines()[-TAIL_LINES:] if path and path.is_file() else []
        parts.append(f"==== {failure}\n" + "\n".join(tail))
    return "\n\n".join(parts) + "\n"


def write(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    found = sorted(Path(args.work).glob("bench-*/results.json"))
    results = [json.loads(p.read_text()) for p in found]
    lines = []
    if results:
        meta, rows = merge(results)
        (out / "bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
        section = render_section(meta, rows).rstrip()
        if meta.get("device") != "cuda":  # never folded over the CPU table; bench/analysis.md left out
            section = REHEARSAL_TITLE + section.split("\n### ", 1)[0][len(spec.SECTION_TITLE) :].rstrip()
        lines.append(section)
        if meta["failures"]:
            (out / "failures.txt").write_text(failure_tails(meta))
    else:
        title = REHEARSAL_TITLE if args.rehearsal else spec.GPU_SECTION_TITLE
        lines += [title, "", "No bench results: every bench/run.py failed, was cut short or was skipped (run.log)."]
    ran = ", ".join(p.parent.name.removeprefix("bench-") for p in found) or "none"
    lines += ["", f"Models with results: {ran}. The whole script took {args.seconds / 60:.1f} min.", ""]
    lines += matrix_outcome(Path(args.junit), args.extra, Path(args.log) if args.log else None)
    (out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def fold(args) -> int:
    section = Path(args.section).read_text()
    title = section.splitlines()[0] if section.strip() else ""
    if not title.startswith("## "):
        raise SystemExit(f"fold: {args.section} does not start with a '## ' heading")
    if title == REHEARSAL_TITLE:
        raise SystemExit(f"fold: {args.section} is a rehearsal on the CPU (RLHFKIT_GPU_DRY=1), not GPU figures")
    target = Path(args.into)
    target.write_text(spec.replace_section(target.read_text() if target.is_file() else "", section, title))
    print(f"fold: wrote the '{title[3:]}' section of {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("write", help="merge the bench results and the matrix outcome into OUT")
    w.add_argument("--work", required=True, help="folder holding bench-MODEL/results.json")
    w.add_argument("--junit", required=True, help="the matrix's junit XML")
    w.add_argument("--out", required=True, help="folder for bench.json, gpu.md, failures.txt")
    w.add_argument("--log", help="run.log: the matrix's verbose lines, read when there is no junit XML")
    w.add_argument("--extra", default="", help="the RLHFKIT_MATRIX_EXTRA the matrix ran with")
    w.add_argument("--seconds", type=float, default=0.0, help="how long run.sh had run")
    w.add_argument("--rehearsal", action="store_true", help="a run on the CPU (RLHFKIT_GPU_DRY=1)")
    f = commands.add_parser("fold", help="put gpu.md's section into BENCHMARKS.md")
    f.add_argument("section", help="gpu.md from a GPU run")
    f.add_argument("--into", default=str(ROOT / "BENCHMARKS.md"), help="the markdown file to update")
    args = parser.parse_args(argv)
    return write(args) if args.command == "write" else fold(args)


if __name__ == "__main__":
    sys.exit(main())
