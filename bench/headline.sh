#!/bin/sh
# The headline of docs/results.md, end to end: the cpu-ablation search at the paper table's
# budget (24 trials, 4 epochs of 50 batches, ASHA from epoch 1, TPE as it was run), its 3 best trials audited with
# AutoAttack (standard) on EXAMPLES test images, then the best unflagged configuration and the
# PGD-AT and TRADES baselines retrained with 3 new seeds each and re-audited (APGD-CE + APGD-T,
# docs/evaluation.md), then the export and report in results/headline.
#
#   make headline                          # or: sh bench/headline.sh
#   EXAMPLES=1000 GPUS=0.16 make headline  # with a GPU: audits on it, 1,000 images
#
# Every step continues where it stopped, so running it again after an interruption finishes
# the job. About two hours on 2 CPU cores (the search alone: 34 minutes).
set -eu
cd "$(dirname "$0")/.."
CLUSTUNE=${CLUSTUNE:-.venv/bin/clustune}
EXP=experiments/headline
EXAMPLES=${EXAMPLES:-500}
GPUS=${GPUS:-0}

if [ -f "$EXP/clustune.json" ]; then
    $CLUSTUNE resume "$EXP"
else
    $CLUSTUNE search --preset cpu-ablation --name headline \
        --set train.data.train_subset=30000 --set train.optim.epochs=4 \
        --set train.optim.batches_per_epoch=50 --set train.warm_start.ce_epochs=1 \
        --set search.grace_period=1 --set search.sampler=tpe --num-samples 24 \
        --final-top-k 3 --final-examples "$EXAMPLES" --gpus-per-trial "$GPUS"
fi
$CLUSTUNE confirm "$EXP" --top 1 --seeds 3 --baseline pgd_at --baseline trades \
    --examples "$EXAMPLES" --attacks apgd-ce,apgd-t
$CLUSTUNE export "$EXP" --out results/headline
$CLUSTUNE report results/headline --out results/headline/report.md
