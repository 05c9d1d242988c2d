"""Will a training config fit one GPU, and with what batch? Parameters, gradients, optimizer state and
measured activations per device, the total, the verdict, and the largest batch that fits.

    python scripts/plan_memory.py experiment=clotho_mcl5                        # one 80 GB GPU
    python scripts/plan_memory.py experiment=clotho_mcl5 mcl.num_hypotheses=3 --gpu-gb 40
    python scripts/plan_memory.py experiment=textcaps_mcl3 trainer=fsdp --devices 4
    python scripts/plan_memory.py experiment=alma_ende_mcl3 --json plan.json

Arguments other than the options below are train.py overrides. Activations are measured: the real
model class at its true width, one layer, one row, on this machine's GPU (or CPU: minutes at 7B
width, cached afterwards), scaled to the model's depth and the step's rows. The method is in
src/loramcl/memory_plan.py; bench/README.md compares plans with measured peaks.
"""

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def main(argv=None) -> int:
    from loramcl.cli import ArgumentParser, arg  # one-line errors
    from loramcl.schema.fields import Float, Int

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. experiment=clotho_mcl5")
    parser.add_argument("--gpu-gb", type=arg(Float(0, low_open=True)), default=80.0, help="memory of one GPU in GiB (default 80: A100 / H100)")
    parser.add_argument("--devices", type=arg(Int(1)), default=None, help="devices of the run (default: trainer.devices)")
    parser.add_argument("--device", default=None, help="where the probe runs (default: cuda if present, else cpu)")
    parser.add_argument("--seconds", type=arg(Float(0, low_open=True)), default=None, help="audio per clip (default: the dataset's longest)")
    parser.add_argument("--image", type=arg(Int(1)), default=None, help="image side in pixels (default 672: a 2 x 2 tile set)")
    parser.add_argument("--text-tokens", type=arg(Int(1)), default=None, help="target tokens per item (source too, for MT)")
    parser.add_argument("--no-cache", action="store_true", help="measure the probe again")
    parser.add_argument("--probe-exact-dtype", action="store_true",
                        help="on a CPU, probe in the run's dtype (bf16) instead of fp32: exact, but ~5x slower")
    parser.add_argument("--json", default=None, help="also write the plan as JSON to this file")
    args = parser.parse_args(argv)

    from hydra import compose, initialize_config_dir

    from loramcl.errors import ConfigError
    from loramcl.memory_plan import format_plan, plan

    try:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3", job_name="plan_memory"):
            cfg = compose("train", overrides=args.overrides)
        from loramcl.schema import validate_train

        validate_train(cfg, lenient=True)  # every value named by its key, before anything is measured
        result = plan(cfg, gpu_gb=args.gpu_gb, device=args.device, devices=args.devices, seconds=args.seconds,
                      image=args.image, text_tokens=args.text_tokens, use_cache=not args.no_cache,
                      probe_dtype_exact=args.probe_exact_dtype,
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_plan(result))
    if args.json:
        from loramcl.utils.atomic import publish_files

        target = Path(args.json)  # written whole; a file it replaces is kept in previous/<time>/ beside it
        publish_files(target.parent, lambda stage: [_write(stage / target.name, json.dumps(result.as_dict(), indent=2,
                                                                                           default=str))], target.name)
    return 0


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


if __name__ == "__main__":
    from loramcl.cli import run_script
    from loramcl.interrupts import stop_on_signals

    with stop_on_signals():  # Ctrl+C / SIGTERM: one `error:` line, exit status 130 / 143
        sys.exit(run_script(main))
