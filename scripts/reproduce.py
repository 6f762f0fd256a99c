"""Reproduce the side-by-side results table: models, experts, VAEs, every merge, RESULTS.md + plots.

    .venv/bin/python scripts/reproduce.py [--plan configs/results/smollm2.yaml]

The default plan writes RESULTS.md (self-merge, the two experts merged, judge, lm-eval); its
companions `configs/results/smollm2_codec.yaml` (RESULTS_codec.md) and
`configs/results/smollm2_hetero_modules.yaml` (RESULTS_hetero_modules.md) share its cache.

Runs the plan (see `lsmerge.results.plan`): fetches the models and corpora and builds the
experts when missing, trains the VAE runs, builds and scores every row, runs the hidden-state
sweep, the kurtosis figures and the pairwise judge, then writes the table (`results:`) and the
PNG plots (`plots_dir:`). Every row carries a paired-bootstrap interval over the scoring windows
against its section's reference row, and the summary number over the corpora (see `bootstrap:`,
`domain_experts:` and `references:` in the plan). Everything is cached under the plan's `out_dir`,
keyed by the command and config that made it: a second run redoes only what changed, a killed run
resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see lsmerge/cli.py
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lsmerge.errors import LsMergeError  # noqa: E402
from lsmerge.results.pipeline import Runner  # noqa: E402
from lsmerge.results.plan import load_plan  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default="configs/results/smollm2.yaml", help="results plan (YAML)")
    ap.add_argument("--partial", action="store_true",
                    help="run nothing: write the table from the rows already cached and list the rest as missing")
    args = ap.parse_args()
    start = time.perf_counter()
    try:
        plan = load_plan(args.plan)
        summary = Runner(plan, say=lambda s: print(f"[{time.perf_counter() - start:7.0f} s] {s}", flush=True), partial=args.partial).run()
    except LsMergeError as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {summary['results']} ({summary['rows']} rows) and {len(summary['plots'])} plots in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
