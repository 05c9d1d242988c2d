"""`python eval.py ckpt_path=<run folder or checkpoint> decoding=<name>`: decode, score, log.

Order of work, cheapest checks first (nothing is decoded before all of them pass):
1. the checkpoint, the run's config and the evaluation config agree (K, training scheme, backbone,
   adapter rank) and the decoding method suits the model (MCL hypotheses vs one-output models);
2. data files and backbone weights exist (`training.preflight`);
3. the backbone is built and the checkpoint's adapter tensors match it name for name, shape for shape;
4. the test split is decoded into K candidates per item (progress bar), written to predictions.jsonl;
5. metrics (captioning or translation, diversity, win rates, oracle NLL) go to metrics.json and to
   MLflow (params = resolved configs, metrics, predictions and metrics as artifacts).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from loramcl.config import ConfigError
from loramcl.decoding.methods import Decoder, DecodingSpec
from loramcl.decoding.tta import TTAConfig, augment_audio_batch, augment_image_items
from loramcl.evaluation import find_checkpoints, run_config
from loramcl.lit_module import model_inputs
from loramcl.model import MCLModel
from loramcl.training import output_dir, preflight, validated_configs

log = logging.getLogger(__name__)

SINGLE_OUTPUT = ("beam", "dbs", "sample", "tta")


class UnsuitedDecoding(ConfigError):
    """The decoding method does not suit the run's model (e.g. beam search on an MCL run)."""


# ---------------------------------------------------------------------------- checks
def select_checkpoint(cfg: DictConfig, spec: Optional[DecodingSpec] = None) -> tuple[str, Path]:
    """(model name, checkpoint). A run folder with several models (toy, bilingual: mle and mcl) gives
    the one `model_name` names, else the only one that suits the decoding method (MCL hypotheses ->
    the K > 1 model, one-output methods -> the K = 1 model)."""
    path = Path(str(cfg.ckpt_path)).expanduser()
    if not path.exists():
        raise ConfigError(f"ckpt_path {path} does not exist (give a train.py run folder or a checkpoint in it)")
    try:
        found = find_checkpoints(path)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    name = cfg.get("model_name")
    if name:
        if name not in found:
            raise ConfigError(f"model_name={name} is not in {path}: it holds {', '.join(found)}")
        return name, found[name]
    if len(found) > 1 and spec is not None:
        suited = {n: c for n, c in found.items() if _suits(spec, _checkpoint_k(c))}
        if len(suited) == 1:
            return next(iter(suited.items()))
    if len(found) > 1:
        raise ConfigError(f"{path} holds several models ({', '.join(found)}): choose one with model_name=<name>")
    return next(iter(found.items()))


def _checkpoint_k(ckpt: Path) -> Optional[int]:
    try:
        meta = torch.load(ckpt, map_location="cpu", weights_only=False).get("loramcl", {})
    except Exception:  # unreadable: reported when it is chosen
        return None
    return None if meta.get("mode") == "moe" else meta.get("num_hypotheses")


def _suits(spec: DecodingSpec, K: Optional[int]) -> bool:
    if K is None:
        return False
    return K > 1 if spec.method == "hypotheses" else K == 1 and spec.method in SINGLE_OUTPUT


def scheme_of(train_cfg: DictConfig) -> tuple[str, str]:
    """(kind, label): kind in mcl | mle | moe."""
    mode, K = str(train_cfg.mcl.mode), int(train_cfg.mcl.num_hypotheses)
    if mode == "moe":
        return "moe", "LoRA-MoE"
    if K == 1:
        return "mle", "LoRA-MLE"
    return "mcl", f"LoRA-MCL ({mode})"


def skip_unsuited(cfg: DictConfig, err: UnsuitedDecoding) -> bool:
    """In a multirun (`eval.py -m ... decoding=a,b,c`), a method that does not suit this run is
    skipped with one warning and the sweep goes on (`skip_unsuited=false` makes it an error)."""
    setting = cfg.get("skip_unsuited", "auto")
    if setting == "auto":
        try:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            setting = HydraConfig.get().mode == RunMode.MULTIRUN
        except (ValueError, ImportError):  # not inside a Hydra run
            setting = False
    if setting:
        log.warning(f"skipped: {err}")
        return True
    return False


def submodel_config(train_cfg: DictConfig, name: str, meta: dict) -> DictConfig:
    """The config of one model of a run folder. Toy and bilingual runs train an MLE model (K = 1,
    bilingual: rank `task.mle_rank`) beside the MCL one from the same config; the MLE is then
    compared at the MCL's K."""
    K_run = int(train_cfg.mcl.num_hypotheses)
    if name == "mle" and K_run != 1 and int(meta.get("num_hypotheses", K_run)) == 1:
        override: dict = {"mcl": {"num_hypotheses": 1}, "num_candidates": train_cfg.get("num_candidates") or K_run}
        mle_rank = train_cfg.get("task", {}).get("mle_rank")
        if mle_rank:
            override["lora"] = {"r": int(mle_rank)}
        return OmegaConf.merge(train_cfg, override)
    return train_cfg


