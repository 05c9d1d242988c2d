"""Train LoRA-MCL models from the Hydra configs in configs/.

    python train.py                                   # default: toy Markov experiment (transition1)
    python train.py experiment=transition2 seed=1
    python train.py -m mcl.num_hypotheses=1,2,3       # a sweep (basic launcher, one MLflow store)
    python train.py debug=fdr                         # fast dev run on the CPU
    python train.py -m hydra/launcher=slurm hydra.launcher.partition=gpu seed=0,1,2

    python train.py experiment=demo_translation_mcl ckpt_path=<run folder>   # resume its newest checkpoint
    python train.py experiment=... hydra.run.dir=logs/job42 ckpt_path=auto   # requeued job: continue itself

Returns `optimized_metric` (val/wta_loss by default) to sweepers. A non-finite loss or gradient
stops the run with exit status 1; SIGTERM / SIGINT save a checkpoint and exit with 143 / 130.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from loramcl.cli import entry_point, run_hydra  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@entry_point  # any failure: one `error:` line (loramcl.cli)
def main(cfg: DictConfig) -> float | None:
    from hydra.utils import get_method

    from loramcl.errors import ConfigError, MissingResource, RunStopped
    from loramcl.schema import validate_train

    try:
        settings = validate_train(cfg)  # the typed settings are what the runner receives, not the raw config
        metrics = get_method(settings.task.runner)(settings)
    except (ConfigError, MissingResource) as err:  # raised before any model is loaded
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {err}")
    except RunStopped as err:  # a NaN / inf (exit 1) or SIGTERM / SIGINT (exit 143 / 130), checkpoint saved
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)
    metric = settings.top.optimized_metric
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    # signals=False: a training handles SIGTERM / SIGINT / SIGUSR1 itself (callbacks.GracefulStop: save,
    # requeue), and SLURM's SIGTERM after a requeue must find the default handler, not an exception
    run_hydra(main, signals=False)  # every failure ends in one `error:` line (loramcl.cli)
