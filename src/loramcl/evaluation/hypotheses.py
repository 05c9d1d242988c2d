"""What each of the K outputs learned: identifiability, a 2-D map and word statistics per output index.

Input: the candidates of one evaluation (`predictions.jsonl` of an eval.py run folder, or the
`predictions_<model>.jsonl` a bilingual training run writes), each labelled by the index that
produced it (`candidate.hypothesis`): the MCL hypothesis, the DBS group, the beam rank, the sample
index, the TTA copy or the MoE expert. The same analysis of an MCL run and of a baseline makes the
numbers comparable.

    identifiability   every candidate is embedded (the sentence-embedding model of the semantic
                      metrics) and a linear classifier (scikit-learn: standardised features, multinomial
                      logistic regression) predicts its index. Cross-validated by ITEM (GroupKFold, up to 5
                      folds): the K candidates of an item are always in the same fold, so the classifier
                      has to recognise an index by how its outputs differ, not by remembering items.
                      Accuracy of the out-of-fold predictions, against chance = 1 / K (the K classes are
                      balanced: one candidate per index per item), with a 95 % interval from 2000
                      bootstrap resamples of the items (the candidates of one item are not independent).
    confusion         K x K, row = true index, column = predicted index, each row normalised to 1
    projection        the first two principal components of the embeddings, coloured by index
    per index         mean length (words), vocabulary (distinct words), the most distinctive words:
                      log-odds ratio with an informative Dirichlet prior (Monroe et al. 2008, "Fightin'
                      Words"), index k's counts against all other indices', as a z-score (> 1.96: more
                      frequent in k's outputs beyond what chance explains); and, for bilingual data, the
                      share of outputs per language (`loramcl.language_id`)

Words are `metrics.diversity.tokenize` tokens (lower case, punctuation removed).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from loramcl.metrics.diversity import tokenize

log = logging.getLogger(__name__)

MAX_FOLDS = 5  # GroupKFold folds (fewer when there are fewer items)
BOOTSTRAP = 2000  # item resamples of the accuracy interval
TOP_WORDS = 8  # distinctive words listed per index


@dataclass
class EvaluatedCandidates:
    """The candidates of one evaluation: texts[i][k] is candidate k of item i, labels[i][k] its index."""

    name: str  # e.g. "LoRA-MCL / mcl_beam1"
    folder: Path  # where the report goes
    source: Path  # the predictions file
    texts: list[list[str]]
    labels: list[list[int]]
    info: dict = field(default_factory=dict)  # metrics.json's info (scheme, decoding, method, ...) when present
    reference_languages: bool = False  # the data are bilingual (references carry a language)


def load_candidates(path: Path) -> EvaluatedCandidates:
    """A predictions file, or an eval run folder holding predictions.jsonl (and metrics.json)."""
    path = Path(path)
    source = path / "predictions.jsonl" if path.is_dir() else path
    if not source.is_file():
        raise FileNotFoundError(f"{path}: no predictions.jsonl (give an eval.py run folder or a predictions file)")
    rows = []
    for number, line in enumerate(source.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: line {number} is not JSON ({err.msg})") from None
    if not rows:
        raise ValueError(f"{source}: no predictions")
    try:
        texts = [[c["text"] for c in r["candidates"]] for r in rows]
        labels = [[int(c.get("hypothesis", k)) for k, c in enumerate(r["candidates"])] for r in rows]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{source}: every line needs candidates with a text ({err})") from None
    if len({len(t) for t in texts}) != 1:
        raise ValueError(f"{source}: items have different numbers of candidates")
    info: dict[str, Any] = {}
    metrics_file = source.parent / "metrics.json"
    if source.name == "predictions.jsonl" and metrics_file.is_file():
        info = {k: v for k, v in json.loads(metrics_file.read_text()).items() if k != "metrics"}
    model = source.stem.removeprefix("predictions").lstrip("_")  # predictions_mcl.jsonl -> mcl
    name = " / ".join(str(info[k]) for k in ("scheme", "decoding") if info.get(k)) or \
        f"{source.parent.name}{' / ' + model if model else ''}"
    summary = source.parent / "summary.json"
    bilingual = any(r.get("reference_languages") for r in rows) or (
        summary.is_file() and "reference_language_shares" in json.loads(summary.read_text()))
    folder = source.parent / ("hypothesis_analysis" + (f"_{model}" if model else ""))
    return EvaluatedCandidates(name, folder, source, texts, labels, info, bilingual)


def find_evaluations(paths: Sequence[Path]) -> list[Path]:
    """Predictions files named by `paths`: files, eval run folders, or folders searched recursively."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif (path / "predictions.jsonl").is_file():
            found.append(path / "predictions.jsonl")
        elif path.is_dir():
            hits = sorted(p for p in path.rglob("predictions*.jsonl")
                          if not any(part.startswith("hypothesis_analysis") for part in p.parts))
            if not hits:
                raise FileNotFoundError(f"{path}: no predictions*.jsonl below it (an eval.py run folder, a "
                                        f"multirun folder or a bilingual training run folder)")
            found += hits
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return list(dict.fromkeys(found))


