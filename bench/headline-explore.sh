#!/bin/sh
# The headline asked again with the wider space (docs/results.md): the cpu-explore search
# (adversarial warm starts, a head term, attack targets, wider loss weights; GP + ASHA) at the
# paper table's budget, warm start included (24 trials, a 1-epoch warm start of the drawn kind,
# 4 epochs of 50 batches), its 3 best trials audited with standard AutoAttack on EXAMPLES test
# images, then the 2 best unflagged configurations, PGD-AT and TRADES (each with the winner's
# warm start and budget) over 5 new seeds; then the same, smaller, in L2 (cpu-explore-l2: the
# best configuration and PGD-AT over 3 seeds). Exports and reports in results/explore and
# results/explore-l2.
#
#   make headline-explore                           # or: sh bench/headline-explore.sh
#   EXAMPLES=2000 GPUS=0.16 make headline-explore   # with a GPU
#
# Every step continues where it stopped: running it again after an interruption finishes the
# job. Several hours on 2 CPU cores.
set -eu
cd "$(dirname "$0")/.."
CLUSTUNE=${CLUSTUNE:-.venv/bin/clustune}
EXAMPLES=${EXAMPLES:-1000}
GPUS=${GPUS:-0}
BUDGET="--set train.data.train_subset=30000 --set train.optim.epochs=4
    --set train.optim.batches_per_epoch=50 --set train.warm_start.ce_epochs=1
    --set search.grace_period=1 --num-samples 24 --final-top-k 3
    --final-examples $EXAMPLES --gpus-per-trial $GPUS"

run() {  # preset name top seeds baselines...
    preset=$1 name=$2 top=$3 seeds=$4
    shift 4
    if [ -f "experiments/$name/clustune.json" ]; then
        $CLUSTUNE resume "experiments/$name"
    else
        # shellcheck disable=SC2086
        $CLUSTUNE search --preset "$preset" --name "$name" $BUDGET
    fi
    baselines=""
    for b in "$@"; do baselines="$baselines --baseline $b"; done
    # shellcheck disable=SC2086
    $CLUSTUNE confirm "experiments/$name" --top "$top" --seeds "$seeds" $baselines \
        --examples "$EXAMPLES" --attacks apgd-ce,apgd-t
    $CLUSTUNE export "experiments/$name" --out "results/$name"
    $CLUSTUNE report "results/$name" --out "results/$name/report.md"
}

run cpu-explore explore 2 5 pgd_at trades
run cpu-explore-l2 explore-l2 1 3 pgd_at