def num_candidates(cfg: DictConfig, train_cfg: DictConfig) -> int:
    """K of the comparison: eval's `num_candidates`, else the run's, else the model's K (if > 1)."""
    for value in (cfg.get("num_candidates"), train_cfg.get("num_candidates")):
        if value is not None:
            if int(value) < 1:
                raise ConfigError(f"num_candidates must be >= 1, got {value}")
            return int(value)
    K = int(train_cfg.mcl.num_hypotheses)
    if K > 1:
        return K
    raise ConfigError("this is a one-output (MLE) run: set num_candidates=K, the number of candidates to decode "
                      "(the K of the MCL runs it is compared with)")


def check_compatibility(cfg: DictConfig, train_cfg: DictConfig, meta: dict, spec: DecodingSpec, ckpt: Path) -> None:
    """Refuse, before anything is built, a checkpoint / config / decoding mismatch."""
    K_run, r_run = int(train_cfg.mcl.num_hypotheses), int(train_cfg.lora.r)
    if not meta:
        raise ConfigError(f"{ckpt} was not written by loramcl (no 'loramcl' entry)")
    if int(meta["num_hypotheses"]) != K_run or int(meta["r"]) != r_run:
        raise ConfigError(f"{ckpt} holds K={meta['num_hypotheses']}, r={meta['r']} adapters but its config says "
                          f"K={K_run}, r={r_run}")
    if meta.get("mode") is not None and (meta["mode"] == "moe") != (train_cfg.mcl.mode == "moe"):
        raise ConfigError(f"{ckpt} was trained with mode={meta['mode']} but its config says mode={train_cfg.mcl.mode}")
    expect_k = cfg.get("num_hypotheses")
    if expect_k is not None and int(expect_k) != K_run:
        raise ConfigError(f"num_hypotheses={expect_k} but {ckpt} was trained with K={K_run} hypotheses")
    expect_backbone = cfg.get("backbone")
    run_backbone = str(train_cfg.model.get("name_or_path") or train_cfg.model.get("_target_"))
    if expect_backbone and str(expect_backbone) not in (run_backbone, Path(run_backbone).name):
        raise ConfigError(f"backbone={expect_backbone} but {ckpt} was trained on {run_backbone}")
    kind, label = scheme_of(train_cfg)
    method = spec.method
    if method == "hypotheses" and K_run < 2:
        raise UnsuitedDecoding(f"decoding={spec.name} decodes each of the K hypotheses, but this {label} run has one: "
                          f"use a decoding for one-output models (beam, dbs, sampling, tta)")
    if method == "moe_sample" and kind != "moe":
        raise UnsuitedDecoding(f"decoding={spec.name} samples MoE experts, but this is a {label} run")
    if method in SINGLE_OUTPUT and kind == "mcl":
        raise UnsuitedDecoding(f"decoding={spec.name} is for one-output models (LoRA-MLE, LoRA-MoE); this {label} run has "
                          f"K={K_run} hypotheses: use mcl_beam1 / mcl_beam2 / mcl_beamK")
    if method == "hypotheses" and cfg.get("num_candidates") not in (None, K_run):
        raise ConfigError(f"decoding={spec.name} gives one candidate per hypothesis (K={K_run}); "
                          f"num_candidates={cfg.num_candidates} cannot hold")


def load_adapters(model: MCLModel, checkpoint: dict, ckpt: Path) -> None:
    """Copy the checkpoint's adapter (and router) tensors into `model`; refuse any mismatch."""
    state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise ConfigError(f"{ckpt} does not match this backbone's adapted layers ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected, e.g. {example}): was it trained on another backbone?")
    for name, value in state.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise ConfigError(f"{ckpt}: {name} has shape {tuple(value.shape)}, this model {tuple(own[name].shape)} "
                              f"(another K, rank or backbone)")
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value)


# ---------------------------------------------------------------------------- decoding
def batches(dataset: Any, batch_size: int, limit: Optional[int]):
    n = len(dataset) if not limit else min(int(limit), len(dataset))
    for start in range(0, n, batch_size):
        yield [dataset[i] for i in range(start, min(start + batch_size, n))]


