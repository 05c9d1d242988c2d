"""A trained run's K answers for new inputs (src/loramcl/predict.py).

    python predict.py ckpt_path=logs/text/runs/<time> input="How do I say hello?"
    python predict.py ckpt_path=<run> input_file=inputs.txt                 # one input per line
    python predict.py ckpt_path=<run> input_file=rows.jsonl decoding=mcl_dbs output=answers.jsonl
    python predict.py ckpt_path=logs/demo_audio_mcl/runs/<time> input=clip.wav

Prints each input's K answers and writes them as JSON Lines (configs/predict.yaml); everything is
checked, with one line on a problem, before the model is loaded.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from loramcl.interrupts import install  # noqa: E402  (a light module: no torch)

install()  # Ctrl+C / SIGTERM from the first moment: one line, 130 / 143

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from loramcl.cli import entry_point, run_hydra  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
@entry_point  # any failure: one `error:` line (loramcl.cli)
def main(cfg: DictConfig) -> None:
    from loramcl.errors import ConfigError, MissingResource
    from loramcl.interrupts import stop_on_signals
    from loramcl.predict import run_predict
    from loramcl.schema.evaluation import validate_predict

    with stop_on_signals(outcome=lambda: "no answers were written", restore=False):
        try:
            run_predict(validate_predict(cfg))
        except (ConfigError, MissingResource) as err:  # raised before the model is loaded
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            sys.exit(f"error: {err}")


if __name__ == "__main__":
    run_hydra(main)