# ----------------------------------------------------------------------------------------------------
# the numbers


def identifiability(embeddings: np.ndarray, labels: np.ndarray, items: np.ndarray, seed: int = 0) -> dict:
    """Cross-validated (by item) accuracy of a linear probe predicting the index, its bootstrap interval,
    the row-normalised confusion matrix and the out-of-fold predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(labels)
    K, n_items = len(classes), len(np.unique(items))
    if K < 2:
        raise ValueError("identifiability needs at least 2 distinct indices (a K = 1 model has nothing to tell apart)")
    if n_items < 2:
        raise ValueError("identifiability needs at least 2 items (cross-validation holds items out)")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = GroupKFold(n_splits=min(MAX_FOLDS, n_items))
    predicted = cross_val_predict(probe, embeddings, labels, groups=items, cv=folds)
    correct = (predicted == labels).astype(float)
    # bootstrap over items: per item the number of correct predictions and of candidates
    item_ids, position = np.unique(items, return_inverse=True)
    hits = np.bincount(position, weights=correct)
    sizes = np.bincount(position).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(item_ids), size=(BOOTSTRAP, len(item_ids)))
    resampled = hits[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    confusion = np.zeros((K, K))
    index = {c: i for i, c in enumerate(classes)}
    for true, pred in zip(labels, predicted):
        confusion[index[true], index[pred]] += 1
    confusion /= np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    return {"accuracy": float(correct.mean()), "ci": [float(np.percentile(resampled, 2.5)),
                                                     float(np.percentile(resampled, 97.5))],
            "chance": 1.0 / K, "classes": [int(c) for c in classes], "confusion": confusion.tolist(),
            "folds": folds.get_n_splits(), "candidates": int(len(labels)), "items": int(n_items),
            "predicted": predicted}


def distinctive_words(counts: Sequence[Counter], top: int = TOP_WORDS) -> list[list[tuple[str, float]]]:
    """Per index, the `top` words with the largest log-odds z-score against all other indices
    (informative Dirichlet prior = the pooled counts; Monroe, Colaresi and Quinn 2008)."""
    pooled = Counter()
    for c in counts:
        pooled.update(c)
    prior_total = float(sum(pooled.values()))
    out = []
    for k, mine in enumerate(counts):
        rest = Counter()
        for j, other in enumerate(counts):
            if j != k:
                rest.update(other)
        n_k, n_r = float(sum(mine.values())), float(sum(rest.values()))
        scores = []
        for word, a in pooled.items():
            y_k, y_r = mine.get(word, 0), rest.get(word, 0)
            delta = (math.log((y_k + a) / (n_k + prior_total - y_k - a))
                     - math.log((y_r + a) / (n_r + prior_total - y_r - a)))
            variance = 1.0 / (y_k + a) + 1.0 / (y_r + a)
            scores.append((word, delta / math.sqrt(variance)))
        scores.sort(key=lambda item: (-item[1], item[0]))
        out.append([(w, round(z, 2)) for w, z in scores[:top]])
    return out


def per_index_stats(texts: list[list[str]], labels: list[list[int]], languages: bool) -> list[dict]:
    """Mean length, vocabulary, distinctive words and (bilingual data) language shares per index."""
    classes = sorted({l for row in labels for l in row})
    tokens = {c: [] for c in classes}
    outputs = {c: [] for c in classes}
    for row_texts, row_labels in zip(texts, labels):
        for text, label in zip(row_texts, row_labels):
            tokens[label].append(tokenize(text))
            outputs[label].append(text)
    counts = [Counter(w for toks in tokens[c] for w in toks) for c in classes]
    words = distinctive_words(counts)
    stats = []
    for i, c in enumerate(classes):
        entry = {"index": c, "outputs": len(tokens[c]),
                 "mean_length": float(np.mean([len(t) for t in tokens[c]])) if tokens[c] else 0.0,
                 "vocabulary": len(counts[i]), "distinctive_words": words[i]}
        if languages:
            from loramcl.language_id import language_shares

            entry["language_shares"] = language_shares(outputs[c])
        stats.append(entry)
    return stats


def analyse(evaluation: EvaluatedCandidates, embedder: Any, batch_size: int = 64, seed: int = 0) -> dict:
    """Every number of the report of `evaluation` (module docstring); `embeddings_2d` for the plot."""
    from sklearn.decomposition import PCA

    from loramcl.metrics.semantic import embed

    flat = [t for row in evaluation.texts for t in row]
    labels = np.array([l for row in evaluation.labels for l in row])
    items = np.repeat(np.arange(len(evaluation.texts)), len(evaluation.texts[0]))
    vectors = embed(flat, embedder, batch_size)
    result: dict[str, Any] = {"name": evaluation.name, "source": str(evaluation.source), "K": len(evaluation.texts[0]),
                              "items": len(evaluation.texts), "info": evaluation.info}
    try:
        ident = identifiability(vectors, labels, items, seed)
        result["identifiability"] = {k: v for k, v in ident.items() if k != "predicted"}
    except ValueError as err:
        result["identifiability"] = None
        result["note"] = str(err)
    n_components = min(2, vectors.shape[0], vectors.shape[1])
    result["embeddings_2d"] = PCA(n_components=n_components, random_state=seed).fit_transform(vectors) \
        if n_components == 2 else np.zeros((len(flat), 2))
    result["labels"] = labels
    result["per_index"] = per_index_stats(evaluation.texts, evaluation.labels, evaluation.reference_languages)
    return result


# ----------------------------------------------------------------------------------------------------
# the report


def index_name(info: dict) -> str:
    """What the candidate index means for the method that produced it."""
    method = str(info.get("decoding", ""))
    for prefix, name in (("mcl_", "hypothesis"), ("moe_forced", "expert"), ("moe_", "sample"), ("tta", "TTA copy"),
                         ("mle_dbs", "DBS group"), ("mle_beam", "beam rank"), ("mle_sampling", "sample")):
        if method.startswith(prefix):
            return name
    return "hypothesis" if not method else "index"


def figures(result: dict, folder: Path) -> list[Path]:
    """confusion.png and projection.png into `folder`."""
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    what = index_name(result["info"])
    paths = []
    ident = result["identifiability"]
    if ident is not None:
        fig = Figure(figsize=(1.2 * len(ident["classes"]) + 2.4, 1.1 * len(ident["classes"]) + 1.6))
        ax = fig.add_subplot()
        matrix = np.asarray(ident["confusion"])
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                        color="white" if matrix[i, j] > 0.6 else "black", fontsize=8)
        ax.set_xticks(range(len(ident["classes"])), ident["classes"])
        ax.set_yticks(range(len(ident["classes"])), ident["classes"])
        ax.set_xlabel(f"predicted {what}")
        ax.set_ylabel(f"true {what}")
        ax.set_title(f"{result['name']}\naccuracy {ident['accuracy']:.1%} (chance {ident['chance']:.1%})", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        paths.append(folder / "confusion.png")
        fig.savefig(paths[-1], dpi=150)
    fig = Figure(figsize=(5.6, 4.6))
    ax = fig.add_subplot()
    xy, labels = np.asarray(result["embeddings_2d"]), np.asarray(result["labels"])
    for i, c in enumerate(sorted(set(labels.tolist()))):
        mine = labels == c
        ax.scatter(xy[mine, 0], xy[mine, 1], s=12, alpha=0.7, color=f"C{i % 10}", label=f"{what} {c}")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title(f"{result['name']}: sentence embeddings of the candidates", fontsize=9)
    ax.legend(fontsize=7, markerscale=1.5)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    paths.append(folder / "projection.png")
    fig.savefig(paths[-1], dpi=150)
    return paths


def markdown(result: dict) -> str:
    what = index_name(result["info"])
    lines = [f"# What each {what} produces: {result['name']}", "",
             f"Source: `{result['source']}`; {result['items']} items x K = {result['K']} candidates.", ""]
    ident = result["identifiability"]
    if ident is None:
        lines += [f"Identifiability: not computed ({result.get('note')}).", ""]
    else:
        lines += [f"**Identifiability** (a linear probe on sentence embeddings predicts the {what}; "
                  f"{ident['folds']}-fold cross-validation by item): **{ident['accuracy']:.1%}** "
                  f"(95 % interval {ident['ci'][0]:.1%} to {ident['ci'][1]:.1%}; chance {ident['chance']:.1%}).", "",
                  f"Confusion (rows: true {what}, columns: predicted, each row sums to 1):", "",
                  "| | " + " | ".join(str(c) for c in ident["classes"]) + " |",
                  "|---" * (len(ident["classes"]) + 1) + "|"]
        for c, row in zip(ident["classes"], ident["confusion"]):
            lines.append(f"| **{c}** | " + " | ".join(f"{v:.2f}" for v in row) + " |")
        lines += ["", "![confusion](confusion.png)", ""]
    languages = any("language_shares" in s for s in result["per_index"])
    header = f"| {what} | outputs | mean length | vocabulary |" + (" en / fr / unknown |" if languages else "") + \
        " most distinctive words (log-odds z) |"
    lines += ["## Per index", "", header, "|---" * (header.count("|") - 1) + "|"]
    for s in result["per_index"]:
        words = ", ".join(f"{w} ({z:+.1f})" for w, z in s["distinctive_words"])
        shares = (" {en:.0%} / {fr:.0%} / {unknown:.0%} |".format(**s["language_shares"]) if languages else "")
        lines.append(f"| {s['index']} | {s['outputs']} | {s['mean_length']:.1f} | {s['vocabulary']} |{shares} {words} |")
    lines += ["", "![projection](projection.png)", ""]
    return "\n".join(lines)


def write_report(result: dict, folder: Path) -> list[Path]:
    """report.md, analysis.json and the two figures into `folder` (replaced: derived files)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = figures(result, folder)
    (folder / "report.md").write_text(markdown(result))
    data = {k: v for k, v in result.items() if k not in ("embeddings_2d", "labels")}
    (folder / "analysis.json").write_text(json.dumps(data, indent=2, ensure_ascii=False))
    return [folder / "report.md", folder / "analysis.json", *paths]


