"""Evaluate a trained run: decode the test split into K candidates per item and score them.

    python eval.py ckpt_path=logs/demo_audio_mcl/runs/<time> decoding=mcl_beam1
    python eval.py -m ckpt_path=<run> decoding=mle_beam,mle_dbs,mle_sampling_nucleus,tta_beam1
    python eval.py ckpt_path=<run>/checkpoints/K3/last.ckpt decoding=mcl_beam2 max_items=20
    python eval.py ckpt_path=<run>                                   # validation losses only

The run's own resolved config (`.hydra/config.yaml`) rebuilds data, backbone and adapters; the
checkpoint (adapters only, the best one ModelCheckpoint recorded) is loaded on top. Writes
predictions.jsonl and metrics.json to the evaluation's run folder and logs to MLflow
(configs/eval.yaml). Mismatches (another K, backbone, training scheme, or a decoding that does not
suit the model) fail with one line before anything is decoded.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from loramcl.interrupts import install  # noqa: E402  (a light module: no torch)

install()  # Ctrl+C / SIGTERM from the first moment, before Hydra and torch are imported: one line, 130 / 143

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from loramcl.cli import entry_point, run_hydra  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
@entry_point  # any failure: one `error:` line (loramcl.cli)
def main(cfg: DictConfig) -> dict:
    from loramcl.errors import ConfigError, MissingResource
    from loramcl.evaluation.main import left_behind, run_eval
    from loramcl.interrupts import stop_on_signals

    # Ctrl+C / SIGTERM: one line naming what was left, exit status 130 / 143; the handlers stay for
    # the next jobs of a multirun (in this process), so a signal anywhere in it ends the whole sweep
    with stop_on_signals(outcome=lambda: left_behind(cfg), restore=False):
        try:
            return run_eval(cfg)
        except (ConfigError, MissingResource) as err:  # raised before anything is decoded
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            sys.exit(f"error: {err}")


if __name__ == "__main__":
    run_hydra(main)  # every failure ends in one `error:` line (loramcl.cli)
