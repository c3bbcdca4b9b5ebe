"""Merge results of several `python -m bench --only ...` runs on one machine into one results file.

    python -m bench.merge RUN1.json RUN2.json [...] --out bench/results/<machine>.json

Workloads come from the first file that has them; meta is the first file's, with every run's
meta kept under ``meta["runs"]`` (dates, commits, load averages).  The .md is regenerated.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .report import markdown


def merge(paths: list[Path]) -> dict:
    runs = [json.loads(p.read_text()) for p in paths]
    slugs = {r["meta"]["slug"] for r in runs}
    if len(slugs) != 1:
        raise SystemExit(f"bench.merge: results from different machines: {', '.join(sorted(slugs))}")
    out = dict(runs[0])
    out["meta"] = dict(runs[0]["meta"], runs=[dict(r["meta"], workloads=sorted(r["workloads"])) for r in runs])
    out["meta"]["load_avg_1min_at_start"] = max(r["meta"]["load_avg_1min_at_start"] or 0 for r in runs)
    out["meta"]["load_avg_1min_at_end"] = max(r["meta"].get("load_avg_1min_at_end") or 0 for r in runs)
    out["meta"]["seconds_total"] = round(sum(r["meta"].get("seconds_total", 0) for r in runs), 1)
    out["workloads"] = {}
    for r in runs:
        for k, v in r["workloads"].items():
            if k == "eval_sweep" and k in out["workloads"]:
                # per thread count and image size: the first file that measured it wins
                merged = dict(out["workloads"][k])
                by_threads = {run["threads"]: dict(run, sizes=list(run["sizes"])) for run in merged["runs"]}
                for run in v["runs"]:
                    have = by_threads.setdefault(run["threads"], {"threads": run["threads"], "sizes": []})
                    sizes = {e["size"] for e in have["sizes"]}
                    have["sizes"] = sorted(have["sizes"] + [e for e in run["sizes"] if e["size"] not in sizes],
                                           key=lambda e: e["size"])
                merged["runs"] = list(by_threads.values())
                out["workloads"][k] = merged
            else:
                out["workloads"].setdefault(k, v)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    merged = merge(args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from recapfast.io.atomic import write_text

    write_text(args.out, json.dumps(merged, indent=1) + "\n")
    write_text(args.out.with_suffix(".md"), markdown(merged))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