def log_to_mlflow(unit_source: Path, result: dict, files: list[Path]) -> Optional[str]:
    """Metrics and report files added to the evaluation's own MLflow run (named by mlflow_run.json
    beside the predictions); the run id, or None when the folder names no run."""
    record = unit_source.parent / "mlflow_run.json"
    if not record.is_file():
        return None
    from mlflow.tracking import MlflowClient

    run = json.loads(record.read_text())
    client = MlflowClient(run["tracking_uri"])
    ident = result["identifiability"]
    if ident is not None:
        for key, value in (("identifiability_accuracy", ident["accuracy"]), ("identifiability_chance", ident["chance"]),
                           ("identifiability_ci_low", ident["ci"][0]), ("identifiability_ci_high", ident["ci"][1])):
            client.log_metric(run["run_id"], key, 100.0 * value)  # percent, like the other table values
    for path in files:
        client.log_artifact(run["run_id"], str(path), "hypothesis_analysis")
    return run["run_id"]


def comparison(results: Sequence[dict]) -> str:
    """One markdown table over every analysed evaluation: identifiability against chance."""
    lines = ["| evaluation | K | index | identifiability | 95 % interval | chance |", "|---|---|---|---|---|---|"]
    for r in results:
        ident = r["identifiability"]
        if ident is None:
            lines.append(f"| {r['name']} | {r['K']} | {index_name(r['info'])} | n/a | | |")
            continue
        lines.append(f"| {r['name']} | {r['K']} | {index_name(r['info'])} | {ident['accuracy']:.1%} | "
                     f"{ident['ci'][0]:.1%} to {ident['ci'][1]:.1%} | {ident['chance']:.1%} |")
    return "\n".join(lines)