def decode_split(decoder: Decoder, datamodule: Any, spec: DecodingSpec, K: int, batch_size: int,
                 limit: Optional[int], device: torch.device) -> list[dict]:
    """Decode the test split; one record per item with its K candidates."""
    from tqdm.auto import tqdm

    dataset = datamodule.sets["test"]
    collate = datamodule.collator(False, "first")
    kind = datamodule.kind
    tta = TTAConfig(**spec.tta) if spec.method == "tta" else None
    records = []
    total = len(dataset) if not limit else min(int(limit), len(dataset))
    with tqdm(total=total, desc=f"decoding ({spec.name})", unit="item") as bar:
        for items in batches(dataset, batch_size, limit):
            n = len(items)
            if tta is not None and kind == "image_caption":
                batch = collate(augment_image_items(items, K, tta))
                batch["references"], batch["ids"] = batch["references"][:n], batch["ids"][:n]
            else:
                batch = collate(items)
                if tta is not None:
                    batch = augment_audio_batch(batch, [it["id"] for it in items], K, tta)
            inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
            candidates = decoder.decode(inputs, n)
            for item, cands in zip(items, candidates):
                if len(cands) != K:
                    raise RuntimeError(f"decoding {spec.name} gave {len(cands)} candidates for item {item['id']}, not K={K}")
                refs = item.get("captions", item.get("references"))
                records.append({"id": item["id"], "references": list(refs), "candidates": [asdict(c) for c in cands]})
            bar.update(n)
    return records


@torch.no_grad()
def oracle_nll(model: MCLModel, datamodule: Any, batch_size: int, limit: Optional[int], device: torch.device) -> float:
    """Teacher-forced mean NLL of every reference under every hypothesis; min over hypotheses; mean
    over (item, reference) pairs (SPEC section 7). One-output models: their own NLL."""
    collate = datamodule.collator(True, "all")
    total, count = 0.0, 0
    for items in batches(datamodule.sets["test"], batch_size, limit):
        batch = collate(items)
        out = model(**{k: v.to(device) for k, v in model_inputs(batch).items()})
        per_row = out.hypothesis_losses.float().min(dim=0).values
        total += float(per_row.sum())
        count += per_row.numel()
    return total / max(count, 1)


# ---------------------------------------------------------------------------- metrics
def score(records: list[dict], kind: str, metrics_cfg: DictConfig) -> tuple[dict[str, float], dict[str, np.ndarray], list[str]]:
    from loramcl import metrics as M

    candidates = [[c["text"] for c in r["candidates"]] for r in records]
    references = [r["references"] for r in records]
    if kind == "translation":
        result = M.translation_metrics(candidates, references)
        primary, higher = "bleu", True
    else:
        result = M.caption_metrics(candidates, references, cache_dir=metrics_cfg.get("cache_dir"),
                                   java=metrics_cfg.get("java", "java"), spice=metrics_cfg.get("spice", "auto"),
                                   fense=metrics_cfg.get("fense", "auto"))
        primary, higher = "cider_d", True
    corpus = dict(result.corpus)
    corpus.update(M.diversity_metrics(candidates))
    sentence = dict(result.sentence)
    key = next((k for k in (primary, f"oracle_{primary}") if k in sentence), None)
    if key is not None:
        corpus.update(M.win_rates(np.asarray(sentence[key]), higher_is_better=higher))
    return corpus, sentence, list(result.notes)


