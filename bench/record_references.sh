#!/usr/bin/env bash
# Re-measure the cpu-preset reference row (seed 0) of every method notebook on real CIFAR-10, with its
# label-efficiency curve and its per-epoch training curve, for 08_summary's reference file.
#
#   bash bench/record_references.sh [ROWS.json]    # default: straight into sslcourse/reference_runs.json
#
# Each line is the method's own bench script, run as its notebook's main run only (no ablations), so the
# rows come from the same code path as the notebooks. Writing to ROWS.json instead collects the rows
# elsewhere (the suite may be reading the package's file meanwhile); merge them afterwards with
#   python -m sslcourse.reference merge ROWS.json
# Float32 on an AVX2-only 2-core laptop: about an hour in all (bench/RESULTS.md, "Float32 cost").
set -uo pipefail   # one bench that fails leaves the rows the others recorded
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rows=${1:-sslcourse/reference_runs.json}
record=(--preset cpu --seed 0 --record-reference "$rows")
python bench/bench_rotation.py "${record[@]}"
python bench/bench_denoising.py "${record[@]}" --seeds 1
python bench/bench_moco.py "${record[@]}" --monitor --minutes 0   # no time cap: the recipe's 15 epochs, as the notebook
python bench/bench_context_encoder.py "${record[@]}" --lambdas 1
python bench/bench_patch_position.py "${record[@]}" --settings 1
python bench/bench_cpc.py "${record[@]}" --no-ablations
python bench/bench_split_brain.py "${record[@]}"
