"""Record reference rows of 08_summary from runs the notebooks saved (for what no bench script measures).

    python bench/record_reference.py 00_foundations --preset cpu          # after running 00 under the cpu preset
    python bench/record_reference.py 07_moco --preset cpu --seed 0 --to /tmp/rows.json

00_foundations has no bench script: its numbers (the random-init encoder, the supervised baseline and
their label-efficiency curves) come from the notebook itself. Run the notebook under the preset (on
``../shared/data`` CIFAR-10: ``SSLCOURSE_DATASET=npz:../shared/data/cifar10-jpeg.npz``), then this
script reads the saved run (``sslcourse.results.load_run``) and writes one row per encoder it holds
into ``sslcourse/reference_runs.json`` (or ``--to PATH``), through ``sslcourse.reference.record_reference``.
The other notebooks' rows are better recorded by their bench scripts (``--record-reference``), which
also measure the label-efficiency curve.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sslcourse import summary  # noqa: E402
from sslcourse.reference import METHODS, REFERENCE_FILE, make_row, record_reference  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="saved run names, e.g. 00_foundations 07_moco")
    parser.add_argument("--preset", choices=("cpu", "gpu"), required=True)
    parser.add_argument("--seed", type=int, default=0, help="the seed the notebook ran with (setup(seed=...))")
    parser.add_argument("--to", default=str(REFERENCE_FILE), help="the reference file to write (default: the package's)")
    args = parser.parse_args(argv)
    methods = [m for m in METHODS if m.run in args.runs]
    unknown = set(args.runs) - {m.run for m in METHODS}
    if unknown:
        raise SystemExit(f"record_reference: no method saves a run named {sorted(unknown)}")
    for entry in summary.collect(args.preset, methods=methods):
        if not entry.ok or entry.dataset is None:
            print(f"{entry.label}: not recorded ({entry.message or 'the run does not name its dataset'})")
            continue
        notebook = entry.method.notebook
        row = make_row(entry.method.key, preset=args.preset, dataset=entry.dataset,
                       device=entry.device or "not recorded", seed=args.seed, script=f"solutions/{notebook}",
                       source=f"the run {entry.method.run} saved by solutions/{notebook} under the {args.preset} preset "
                              f"({entry.saved_at}), recorded by bench/record_reference.py",
                       minutes=None if entry.seconds is None else entry.seconds / 60, knn=entry.knn,
                       linear=entry.linear, label_efficiency=entry.label_efficiency, random_init=entry.random_init,
                       curve=entry.curve)
        print(f"{entry.label}: recorded in {record_reference(row, args.to)}")


if __name__ == "__main__":
    main()
