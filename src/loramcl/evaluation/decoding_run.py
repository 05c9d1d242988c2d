"""`python eval.py ckpt_path=<run folder or checkpoint> decoding=<name>`: decode, score, report.

Order of work, cheapest checks first (nothing is decoded before all of them pass):
1. the checkpoint, the run's config and the evaluation config agree (K, training scheme, backbone,
   adapter rank) and the decoding method suits the model and the data (`checks`);
2. data files and backbone weights exist (`preflight`);
3. the backbone is built and the checkpoint's adapter tensors match it name for name, shape for shape;
4. the test split is decoded into K candidates per item (progress bar), written to predictions.jsonl;
   with `devices=N` N processes decode every N-th batch each and rank 0 gathers them (the same
   records as one process: batches are the same and batch b is seeded with seed + b);
5. the task's metrics (captioning, translation or text, diversity, win rates) and the oracle NLL go to
   metrics.json and to MLflow (`report`), and every item's candidates to candidates.html (`browser`). `decoding=test_loss` skips step 4 and scores the oracle
   NLL only. The MLflow run is opened before step 4: Ctrl+C / SIGTERM closes it as KILLED (an
   error as FAILED), and eval.py ends with one line (`loramcl.interrupts`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from loramcl.data.collate import model_inputs
from loramcl.decoding.methods import Decoder, DecodingSpec
from loramcl.decoding.tta import TTAConfig, augment_audio_batch, augment_image_items
from loramcl.errors import ConfigError, UnsuitedDecoding
from loramcl.evaluation.checks import check_compatibility, check_data, num_candidates, select_checkpoint, skip_unsuited
from loramcl.evaluation.report import evaluation_run, log_to_mlflow, write_outputs
from loramcl.interrupts import doing
from loramcl.metrics.tasks import score, task_for
from loramcl.preflight import preflight
from loramcl.runs import checkpoint_config, load_model
from loramcl.schema.evaluation import EvalSettings
from loramcl.schemes import Scheme

log = logging.getLogger(__name__)


def batches(dataset: Any, batch_size: int, limit: Optional[int], rank: int = 0, world: int = 1):
    """Batches of consecutive items (the first `limit`); with `world` > 1, batches rank, rank + world,
    ... only: the same batches a single process decodes, dealt out round-robin."""
    n = len(dataset) if not limit else min(int(limit), len(dataset))
    for number, start in enumerate(range(0, n, batch_size)):
        if number % world == rank:
            yield number, [dataset[i] for i in range(start, min(start + batch_size, n))]


def decode_split(decoder: Decoder, datamodule: Any, spec: DecodingSpec, K: int, batch_size: int,
                 limit: Optional[int], device: torch.device, seed: int = 0, rank: int = 0,
                 world: int = 1) -> list[dict]:
    """Decode the test split (this process's batches of it); one record per item with its K
    candidates. Batch b is decoded after `torch.manual_seed(seed + b)`, so sampling gives every item
    the same candidates on any number of processes."""
    from tqdm.auto import tqdm

    dataset = datamodule.sets["test"]
    collate = datamodule.collator(False, "first")
    tta = TTAConfig(**spec.tta) if spec.entry.augments_inputs else None
    records = []
    total = len(dataset) if not limit else min(int(limit), len(dataset))
    desc = f"decoding ({spec.name})" + (f", process {rank} of {world}" if world > 1 else "")
    with tqdm(total=total if world == 1 else None, desc=desc, unit="item", disable=rank > 0) as bar:
        doing(lambda: f"decoding ({spec.name}, {len(records)} of {total} items done)")
        for number, items in batches(dataset, batch_size, limit, rank, world):
            n = len(items)
            torch.manual_seed(seed + number)
            if tta is not None and datamodule.kind == "image_caption":
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
                    raise RuntimeError(f"decoding {spec.name} gave {len(cands)} candidates for item {item['id']}, "
                                       f"not K={K}")
                refs = item.get("captions", item.get("references"))
                record = {"id": item["id"], "references": list(refs), "candidates": [asdict(c) for c in cands],
                          "_batch": number}
                if item.get("languages") is not None:  # bilingual data: the language of each reference
                    record["reference_languages"] = list(item["languages"])
                records.append(record)
            bar.update(n)
    return records


@torch.no_grad()
def oracle_nll_sums(model: Any, datamodule: Any, batch_size: int, limit: Optional[int], device: torch.device,
                    rank: int = 0, world: int = 1) -> tuple[float, int]:
    """(sum, count) of the teacher-forced mean NLL of every reference under every hypothesis, min over
    hypotheses (SPEC section 7), over this process's batches; one-output models: their own NLL."""
    collate = datamodule.collator(True, "all")
    total, count = 0.0, 0
    for _, items in batches(datamodule.sets["test"], batch_size, limit, rank, world):
        batch = collate(items)
        out = model(**{k: v.to(device) for k, v in model_inputs(batch).items()})
        per_row = out.hypothesis_losses.float().min(dim=0).values
        total += float(per_row.sum())
        count += per_row.numel()
    return total, count


def launch_processes(devices: int, accelerator: str) -> Any:
    """With `devices` > 1: Lightning Fabric's DDP launcher (it starts the other processes, each
    running eval.py again in the same run folder; under `srun`, SLURM started them); returns the
    Fabric, or None for one process."""
    if devices == 1:
        return None
    from lightning.fabric import Fabric

    from loramcl.cluster import cluster_plugins

    fabric = Fabric(accelerator=accelerator or "auto", devices=devices, strategy="ddp",
                    plugins=cluster_plugins() or None)
    fabric.launch()
    return fabric


def gather_records(fabric: Any, records: list[dict]) -> list[dict]:
    """Every process's records on every process, in the order of a single-process run."""
    import torch.distributed as dist

    shards: list[Any] = [None] * fabric.world_size
    dist.all_gather_object(shards, records)
    merged = [r for shard in shards for r in shard]
    merged.sort(key=lambda r: r["_batch"])  # stable: items keep their order inside a batch
    return merged


def check_reference_language(datamodule: Any, language: str) -> None:
    """`references_language` needs data whose references carry a language (the bilingual sets)."""
    test = datamodule.sets["test"]
    languages = {lang for row in getattr(test, "languages", None) or [] for lang in row}
    if language not in languages:
        raise ConfigError(f"references_language={language}: the test references of {datamodule.name!r} are in "
                          f"{', '.join(sorted(languages)) or 'no recorded language'}; it is for bilingual data "
                          f"(set it to one of those, or null)")


def only_language(records: list[dict], language: str) -> list[dict]:
    """Each item scored against its references in `language` only; items with none are left out."""
    kept = []
    for record in records:
        refs = [r for r, lang in zip(record["references"], record.get("reference_languages") or []) if lang == language]
        if refs:
            kept.append({**record, "references": refs})
    log.info(f"references_language={language}: {len(kept)} of {len(records)} items have references in it")
    return kept


def check_semantic(options: Any) -> None:
    """metrics.semantic is a known mode and, when required (true), its embedding model can be loaded."""
    from loramcl.metrics.semantic import DEFAULT_MODEL, mode_of, model_source

    try:
        mode = mode_of(options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if mode == "true":
        model_source(str(options.get("embedding_model") or DEFAULT_MODEL))


@dataclass
class Plan:
    """Everything checked before a model is built: what to decode, with which model, at which K."""

    spec: DecodingSpec
    checkpoint: Any  # loramcl.checkpoints.Checkpoint
    train_cfg: DictConfig
    scheme: Scheme
    K: int
    datamodule: Any
    task: Any  # loramcl.metrics.tasks.Task


def plan(settings: EvalSettings) -> Optional[Plan]:
    """The checks of steps 1 and 2, cheapest first; None when a multirun skips an unsuited method."""
    top = settings.top
    spec = DecodingSpec.from_config(settings.raw["decoding"])
    checkpoint = select_checkpoint(top, spec)
    train_cfg = checkpoint_config(checkpoint, load_train_config(top.train_config) if top.train_config else None)
    try:
        check_compatibility(top, train_cfg, checkpoint, spec)
    except UnsuitedDecoding as err:
        if not skip_unsuited(top.skip_unsuited, err):
            raise
        return None
    scheme = Scheme.of_config(train_cfg)
    K = int(train_cfg.mcl.num_hypotheses) if scheme.kind == "mcl" else num_candidates(top, train_cfg)
    spec.beams(K), spec.forward_passes(K)  # resolve "K", "2K", ... now: a bad value fails here
    if spec.method == "teacher_forced" and not top.metrics.oracle_nll:
        raise ConfigError(f"decoding={spec.name} computes the oracle NLL only: it needs metrics.oracle_nll=true")
    if top.references_language and top.metrics.oracle_nll:
        raise ConfigError("references_language scores the candidates against one language's references; the oracle "
                          "NLL covers every reference: add metrics.oracle_nll=false")

    check_semantic(settings.metrics)
    datamodule = preflight(train_cfg, training=False)  # data files and backbone weights exist (or fail in one message)
    if not hasattr(datamodule, "sets") or "test" not in getattr(datamodule, "splits", {}):
        raise ConfigError(f"the run's data ({train_cfg.data.get('name')}) has no test split to decode")
    try:
        check_data(spec, datamodule.kind)
    except UnsuitedDecoding as err:
        if not skip_unsuited(top.skip_unsuited, err):
            raise
        return None
    return Plan(spec, checkpoint, train_cfg, scheme, K, datamodule, task_for(datamodule.kind))


def load_train_config(path: str) -> DictConfig:
    """`train_config=<file>`: a train.py config to rebuild the run with (one line if it cannot be read)."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:
        raise ConfigError(f"train_config={path} cannot be read as a config ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(cfg, DictConfig) or "mcl" not in cfg:
        raise ConfigError(f"train_config={path} is not a train.py config (no mcl group)")
    return cfg


def score_records(records: list[dict], task: Any, spec: Any, K: int, settings: EvalSettings,
                  oracle: Optional[tuple[float, int]], language: Optional[str]) -> tuple[list[dict], dict, list]:
    """Step 4: (records, metrics, notes). The corpus scores of the candidates (none for the
    teacher-forced test loss), the oracle NLL and the cost; each candidate's sentence scores kept
    beside it. With `language`, only the references in that language count."""
    for record in records:
        record.pop("_batch")
    if language:
        records = only_language(records, str(language))
    decodes = spec.method != "teacher_forced"
    candidates = [[c["text"] for c in r["candidates"]] for r in records]
    doing(f"scoring the candidates ({spec.name})")
    metrics, sentence, notes = score(task, candidates, [r["references"] for r in records], settings.metrics) \
        if decodes else ({}, {}, [])
    if oracle is not None:
        metrics["oracle_nll"] = oracle[0] / max(oracle[1], 1)
    if decodes:
        metrics["forward_passes"] = float(spec.forward_passes(K))
    for i, record in enumerate(records):
        for j, cand in enumerate(record["candidates"]):
            cand["metrics"] = {k: float(v[i][j]) for k, v in sentence.items()}
    return records, metrics, notes


def run_decoding_eval(settings: EvalSettings) -> dict[str, float]:
    """Steps 1-5 of the module docstring, from eval.py's validated settings."""
    top = settings.top
    doing(f"checking the run and its data ({top.decoding.name})")
    p = plan(settings)
    if p is None:
        return {}
    spec, checkpoint, train_cfg, scheme, K, datamodule, task = (p.spec, p.checkpoint, p.train_cfg, p.scheme, p.K,
                                                                 p.datamodule, p.task)
    fabric = launch_processes(top.devices, top.accelerator)  # devices > 1: each process decodes a share of the batches
    rank, world = (fabric.global_rank, fabric.world_size) if fabric else (0, 1)
    datamodule.setup("test")
    language = top.references_language
    if language:
        check_reference_language(datamodule, str(language))

    torch.manual_seed(top.seed)
    doing(f"loading the model ({spec.name})")
    device = fabric.device if fabric else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(checkpoint, train_cfg).to(device).eval()
    tokenizer = getattr(datamodule.processor, "tokenizer", datamodule.processor)
    gen = top.generation
    decoder = Decoder(model, tokenizer, spec, K, max_new_tokens=gen.max_new_tokens,
                      repetition_penalty=gen.repetition_penalty, length_penalty=gen.length_penalty)
    batch_size = int(top.batch_size or train_cfg.data.get("val_batch_size") or 8)
    limit = top.max_items
    method_label = spec.describe(K)
    name = checkpoint.path.parent.name
    if rank == 0:
        log.info(f"evaluating {scheme.label} ({name}: {checkpoint.path}) with {method_label}: K={K} candidates per item"
                 + (f", {world} processes" if world > 1 else ""))

    # opened before decoding: an interrupted or failed evaluation is closed as KILLED / FAILED
    with evaluation_run(top.mlflow, train_cfg, scheme.label, spec.name, enabled=rank == 0, values=settings.raw) as run:
        start = time.perf_counter()
        decodes = spec.method != "teacher_forced"  # test_loss: the references' NLL only, nothing decoded
        records = decode_split(decoder, datamodule, spec, K, batch_size, limit, device, top.seed, rank, world) \
            if decodes else []
        oracle = None
        if top.metrics.oracle_nll:
            doing(f"computing the oracle NLL ({spec.name})")
            oracle = oracle_nll_sums(model, datamodule, batch_size, limit, device, rank, world)
        if fabric is not None:  # rank 0 gathers the candidates and scores them once
            records = gather_records(fabric, records)
            if oracle is not None:
                sums = fabric.all_reduce(torch.tensor(oracle, dtype=torch.float64, device=device), reduce_op="sum")
                oracle = (float(sums[0]), int(sums[1]))
            if rank > 0:
                return {}
        decode_seconds = time.perf_counter() - start
        records, metrics, notes = score_records(records, task, spec, K, settings, oracle, language)
        metrics["decode_seconds"] = decode_seconds

        info = {"scheme": scheme.label, "scheme_kind": scheme.kind, "decoding": spec.name, "method": method_label,
                "num_hypotheses": K, "task_type": task.name, "train_run": str(checkpoint.path), "model_name": name,
                "items": len(records), "notes": notes}
        if language:
            info["references_language"] = str(language)
        out = settings.output_dir
        doing(f"writing and logging the results ({spec.name})")
        files = write_outputs(out, records, metrics, info) if out is not None else []
        if out is not None and records:  # the candidates browser (evaluation.browser)
            from loramcl.evaluation.browser import item_inputs, write_page

            inputs = item_inputs(datamodule.sets["test"], [str(r["id"]) for r in records])
            files.append(write_page(out, records, info, metrics, inputs, task.primary))
        log_to_mlflow(run, settings.raw, train_cfg, metrics, info, files, out)
        log.info(f"{scheme.label} / {method_label}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return metrics
