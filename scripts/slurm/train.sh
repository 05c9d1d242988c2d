#!/bin/bash
# One training run on one GPU. On preemption or near the time limit SLURM sends USR1: the run saves
# last.ckpt at the next step and requeues the job, which resumes from it by itself (same run folder
# logs/<task>/runs/slurm-<job id>, same MLflow run). Submit from the project folder:
#
#   sbatch scripts/slurm/train.sh experiment=clotho_mcl5 seed=1
#
# Every argument goes to train.py. CHANGE the #SBATCH lines for your cluster (or override them on
# the command line: `sbatch --partition=a100 --time=2-00:00:00 scripts/slurm/train.sh ...`). All
# #SBATCH lines must stay above the first command: sbatch ignores those that come after one.
#SBATCH --job-name=loramcl-train
#SBATCH --partition=gpu                # CHANGE: your GPU partition
##SBATCH --account=myproject          # CHANGE: uncomment (one '#') if your cluster bills an account
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1                   # one GPU (some clusters spell it --gpus=1)
#SBATCH --cpus-per-task=8              # data loading and metric workers
#SBATCH --mem=64G                      # host memory: the 7B backbone is loaded through it
#SBATCH --time=24:00:00                # CHANGE: your partition's limit; the job requeues itself at it
#SBATCH --signal=B:USR1@300            # USR1 to this script (exec'd python) 5 min before the limit
#SBATCH --requeue                      # allow the requeue (also on preemption)
#SBATCH --open-mode=append             # a requeued job appends to its log instead of replacing it
#SBATCH --output=slurm-%x-%j.out       # in the folder sbatch was called from
set -euo pipefail

# Values a user may change (or export before sbatch: the job inherits the environment)
PROJECT_DIR=${PROJECT_DIR:-${SLURM_SUBMIT_DIR:-$(pwd)}}   # the loramcl checkout
PYTHON=${PYTHON:-$PROJECT_DIR/.venv/bin/python}          # its environment (bash setup_env.sh)
# module load cuda/12.4                                   # CHANGE: your cluster's modules, if any

cd "$PROJECT_DIR"
echo "job $SLURM_JOB_ID on $(hostname), restart ${SLURM_RESTART_COUNT:-0}: train.py $*"
# exec: python becomes this batch step's process, so the B:USR1 signal reaches it
exec "$PYTHON" train.py "$@"
