"""`python predict.py ckpt_path=<run> input="..."`: a trained run's K answers for new inputs.

    python predict.py ckpt_path=logs/text/runs/<time> input="How do I say hello?"
    python predict.py ckpt_path=<run> input_file=questions.txt          # one input per line
    python predict.py ckpt_path=<run> input_file=rows.jsonl decoding=mcl_dbs
    python predict.py ckpt_path=<audio run> input=clip.wav              # captioning runs: media paths

Inputs are what the run's data would give as an input: text (data=text runs, with the fields its
prompt uses when `input_file` is JSON Lines / CSV / Parquet; translation runs: the source), or
the path of an audio clip / image for the captioning runs (a .txt / CSV / JSONL file of paths:
field `path`). The decoding is any method of the registry (configs/decoding/); by default the
run's natural one: its K hypotheses (mcl_beam1) for LoRA-MCL, beam search returning K
(`mle_beam`) for LoRA-MLE and LoRA-MoE. Each input's K answers are printed and written as JSON
Lines (`output`, by default predictions.jsonl in this command's run folder; an existing file is
never replaced). Everything is checked before the model is loaded: the run, the decoding, the inputs
(one line naming file, line and field), the output.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from loramcl.errors import ConfigError, MissingResource

log = logging.getLogger(__name__)

NATURAL = {"mcl": "mcl_beam1", "mle": "mle_beam", "moe": "moe_standard"}  # the decoding each scheme is made for
MEDIA = {"audio_caption": "audio", "image_caption": "image"}
ANSWERS = ("text", "translation", "audio_caption", "image_caption")  # the data kinds with inputs to answer
PATH_FIELDS = ("path", "file", "audio", "image")  # where a file of media inputs names each file


@dataclass
class Prediction:
    """The checked plan: which model, which decoding, which inputs, where the answers go."""

    spec: Any
    checkpoint: Any
    train_cfg: Any
    scheme: Any
    K: int
    datamodule: Any
    items: list[dict]
    output: Path


def decoding_config(decoding: Optional[dict], scheme_kind: str) -> dict:
    """The decoding's values: the one given, else configs/decoding/<the scheme's natural one>.yaml."""
    if decoding:
        return decoding
    from hydra import compose

    return dict(compose(config_name="predict", overrides=[f"decoding={NATURAL[scheme_kind]}"]).decoding)


def media_paths(top: Any) -> list[tuple[str, str]]:
    """(where, path) of every media input: `input`, or the lines / rows of `input_file`."""
    if top.input is not None:
        return [("input", str(top.input))]
    path = Path(str(top.input_file)).expanduser()
    if not path.is_file():
        raise MissingResource(f"input_file={path} does not exist")
    if path.suffix.lower() in (".txt", ""):
        return [(f"{path}:{n}", line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    from loramcl.data.rows import _csv_rows, _json_rows, file_format

    rows = _json_rows(path) if file_format(path) == "json" else _csv_rows(path)
    found = []
    for where, row in rows:
        field = next((f for f in PATH_FIELDS if isinstance(row, dict) and row.get(f)), None)
        if field is None:
            raise ConfigError(f"{where}: no field naming the file (one of {', '.join(PATH_FIELDS)})")
        found.append((where, str(row[field])))
    return found


def read_inputs(top: Any, datamodule: Any, base: Path) -> list[dict]:
    """The items to decode, in the form the run's collator takes, each checked (one line on a bad one)."""
    kind = datamodule.kind
    if kind in MEDIA:
        items = []
        for i, (where, raw) in enumerate(media_paths(top)):
            file = Path(raw).expanduser()
            file = file if file.is_absolute() else (base / file)
            if not file.is_file():
                raise MissingResource(f"{where}: {raw} does not exist")
            items.append({"id": raw, "captions": [], MEDIA[kind]: _media(kind, file, where)})
        return items
    from loramcl.data.rows import TextSchema, input_rows

    schema = getattr(datamodule, "schema", None) or TextSchema("source", "references", None, "{source}")
    if top.input is not None:
        if not str(top.input).strip():
            raise ConfigError("input is empty: give the text to answer, input=\"...\"")
        missing = [f for f in schema.prompt_fields if f != schema.input_field]
        if missing:
            raise ConfigError(f"the run's prompt uses the field(s) {', '.join(missing)} besides the input: give them "
                              f"in an input_file (JSON Lines / CSV rows)")
        return [{"id": "0", "source": str(top.input), "references": [], "fields": {}}]
    from loramcl.data.hdf5 import DataFormatError

    try:
        return input_rows(top.input_file, schema)
    except FileNotFoundError as err:
        raise MissingResource(str(err)) from None
    except (DataFormatError, ValueError) as err:  # a bad row: file, line and field in one line
        raise ConfigError(str(err)) from None


def _media(kind: str, file: Path, where: str) -> Any:
    from loramcl.data.hdf5 import DataFormatError

    try:
        if kind == "audio_caption":
            from loramcl.data.prepare import load_audio

            return load_audio(file)[0]
        from PIL import Image

        with Image.open(file) as image:
            return image.convert("RGB")
    except DataFormatError as err:
        raise ConfigError(f"{where}: {err}") from None
    except Exception as err:  # PIL's several error types
        raise ConfigError(f"{where}: {file} cannot be read as an image ({' '.join(str(err).split())[:120]})") from None