# ---------------------------------------------------------------------------- entry
def run_decoding_eval(cfg: DictConfig) -> dict[str, float]:
    spec = DecodingSpec.from_config(cfg.decoding)
    name, ckpt = select_checkpoint(cfg, spec)
    train_cfg = OmegaConf.load(cfg.train_config) if cfg.get("train_config") else run_config(ckpt)
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated / not a torch file: torch raises several types
        raise ConfigError(f"{ckpt} cannot be read as a checkpoint ({type(err).__name__}: {err})") from None
    meta = checkpoint.get("loramcl", {}) if isinstance(checkpoint, dict) else {}
    train_cfg = submodel_config(train_cfg, name, meta)
    try:
        check_compatibility(cfg, train_cfg, meta, spec, ckpt)
    except UnsuitedDecoding as err:
        if not skip_unsuited(cfg, err):
            raise
        return {}
    K = num_candidates(cfg, train_cfg) if spec.method != "hypotheses" else int(train_cfg.mcl.num_hypotheses)
    spec.beams(K), spec.forward_passes(K)  # resolve "K", "2K", ... now: a bad value fails here
    kind, scheme = scheme_of(train_cfg)
    mcl_cfg, lora_cfg = validated_configs(train_cfg)

    datamodule = preflight(train_cfg)  # data files and backbone weights exist (or fail in one message)
    if not hasattr(datamodule, "sets") or "test" not in getattr(datamodule, "splits", {}):
        raise ConfigError(f"the run's data ({train_cfg.data.get('name')}) has no test split to decode")
    try:
        if spec.method == "tta" and datamodule.kind not in ("audio_caption", "image_caption"):
            raise UnsuitedDecoding(f"decoding={spec.name} (test-time augmentation) is defined for audio and image "
                                   f"inputs; this run's data is {datamodule.kind}")
    except UnsuitedDecoding as err:
        if not skip_unsuited(cfg, err):
            raise
        return {}
    datamodule.setup("test")

    torch.manual_seed(int(cfg.seed))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = MCLModel(instantiate(train_cfg.model), mcl_cfg, lora_cfg)
    load_adapters(model, checkpoint, ckpt)
    model.to(device).eval()
    tokenizer = getattr(datamodule.processor, "tokenizer", datamodule.processor)
    routing: Any = "moe" if kind == "moe" else 0
    gen = cfg.generation
    decoder = Decoder(model, tokenizer, spec, K, max_new_tokens=gen.max_new_tokens,
                      repetition_penalty=gen.get("repetition_penalty"), routing=routing,
                      length_penalty=gen.get("length_penalty", 1.0))
    batch_size = int(cfg.get("batch_size") or train_cfg.data.get("val_batch_size") or 8)
    limit = cfg.get("max_items")
    method_label = spec.describe(K)
    log.info(f"evaluating {scheme} ({name}: {ckpt}) with {method_label}: K={K} candidates per item")

    start = time.perf_counter()
    torch.manual_seed(int(cfg.seed))  # sampling seeds
    records = decode_split(decoder, datamodule, spec, K, batch_size, limit, device)
    decode_seconds = time.perf_counter() - start

    data_kind = datamodule.kind
    metrics, sentence, notes = score(records, data_kind, cfg.metrics)
    if cfg.metrics.get("oracle_nll", True):
        metrics["oracle_nll"] = oracle_nll(model, datamodule, batch_size, limit, device)
    metrics["forward_passes"] = float(spec.forward_passes(K))
    metrics["decode_seconds"] = decode_seconds
    for i, record in enumerate(records):  # sentence-level scores kept beside each candidate
        for j, cand in enumerate(record["candidates"]):
            cand["metrics"] = {k: float(v[i][j]) for k, v in sentence.items()}

    info = {"scheme": scheme, "scheme_kind": kind, "decoding": spec.name, "method": method_label, "num_hypotheses": K,
            "task_type": "translation" if data_kind == "translation" else "captioning", "train_run": str(ckpt),
            "model_name": name, "items": len(records), "notes": notes}
    out = output_dir(cfg)
    files = []
    if out is not None:
        files = write_outputs(out, records, metrics, info)
    log_to_mlflow(cfg, train_cfg, metrics, info, files)
    log.info(f"{scheme} / {method_label}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return metrics


def write_outputs(out: Path, records: list[dict], metrics: dict[str, float], info: dict) -> list[Path]:
    predictions = out / "predictions.jsonl"
    with open(predictions, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    summary = out / "metrics.json"
    summary.write_text(json.dumps({**info, "metrics": metrics}, indent=2, ensure_ascii=False))
    log.info(f"wrote {predictions} and {summary}")
    return [predictions, summary]


def log_to_mlflow(cfg: DictConfig, train_cfg: DictConfig, metrics: dict[str, float], info: dict,
                  files: list[Path]) -> None:
    ml = cfg.get("mlflow")
    if not ml or not ml.get("enabled", True):
        return
    from loramcl.utils.mlflow_store import MLflowRun, flatten

    experiment = ml.get("experiment") or f"eval_{train_cfg.data.get('name', 'data')}"
    run = MLflowRun(ml.tracking_uri, experiment, ml.artifact_location, f"{info['scheme']} / {info['decoding']}",
                    tags={"loramcl.kind": "eval", "task": "eval"})
    try:
        params = {f"eval.{k}": v for k, v in info.items() if k != "notes"}
        params.update(flatten(OmegaConf.to_container(cfg, resolve=True), "cfg."))
        params.update(flatten(train_cfg_safe(train_cfg), "train."))
        run.log_params(params)
        run.log_metrics(metrics)
        for path in files:
            run.log_artifact(path)
        run.finish()
    except Exception:
        run.finish("FAILED")
        raise
    log.info(f"logged to MLflow experiment {experiment!r} (run {run.run_id})")


def train_cfg_safe(train_cfg: DictConfig) -> dict:
    """The run's config as a plain dict; entries that only resolve inside a Hydra run are kept raw."""
    container = OmegaConf.to_container(train_cfg, resolve=False)
    try:
        return OmegaConf.to_container(OmegaConf.create({k: v for k, v in container.items() if k != "paths"}),
                                      resolve=True)
    except Exception:
        return container
