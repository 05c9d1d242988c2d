#!/bin/bash
# The decoding sweep of one trained run on one GPU: eval.py over every method in DECODINGS (methods
# that do not suit the run, e.g. beam search on an MCL run, are skipped with one line). Results go to
# the run's MLflow experiment eval_<data> and logs/eval/multiruns/. Submit from the project folder:
#
#   sbatch scripts/slurm/eval_sweep.sh logs/clotho_mcl5/runs/slurm-123456
#   DECODINGS=mcl_beam1,mcl_beamK sbatch scripts/slurm/eval_sweep.sh <run folder> max_items=500
#
# The first argument is the train.py run folder (or a checkpoint in it); the rest go to eval.py.
# Preemption and time limits: USR1 stops the running method (its MLflow run closed as KILLED) and the
# job requeues itself; its next start runs only the methods without a finished MLflow run of this
# run folder and these arguments (python -m loramcl.reproduce.eval_job), at most max_requeues times.
#SBATCH --job-name=loramcl-eval
#SBATCH --partition=gpu                # CHANGE: your GPU partition
##SBATCH --account=myproject          # CHANGE: uncomment (one '#') if your cluster bills an account
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=12:00:00                # CHANGE
#SBATCH --signal=B:USR1@300            # USR1 to this script (exec'd python) 5 min before the limit
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

PROJECT_DIR=${PROJECT_DIR:-${SLURM_SUBMIT_DIR:-$(pwd)}}
PYTHON=${PYTHON:-$PROJECT_DIR/.venv/bin/python}
# every method of the paper's sweep; unsuited ones are skipped
DECODINGS=${DECODINGS:-mcl_beam1,mcl_beam2,mcl_beamK,mcl_dbs,mle_beam,mle_dbs,mle_sampling_nucleus,mle_sampling_typical,tta_beam1,moe_standard}
# module load cuda/12.4 java/17                           # CHANGE: METEOR / SPICE need Java

RUN=${1:?usage: sbatch scripts/slurm/eval_sweep.sh <train.py run folder> [eval.py overrides]}
shift
cd "$PROJECT_DIR"
echo "job ${SLURM_JOB_ID:-(not SLURM)}, restart ${SLURM_RESTART_COUNT:-0}: eval.py -m ckpt_path=$RUN decoding=$DECODINGS $*"
exec "$PYTHON" -m loramcl.reproduce.eval_job --run "$RUN" --decodings "$DECODINGS" "$@"
