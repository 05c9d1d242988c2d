"""A small word-list language identifier for the bilingual (English / French) captions.

No language-identification model can be downloaded here; the synthetic bilingual captions use a
closed vocabulary, so counting words that belong to only one of the two languages decides reliably.
For real TextCaps captions a proper identifier (e.g. fastText lid.176) is the better choice.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

EN_WORDS = {"a", "the", "next", "to", "of", "and", "on", "at", "in", "there", "is", "with", "picture", "white",
            "background", "two", "shapes", "left", "right", "top", "bottom", "middle", "above", "below", "under",
            "over", "beside", "side", "by", "it", "red", "green", "blue", "yellow", "circle", "square", "small",
            "large", "an", "this", "photo", "sign", "text"}
FR_WORDS = {"un", "une", "il", "y", "sur", "fond", "blanc", "blanche", "d", "avec", "à", "gauche", "droite", "en",
            "haut", "bas", "au", "milieu", "côté", "et", "deux", "formes", "au-dessus", "dessous", "sous", "rouge",
            "vert", "bleu", "jaune", "cercle", "carré", "petit", "grand", "le", "la", "les", "des", "du", "de",
            "est", "photo", "panneau", "texte"}
ONLY_EN, ONLY_FR = EN_WORDS - FR_WORDS, FR_WORDS - EN_WORDS


def detect_language(text: str) -> str:
    """"en", "fr", or "unknown" when neither language's own words dominate (empty or looping output)."""
    words = re.findall(r"[\w\-]+", text.lower().replace("'", " "))
    en = sum(w in ONLY_EN for w in words)
    fr = sum(w in ONLY_FR for w in words)
    if en == fr:
        return "unknown"
    return "en" if en > fr else "fr"


def language_shares(texts: Iterable[str]) -> dict[str, float]:
    """Fraction of texts per detected language ("en", "fr", "unknown")."""
    counts = Counter(detect_language(t) for t in texts)
    total = sum(counts.values()) or 1
    return {lang: counts.get(lang, 0) / total for lang in ("en", "fr", "unknown")}
