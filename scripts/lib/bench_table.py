#!/usr/bin/env python3
"""Side-by-side speed table of llama.cpp and dsrun from their `bench -o json` outputs.

Both `llama-bench -o json` and `dsrun bench -o json` print a JSON array, one object per test,
with llama-bench's field names; this reads `model_filename`, `n_threads`, `n_prompt`, `n_gen`,
`n_depth` (optional), `avg_ts` and `stddev_ts` from each and prints one markdown row per
(model, threads, test): mean ± std tokens per second of each engine and the ratio dsrun/llama.cpp.

    bench_table.py ENGINE=FILE.json ...      ENGINE is llama.cpp or dsrun

A file that is missing, empty or not JSON counts as a failed run: that engine's empty cells read
"failed" (a test an engine did not run at all reads "—"), and the table is still printed. The row key is the model's file name, so a test both engines ran on the
same file, thread count and sizes lands on one row. Plain Python 3.11 stdlib.
"""

import json
import os
import sys

ENGINES = ("llama.cpp", "dsrun")


def test_name(t):
    """llama-bench's names: ppP, tgN, ppP+tgN, with @dD for a non-empty starting cache."""
    n_prompt, n_gen, n_depth = int(t.get("n_prompt", 0)), int(t.get("n_gen", 0)), int(t.get("n_depth", 0) or 0)
    if n_prompt and n_gen:
        name = f"pp{n_prompt}+tg{n_gen}"
    elif n_gen:
        name = f"tg{n_gen}"
    else:
        name = f"pp{n_prompt}"
    return name + (f" @ d{n_depth}" if n_depth else "")


def load(path):
    """The tests of one run, or None when the run failed."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        return None
    return [t for t in data if isinstance(t, dict) and "avg_ts" in t]


def cell(t, failed):
    if t is None:
        return "failed" if failed else "—"
    return f"{float(t['avg_ts']):.2f} ± {float(t.get('stddev_ts', 0.0)):.2f}"


def main(argv):
    if not argv or any("=" not in a for a in argv):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    rows = {}  # (model, threads, test) -> {engine: test object or None}; dicts keep run order
    failed = []  # (engine, file) of runs with no result, with the model/threads in the file name
    for arg in argv:
        engine, path = arg.split("=", 1)
        if engine not in ENGINES:
            print(f"error: unknown engine {engine!r} (want one of {', '.join(ENGINES)})", file=sys.stderr)
            return 2
        tests = load(path)
        if not tests:
            failed.append((engine, path))
            continue
        for t in tests:
            key = (os.path.basename(str(t.get("model_filename", "?"))), int(t.get("n_threads", 0)), test_name(t))
            rows.setdefault(key, {})[engine] = t

    failed_engines = {engine for engine, _ in failed}
    print("| model | threads | test | llama.cpp t/s | dsrun t/s | dsrun/llama.cpp |")
    print("|---|--:|---|--:|--:|--:|")
    for (model, threads, test), by_engine in rows.items():
        ref, ours = by_engine.get("llama.cpp"), by_engine.get("dsrun")
        ratio = "—"
        if ref is not None and ours is not None and float(ref["avg_ts"]) > 0:
            ratio = f"{float(ours['avg_ts']) / float(ref['avg_ts']):.2f}"
        ref_cell, ours_cell = cell(ref, "llama.cpp" in failed_engines), cell(ours, "dsrun" in failed_engines)
        print(f"| {model} | {threads} | {test} | {ref_cell} | {ours_cell} | {ratio} |")
    for engine, path in failed:
        print(f"\n{engine} run with no result: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
