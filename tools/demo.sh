#!/usr/bin/env bash
# Set up, generate the embedded synthetic cohort, run participant then group.
# Usage: bash tools/demo.sh [OUT_ROOT]   (default ./demo_out)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
OUT_ROOT="${1:-demo_out}"
export TF_CPP_MIN_LOG_LEVEL=3
BIDS="$OUT_ROOT/bids"
# A planted effect of d = 2 on two networks (the generator's default is a modest d = 1, which
# 43 subjects do not reveal reliably to any model, linear or not: see benchmarks/results/2026-12-07-cnn-vs-linear.md)
if [ ! -f "$BIDS/dataset_description.json" ]; then
    .venv/bin/dpnbids-synth "$BIDS" --space template --seed 0 --n-jobs 2 --effect-size 2
fi
# the synthetic fMRIPrep-style series are on a 4 mm grid: dpnbids takes the data's own
COMMON=(--fmriprep-dir "$BIDS/derivatives/fmriprep" -w "$OUT_ROOT/work" --random-seed 0)
.venv/bin/dpnbids "$BIDS" "$OUT_ROOT/derivatives" participant "${COMMON[@]}"
# Trimmed for a 2-core laptop's quarter of an hour: at most 40 epochs (early stopping ends
# most folds sooner) and the two map-based input sets; RSP (the paper's negative control:
# 30 BOLD volumes as channels, the most expensive set) is left out. Everything else is the
# default: 10 outer folds, calibration and thresholds in the folds, the linear baselines'
# 1,000 label permutations, integrated-gradients saliency. Add --input-sets ASC SSC RSP and
# --n-permutations 1000 for the paper's three sets and the CNN's permutation p-value.
.venv/bin/dpnbids "$BIDS" "$OUT_ROOT/derivatives" group "${COMMON[@]}" \
    --epochs 40 --input-sets ASC SSC
# The number of ICA components is estimated from the data (--n-components auto, the
# default): group.html shows the scree plot and the choice.
echo "Demo finished: open $OUT_ROOT/derivatives/group.html"