def output_path(top: Any, output_dir: Optional[Path]) -> Path:
    """Where the answers go; an existing file is refused (nothing is ever replaced)."""
    if top.output is not None:
        path = Path(str(top.output)).expanduser()
    elif output_dir is not None:
        path = output_dir / "predictions.jsonl"
    else:
        raise ConfigError("output is not set: give output=<file.jsonl>")
    if path.exists():
        raise ConfigError(f"output={path} already exists: give another file (nothing is replaced)")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"output={path}: {path.parent} is not a folder")
    return path


def plan(settings: Any) -> Prediction:
    """Every check, cheapest first, before the model is loaded."""
    from loramcl.decoding.methods import DecodingSpec
    from loramcl.evaluation.checks import check_compatibility, check_data, num_candidates, select_checkpoint
    from loramcl.preflight import preflight
    from loramcl.runs import checkpoint_config
    from loramcl.schemes import Scheme

    top = settings.top
    output = output_path(top, settings.output_dir)
    if top.input_file is not None and not Path(str(top.input_file)).expanduser().is_file():
        raise MissingResource(f"input_file={top.input_file} does not exist")
    given = settings.raw.get("decoding")
    probe = DecodingSpec.from_config(given or {"name": "mcl_beam1", "method": "hypotheses"})
    checkpoint = select_checkpoint(top, probe)
    train_cfg = checkpoint_config(checkpoint, None)
    scheme = Scheme.of_config(train_cfg)
    spec = DecodingSpec.from_config(decoding_config(given, scheme.kind))
    check_compatibility(top, train_cfg, checkpoint, spec)
    K = int(train_cfg.mcl.num_hypotheses) if scheme.kind == "mcl" else num_candidates(top, train_cfg)
    spec.beams(K), spec.forward_passes(K)
    if spec.method == "teacher_forced":
        raise ConfigError(f"decoding={spec.name} scores references, it writes no answers: choose a decoding method")
    datamodule = preflight(train_cfg, training=False, data_files=False)  # the backbone's weights, not its data
    kind = getattr(datamodule, "kind", None)
    if kind not in ANSWERS:
        raise ConfigError(f"predict.py answers {', '.join(ANSWERS)} runs; this run's data "
                          f"({train_cfg.data.get('_target_')}) has no inputs to answer (the toy: see its summary.json)")
    check_data(spec, kind)
    items = read_inputs(top, datamodule, Path.cwd())
    return Prediction(spec, checkpoint, train_cfg, scheme, K, datamodule, items, output)


def run_predict(settings: Any) -> list[dict]:
    """Decode every input into K answers; print them and write them as JSON Lines."""
    from loramcl.decoding.methods import Decoder
    from loramcl.evaluation.decoding_run import decode_split
    from loramcl.interrupts import doing
    from loramcl.runs import load_model
    from loramcl.utils.atomic import write_text_atomic

    top = settings.top
    doing("checking the run, the decoding and the inputs")
    p = plan(settings)
    datamodule = p.datamodule
    datamodule.processor = datamodule.load_processor()
    datamodule.sets = {"test": p.items}
    accelerator = top.accelerator
    device = torch.device("cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and
                                                                        torch.cuda.is_available()) else "cpu")
    torch.manual_seed(top.seed)
    doing(f"loading the model ({p.checkpoint.path})")
    model = load_model(p.checkpoint, p.train_cfg).to(device).eval()
    tokenizer = getattr(datamodule.processor, "tokenizer", datamodule.processor)
    gen = top.generation
    decoder = Decoder(model, tokenizer, p.spec, p.K, max_new_tokens=gen.max_new_tokens,
                      repetition_penalty=gen.repetition_penalty, length_penalty=gen.length_penalty)
    log.info(f"{p.scheme.label} ({p.checkpoint.path}) with {p.spec.describe(p.K)}: {p.K} answers for each of "
             f"{len(p.items)} input(s) on {device}")
    with torch.no_grad():
        records = decode_split(decoder, datamodule, p.spec, p.K, top.batch_size, None, device, top.seed)
    lines = []
    for item, record in zip(p.items, records):
        record.pop("_batch", None)
        shown = item.get("source") or record["id"]
        out = {"id": record["id"], "input": shown, "decoding": p.spec.name,
               "answers": [c["text"] for c in record["candidates"]], "candidates": record["candidates"]}
        if item.get("references"):
            out["references"] = item["references"]
        lines.append(out)
    print_answers(lines)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines)
    if not write_text_atomic(p.output, text, overwrite=False):  # appeared while decoding: kept
        raise ConfigError(f"output={p.output} appeared while decoding (another command?): it was kept, these "
                          f"answers were not written")
    log.info(f"wrote {len(lines)} input(s) x {p.K} answers to {p.output}")
    return lines


def print_answers(lines: list[dict], width: int = 100) -> None:
    """Each input, then its K answers with what produced them and the decoder's score."""
    for n, line in enumerate(lines, start=1):
        text = " ".join(str(line["input"]).split())
        print(f"[{n}] {text[:width] + ('...' if len(text) > width else '')}")
        for cand in line["candidates"]:
            print(f"    {cand['hypothesis']}: {cand['text']}  ({cand['score']:.3f})")
    print(flush=True)
