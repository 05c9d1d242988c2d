"""Evaluate a trained run on its validation data (minimal for now: the WTA loss family).

    python eval.py ckpt_path=logs/transition1/runs/<time>                 # a run folder of train.py
    python eval.py ckpt_path=logs/transition1/runs/<time>/checkpoints/mcl/last.ckpt

The run's own resolved config (`.hydra/config.yaml`) rebuilds data, backbone and adapters; the
checkpoint (adapters only) is loaded on top. Writes eval_metrics.json to the evaluation run folder.
"""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> dict:
    from loramcl.evaluation import run_eval

    return run_eval(cfg)


if __name__ == "__main__":
    main()
