#!/bin/bash
# One training run on several GPUs (DDP, or FSDP with TRAINER=fsdp): one process per GPU, started by
# srun, picked up by Lightning's SLURM environment. Preemption and time limits: every rank gets USR1,
# last.ckpt is saved at the next step, rank 0 requeues the job, and the restarted job resumes from it
# (same run folder logs/<task>/runs/slurm-<job id>, same MLflow run). Submit from the project folder:
#
#   sbatch scripts/slurm/train_ddp.sh experiment=textcaps_mcl3
#   sbatch --nodes=2 scripts/slurm/train_ddp.sh experiment=textcaps_mcl3         # 2 nodes x 4 GPUs
#   TRAINER=fsdp sbatch scripts/slurm/train_ddp.sh experiment=textcaps_mcl3
#
# data.batch_size is per GPU: the global batch is batch_size x GPUs (x accumulate_grad_batches).
# CHANGE the #SBATCH lines for your cluster; --ntasks-per-node must equal the GPUs per node. All
# #SBATCH lines must stay above the first command: sbatch ignores those that come after one.
#SBATCH --job-name=loramcl-ddp
#SBATCH --partition=gpu                # CHANGE: your GPU partition
##SBATCH --account=myproject          # CHANGE: uncomment (one '#') if your cluster bills an account
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4            # CHANGE with --gres: one task (process) per GPU
#SBATCH --gres=gpu:4                   # GPUs per node
#SBATCH --cpus-per-task=8
#SBATCH --mem=256G                     # per node
#SBATCH --time=24:00:00                # CHANGE: your partition's limit; the job requeues itself at it
#SBATCH --signal=USR1@300              # USR1 to every srun task 5 min before the limit
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

PROJECT_DIR=${PROJECT_DIR:-${SLURM_SUBMIT_DIR:-$(pwd)}}   # the loramcl checkout
PYTHON=${PYTHON:-$PROJECT_DIR/.venv/bin/python}          # its environment (bash setup_env.sh)
TRAINER=${TRAINER:-ddp}                                  # ddp | fsdp (| ddp_cpu: the CPU demos)
# module load cuda/12.4                                   # CHANGE: your cluster's modules, if any

cd "$PROJECT_DIR"
echo "job $SLURM_JOB_ID: $SLURM_NTASKS tasks on $SLURM_JOB_NUM_NODES node(s), restart ${SLURM_RESTART_COUNT:-0}: train.py trainer=$TRAINER $*"
srun --kill-on-bad-exit=1 "$PYTHON" train.py "trainer=$TRAINER" "$@"
