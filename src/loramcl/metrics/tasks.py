"""Tasks as data: which metric function scores a task's candidates and which sentence score is primary.

`TASKS[name]` says, for "translation" (sacrebleu), "captioning" (the COCO-caption metrics) and "text"
(a task of one's own, `data=text`: sacrebleu and ROUGE-L, `metrics.text`), how to
score K candidates per item and which sentence-level score decides an item's winning hypothesis
(`win_rate_hyp<k>`). `task_for(data_kind)` maps a DataModule's kind onto its task. `score` is what an
evaluation calls: quality, diversity, the semantic metrics (`semantic`) and win rates in one dict, plus
the sentence scores and notes. The
diversity metrics reuse the tokens of the task's metric when it returns them (captioning: its PTB tokens,
as the paper's diversity code uses), else they tokenise in plain Python (translation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from loramcl.errors import ConfigError
from loramcl.metrics.captioning import caption_metrics
from loramcl.metrics.diversity import diversity_metrics
from loramcl.metrics.result import MetricResult
from loramcl.metrics.semantic import semantic_from_options
from loramcl.metrics.text import text_metrics
from loramcl.metrics.translation import translation_metrics
from loramcl.metrics.wins import win_rates


def _translation(candidates: list, references: list, options: Mapping[str, Any]) -> MetricResult:
    return translation_metrics(candidates, references)


def _text(candidates: list, references: list, options: Mapping[str, Any]) -> MetricResult:
    return text_metrics(candidates, references)


def _captioning(candidates: list, references: list, options: Mapping[str, Any]) -> MetricResult:
    return caption_metrics(candidates, references, cache_dir=options.get("cache_dir"),
                           java=options.get("java", "java"), spice=options.get("spice", "auto"),
                           fense=options.get("fense", "auto"))


@dataclass(frozen=True)
class Task:
    name: str  # "translation" | "captioning" | "text"
    metric: Callable[[list, list, Mapping[str, Any]], MetricResult]  # (candidates, references, options)
    primary: str  # the sentence-level score that picks an item's best candidate (win rates)
    higher: bool = True  # direction of `primary`


TASKS = {
    "translation": Task("translation", _translation, primary="bleu"),
    "captioning": Task("captioning", _captioning, primary="cider_d"),
    # chrF, not BLEU: a short answer often shares no 4-gram with any reference, and its sentence BLEU
    # then says nothing about which candidate is closest
    "text": Task("text", _text, primary="chrf"),
}
DATA_KIND_TASKS = {"translation": "translation", "audio_caption": "captioning", "image_caption": "captioning",
                   "text": "text"}


def task_for(data_kind: str) -> Task:
    if data_kind not in DATA_KIND_TASKS:
        raise ConfigError(f"no evaluation task for data of kind {data_kind!r} (known: {', '.join(DATA_KIND_TASKS)})")
    return TASKS[DATA_KIND_TASKS[data_kind]]


def score(task: Task, candidates: list[list[str]], references: list[list[str]],
          options: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, np.ndarray], list[str]]:
    """(corpus metrics incl. diversity, semantic metrics and win rates, sentence scores (N, K) by name, notes)."""
    result = task.metric(candidates, references, options)
    corpus = dict(result.corpus)
    corpus.update(diversity_metrics(candidates, result.tokens))  # the task's own tokens when it has them
    sentence = dict(result.sentence)
    notes = list(result.notes)
    semantic = semantic_from_options(candidates, references, options)  # metrics.semantic: auto | true | false
    if semantic is not None:
        corpus.update(semantic.corpus)
        sentence.update(semantic.sentence)
        notes += semantic.notes
    key = next((k for k in (task.primary, f"oracle_{task.primary}") if k in sentence), None)
    if key is not None:
        corpus.update(win_rates(np.asarray(sentence[key]), higher_is_better=task.higher))
    return corpus, sentence, notes
