"""The bilingual captioning experiment (paper: half of the captions in French).

`task=bilingual` trains an MLE model (K = 1) and an MCL model (K = mcl.num_hypotheses) like the
toy runner, then decodes the test images greedily with every hypothesis and measures the language
of each caption. With LoRA-MCL each hypothesis should specialise in one language, while the MLE
model writes a mix (or mostly the majority language). `summary.json` in the run folder holds, per
model and hypothesis, the language shares and a few example captions; the same go to MLflow.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from loramcl.data.collate import model_inputs
from loramcl.language_id import language_shares
from loramcl.preflight import preflight
from loramcl.schema import train_settings
from loramcl.training import FitResult, apply_extras, train_mle_and_mcl

log = logging.getLogger(__name__)


@torch.no_grad()
def decode_hypotheses(model: Any, loader: Any, tokenizer: Any, generation: dict) -> list[list[str]]:
    """Greedy captions of every test item under every hypothesis: [K][N] strings."""
    model.eval()
    K = model.num_hypotheses
    captions: list[list[str]] = [[] for _ in range(K)]
    for batch in loader:
        inputs = model_inputs(batch)
        width = inputs["input_ids"].shape[1]
        for k in range(K):
            out = model.generate(**inputs, hypothesis_idx=k, **generation)
            captions[k].extend(t.strip() for t in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True))
    return captions


@torch.no_grad()
def wins_by_language(model: Any, loader: Any) -> dict[str, list[float]]:
    """For the validation references of each language: the fraction each hypothesis wins (lowest NLL).

    A language split shows as e.g. {"en": [0.97, 0.03], "fr": [0.02, 0.98]}.
    """
    model.eval()
    K = model.num_hypotheses
    counts: dict[str, torch.Tensor] = {}
    for batch in loader:
        winners = model(**model_inputs(batch)).winners.cpu()  # one row per reference (references="all")
        languages = [lang for item_langs in batch["languages"] for lang in item_langs]
        if len(languages) != len(winners):
            raise ValueError("wins_by_language needs one row per reference (val_references=all)")
        for lang, k in zip(languages, winners.tolist()):
            counts.setdefault(lang, torch.zeros(K))[k] += 1
    return {lang: (c / c.sum()).tolist() for lang, c in sorted(counts.items())}


def evaluate_model(name: str, fit: FitResult, generation: dict, out: Path) -> tuple[dict, list[dict]]:
    """Greedy test captions of every hypothesis (predictions_<name>.jsonl), their language shares and
    the validation wins by reference language; (summary entry, shares per hypothesis)."""
    k = fit.module.num_hypotheses
    dm = fit.datamodule
    captions = decode_hypotheses(fit.module.model, dm.test_dataloader(), dm.processor.tokenizer, generation)
    shares = [language_shares(c) for c in captions]
    result = {
        "num_hypotheses": k,
        "language_shares": shares,
        "dominant_language": [max(("en", "fr"), key=s.get) for s in shares],
        "val_wta_loss": fit.metrics.get("val/wta_loss"),
        "val_win_rates_by_reference_language": wins_by_language(fit.module.model, dm.val_dataloader()) if k > 1 else None,
        "examples": [c[:5] for c in captions],
    }
    with open(out / f"predictions_{name}.jsonl", "w") as f:
        for i, item_id in enumerate(dm.sets["test"].ids):
            f.write(json.dumps({"id": item_id, "references": dm.sets["test"].texts[i],
                                "candidates": [{"hypothesis": h, "text": captions[h][i]} for h in range(k)]}) + "\n")
    if fit.mlflow_run is not None:
        fit.mlflow_run.log_metrics({f"hyp{h}_share_{lang}": v for h, s in enumerate(shares) for lang, v in s.items()})
        fit.mlflow_run.log_artifact(out / f"predictions_{name}.jsonl")
    return result, shares


def run_bilingual(cfg: Any) -> dict[str, float]:
    """Train MLE and MCL on the bilingual captions, decode the test images with every hypothesis and
    write summary.json. `cfg`: the validated settings (train.py gives them) or a composed config."""
    s = train_settings(cfg)
    datamodule = preflight(s)  # every check, once for both models
    apply_extras(s)
    out = s.output_dir or Path.cwd()
    generation = dict(s.node("task").get("generation") or {})
    results, metrics = {}, {}
    test_set: dict[str, Any] = {}

    def after_fit(name: str, fit: FitResult) -> None:
        test_set["texts"] = fit.datamodule.sets["test"].texts
        results[name], shares = evaluate_model(name, fit, generation, out)
        for h, s in enumerate(shares):
            metrics.update({f"{name}/hyp{h}_share_{lang}": v for lang, v in s.items()})

    parent = train_mle_and_mcl(s, after_fit, datamodule)
    mcl = results["mcl"]
    specialised = (all(max(s["en"], s["fr"]) >= 0.9 for s in mcl["language_shares"])
                   and len(set(mcl["dominant_language"])) == len(mcl["dominant_language"]) == 2)
    refs = [c for caps in test_set["texts"] for c in caps]
    summary = {"experiment": s.top.task_name, "seed": s.top.seed, "models": results,
               "reference_language_shares": language_shares(refs), "mcl_specialised": specialised,
               "criterion": "each MCL hypothesis writes >= 90 % of its greedy captions in one language, "
                            "and the two hypotheses use different languages"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    metrics["mcl/specialised"] = float(specialised)
    if parent is not None:
        parent.log_metrics(metrics)
        parent.log_artifact(out / "summary.json")
        parent.finish()
    log.info(f"MCL validation wins by reference language: {mcl['val_win_rates_by_reference_language']}")
    log.info("language shares per hypothesis: " + "; ".join(
        f"{n}: " + ", ".join(f"hyp{h} en {s['en']:.2f} fr {s['fr']:.2f}" for h, s in enumerate(r["language_shares"]))
        for n, r in results.items()) + f"; MCL specialised: {specialised}")
    return metrics
