#!/bin/bash
# Submit a training job (train.sh; TRAIN_SCRIPT=scripts/slurm/train_ddp.sh for several GPUs) and its
# decoding sweep (eval_sweep.sh), which starts only once the training ended well
# (--dependency=afterok; with a failed training it is cancelled, not left pending). Run it (no sbatch)
# from the project folder:
#
#   bash scripts/slurm/train_then_eval.sh experiment=clotho_mcl5 seed=1
#   DECODINGS=mcl_beam1 bash scripts/slurm/train_then_eval.sh experiment=demo_translation_mcl
#
# Every argument goes to train.py. The run folder is fixed here (logs/pipelines/<time>), so that the
# evaluation knows it before the training starts. sbatch options for both jobs: SBATCH_PARTITION,
# SBATCH_ACCOUNT, SBATCH_TIMELIMIT, ... (sbatch reads them from the environment).
set -euo pipefail

PROJECT_DIR=${PROJECT_DIR:-$(pwd)}
TRAIN_SCRIPT=${TRAIN_SCRIPT:-scripts/slurm/train.sh}
EVAL_SCRIPT=${EVAL_SCRIPT:-scripts/slurm/eval_sweep.sh}
RUN_DIR=${RUN_DIR:-$PROJECT_DIR/logs/pipelines/$(date +%Y-%m-%d_%H-%M-%S)}
EVAL_ARGS=${EVAL_ARGS:-}                                  # extra eval.py overrides, e.g. "max_items=500"

cd "$PROJECT_DIR"
if [[ -e "$RUN_DIR" ]]; then
    echo "error: $RUN_DIR already exists; choose another RUN_DIR" >&2
    exit 1
fi
train=$(sbatch --parsable ${TRAIN_SBATCH_ARGS:-} "$TRAIN_SCRIPT" "$@" "hydra.run.dir=$RUN_DIR")
# shellcheck disable=SC2086  # EVAL_ARGS / EVAL_SBATCH_ARGS are word lists
evaluation=$(sbatch --parsable ${EVAL_SBATCH_ARGS:-} --dependency="afterok:${train%%;*}" --kill-on-invalid-dep=yes "$EVAL_SCRIPT" "$RUN_DIR" $EVAL_ARGS)
echo "training job $train -> $RUN_DIR"
echo "evaluation job $evaluation (starts after $train ends well)"
