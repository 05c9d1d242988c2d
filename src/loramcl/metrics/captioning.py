"""Captioning metrics of K candidates per item: per-candidate scores, then the oracle over the K (SPEC 7).

Semantics are aac-metrics 0.5.4's `evaluate` (PTB-tokenise everything, then score) combined with its
`mult_cands_metric(..., selection="max")` (score hypothesis position k's N candidates against the N
reference sets, K times; keep per item the best candidate; average over items). The Java tools start
once per call, not once per hypothesis:

    1 JVM   PTB tokenizer (CoreNLP 3.4.1) on all N*K candidates and all references together; the
            candidates' tokens go back in `MetricResult.tokens` for the diversity metrics
    python  BLEU-1..4, ROUGE-L, CIDEr-D per hypothesis position k: CIDEr-D's document frequencies come
            from the N reference sets, the same for every k (never from a flattened N*K set, whose
            repeated references would change the IDF)
    1 JVM   METEOR 1.5 on the N*K (candidate, references) pairs (a pair's score depends on that pair only)
    1 JVM   SPICE 1.0 on the N*K pairs, when Stanford CoreNLP 3.6.0 is in the cache; SPIDEr = (CIDEr-D + SPICE) / 2
    torch   FENSE on the N*K pairs, when its model weights are available

The paper's audio-captioning evaluation (LoRA-MCL, `Qwen2-Audio/compute_metrics.py`) first sends candidates
and references through conette's `AACTokenizer` (PTB backend, punctuation removed, case kept) and back to
text before these metrics; that extra normalisation pass is not reproduced here.

SPICE and FENSE are optional ("auto": computed when present, otherwise skipped with one note line
that says what is missing and how to get it). Corpus values are x100 for BLEU..SPIDEr (registry
convention); FENSE stays in [0, 1]; `sentence` keeps every metric's native scale.

    from loramcl.metrics import caption_metrics
    result = caption_metrics([["a dog barks", "a cat"]], [["a dog is barking", "dogs bark"]])
    result.corpus["oracle_meteor"], result.sentence["cider_d"].shape, result.notes
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np

from loramcl.metrics.jars import PathLike, accept_java, missing_spice_jars, stage_jars
from loramcl.metrics.result import MetricResult, check_inputs, oracle_mean

log = logging.getLogger(__name__)

Switch = Union[bool, Literal["auto"]]  # True: required, False: off, "auto": when available
METRIC_NAMES = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d", "spice", "spider", "fense")
PERCENT = frozenset(METRIC_NAMES) - {"fense"}  # registry: captioning corpus values x100 for BLEU..SPIDEr
FENSE_ECHECKER = "echecker_clotho_audiocaps_base"  # aac-metrics' default fluency-error detector
FENSE_SBERT = "sentence-transformers/paraphrase-TinyBERT-L6-v2"  # aac-metrics' default sentence encoder


def caption_metrics(
    candidates: list[list[str]],
    references: list[list[str]],
    *,
    cache_dir: Optional[PathLike] = None,
    java: str = "java",
    spice: Switch = "auto",
    fense: Switch = "auto",
) -> MetricResult:
    """Oracle captioning metrics of `candidates[i]` (K strings) against `references[i]` (any number >= 1).

    corpus: `oracle_<m>` (per item best over the K, mean over items) and `<m>_hyp<k>` (mean over items
    of hypothesis k) for m in bleu_1..4, meteor, rouge_l, cider_d, spice, spider, fense. sentence: (N, K)
    scores per metric. tokens: the PTB tokens of every candidate. `cache_dir` holds the staged jars
    (default: aac-metrics' cache, `~/.cache`).
    Raises `JavaError` (one line) when `java` does not run.
    """
    n, k = check_inputs(candidates, references)
    cands = [[_one_line(c) for c in item] for item in candidates]
    refs = [[_one_line(r) for r in item] for item in references]
    cache = stage_jars(cache_dir)
    notes: list[str] = []
    with accept_java(java) as java_major:
        tok_cands, tok_refs = _ptb_tokenize(cands, refs, cache, java)  # JVM 1
        sentence = _python_metrics(tok_cands, tok_refs, notes)
        flat_cands = [c for item in tok_cands for c in item]  # item-major: row i*K + k
        flat_refs = [item_refs for item_refs in tok_refs for _ in range(k)]
        sentence["meteor"] = _meteor(flat_cands, flat_refs, cache, java).reshape(n, k)  # JVM 2
        spice_scores = _spice(flat_cands, flat_refs, cache, java, java_major, spice, notes)  # JVM 3
    if spice_scores is not None:
        sentence["spice"] = spice_scores.reshape(n, k)
        if "cider_d" in sentence:
            sentence["spider"] = (sentence["cider_d"] + sentence["spice"]) / 2.0
    fense_scores = _fense(flat_cands, flat_refs, fense, notes)
    if fense_scores is not None:
        sentence["fense"] = fense_scores.reshape(n, k)
    sentence = {name: sentence[name] for name in METRIC_NAMES if name in sentence}
    tokens = [[c.split() for c in item] for item in tok_cands]  # the PTB tokens, reused by the diversity metrics
    return MetricResult(_corpus(sentence), sentence, notes, tokens)


def _corpus(sentence: dict[str, np.ndarray]) -> dict[str, float]:
    corpus: dict[str, float] = {}
    for name, scores in sentence.items():
        scale = 100.0 if name in PERCENT else 1.0
        corpus[f"oracle_{name}"] = scale * oracle_mean(scores, f"oracle_{name}")
    for name, scores in sentence.items():
        scale = 100.0 if name in PERCENT else 1.0
        corpus.update({f"{name}_hyp{j}": scale * float(scores[:, j].mean()) for j in range(scores.shape[1])})
    return corpus


def _one_line(text: str) -> str:
    # The PTB tokenizer and METEOR read one sentence per line.
    return " ".join(text.splitlines())


def _ptb_tokenize(
    cands: list[list[str]], refs: list[list[str]], cache: Path, java: str
) -> tuple[list[list[str]], list[list[str]]]:
    """PTB-tokenise (lower-case, punctuation removed) candidates and references in one Java call."""
    from aac_metrics.utils.tokenization import preprocess_mono_sents

    flat = [c for item in cands for c in item] + [r for item in refs for r in item]
    tokens = preprocess_mono_sents(flat, cache_path=str(cache), java_path=java)
    out_cands, pos = [], 0
    for item in cands:
        out_cands.append(tokens[pos : pos + len(item)])
        pos += len(item)
    out_refs = []
    for item in refs:
        out_refs.append(tokens[pos : pos + len(item)])
        pos += len(item)
    return out_cands, out_refs


def _python_metrics(tok_cands: list[list[str]], tok_refs: list[list[str]], notes: list[str]) -> dict[str, np.ndarray]:
    """BLEU-1..4, ROUGE-L and CIDEr-D per hypothesis position (aac-metrics' implementations), (N, K) each."""
    from aac_metrics.functional.bleu import bleu
    from aac_metrics.functional.cider_d import cider_d
    from aac_metrics.functional.rouge_l import rouge_l

    n, k = len(tok_cands), len(tok_cands[0])
    columns: dict[str, list[np.ndarray]] = {}
    for j in range(k):
        cands_j = [item[j] for item in tok_cands]
        _, bleu_sents = bleu(cands_j, tok_refs, n=4, return_1_to_n=True)
        for order in range(4):
            columns.setdefault(f"bleu_{order + 1}", []).append(bleu_sents["bleu_1_to_4"][order].numpy())
        columns.setdefault("rouge_l", []).append(rouge_l(cands_j, tok_refs)[1]["rouge_l"].numpy())
        if n >= 2:  # CIDEr-D's IDF needs at least 2 reference sets
            columns.setdefault("cider_d", []).append(cider_d(cands_j, tok_refs)[1]["cider_d"].numpy())
    if n < 2:
        _note(notes, "CIDEr-D and SPIDEr skipped: CIDEr-D needs at least 2 items (its IDF comes from the references)")
    return {name: np.stack(cols, axis=1).astype(np.float64) for name, cols in columns.items()}  # (N, K)


def _meteor(flat_cands: list[str], flat_refs: list[list[str]], cache: Path, java: str) -> np.ndarray:
    from aac_metrics.functional.meteor import meteor

    _, sents = meteor(flat_cands, flat_refs, cache_path=str(cache), java_path=java)
    return sents["meteor"].numpy().astype(np.float64)


def _spice(
    flat_cands: list[str],
    flat_refs: list[list[str]],
    cache: Path,
    java: str,
    java_major: int,
    mode: Switch,
    notes: list[str],
) -> Optional[np.ndarray]:
    """SPICE of every pair in one Java call, or None (with one note line) when it cannot run.

    SPICE 1.0's cache serialiser (FST) is reported to stop with InaccessibleObjectException on Java >= 16
    (strong encapsulation); aac-metrics builds the command line, so no JVM flag can be added here, and
    `JDK_JAVA_OPTIONS` would break its `java -version` parsing. The failure note then names the fix.
    """
    if mode is False:
        return None
    missing = missing_spice_jars(cache)
    if missing:
        line = (
            f"SPICE and SPIDEr skipped: Stanford CoreNLP 3.6.0 is missing ({', '.join(missing)} not in "
            f"{cache / 'aac-metrics' / 'spice' / 'lib'}); get it (needs internet) with `python -c \"from "
            f"aac_metrics.download import download_metrics as d; d(cache_path='{cache}', ptb_tokenizer=False, "
            "meteor=False, fense=False, bert_score=False)\"`"
        )
        if mode is True:
            raise FileNotFoundError(line)
        _note(notes, line)
        return None
    from aac_metrics.functional.spice import spice

    try:
        _, sents = spice(flat_cands, flat_refs, cache_path=str(cache), java_path=java)
    except Exception as err:
        if mode is True:
            raise
        log.debug("SPICE failed", exc_info=True)
        hint = ""
        if java_major >= 16:
            hint = f"; SPICE 1.0 needs Java <= 15 (found {java_major}): pass java=<path to a Java 8-13 runtime>"
        _note(notes, f"SPICE and SPIDEr skipped: the SPICE jar failed ({type(err).__name__}: {_first_line(err)}){hint}")
        return None
    return sents["spice"].numpy().astype(np.float64)


def _fense(flat_cands: list[str], flat_refs: list[list[str]], mode: Switch, notes: list[str]) -> Optional[np.ndarray]:
    """FENSE of every pair (one model load), or None (with one note line) when its weights are missing."""
    if mode is False:
        return None
    missing = missing_fense_weights()
    if missing:
        line = (
            f"FENSE skipped: model weights missing ({'; '.join(missing)}); get them (needs internet; FENSE_DATA and "
            "HF_HOME say where they go) with `python -c \"from aac_metrics.download import download_metrics as d; "
            "d(ptb_tokenizer=False, meteor=False, spice=False, bert_score=False)\"`"
        )
        if mode is True:
            raise FileNotFoundError(line)
        _note(notes, line)
        return None
    from aac_metrics.functional.fense import fense as aac_fense

    try:
        _, sents = aac_fense(flat_cands, flat_refs, echecker=FENSE_ECHECKER)
    except Exception as err:
        if mode is True:
            raise
        log.debug("FENSE failed", exc_info=True)
        _note(notes, f"FENSE skipped: it failed to run ({type(err).__name__}: {_first_line(err)})")
        return None
    return sents["fense"].cpu().numpy().astype(np.float64)


def missing_fense_weights() -> list[str]:
    """What FENSE would have to download: its error-detector checkpoint and its SBERT model."""
    import torch
    from huggingface_hub import try_to_load_from_cache

    missing = []
    data_home = Path(os.path.expanduser(os.environ.get("FENSE_DATA", os.path.join(torch.hub.get_dir(), "fense_data"))))
    if not (data_home / f"{FENSE_ECHECKER}.ckpt").is_file():
        missing.append(str(data_home / f"{FENSE_ECHECKER}.ckpt"))
    if not isinstance(try_to_load_from_cache(FENSE_SBERT, "config.json"), str):
        missing.append(f"{FENSE_SBERT} in the Hugging Face cache")
    return missing


def _note(notes: list[str], line: str) -> None:
    log.warning(line)
    notes.append(line)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""
