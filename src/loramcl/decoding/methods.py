"""The evaluation sweep's decoding methods: each turns a batch of prompts into exactly K candidates.

One `DecodingSpec` (a file of `configs/decoding/`) names a method:

    hypotheses   every hypothesis (MCL) / forced expert (MoE) decoded with beam B, top-1 kept; all K
                 in ONE batched `generate` call (rows replicated hypothesis-major, one routing id per
                 row, which survives the beam expansion inside `generate`)
    beam         beam search with B beams returning the K best sequences (MLE / MoE)
    dbs          diverse beam search, K groups (the project's `decoding.dbs`)
    sample       K samples: top-k, nucleus, typical or ancestral
    tta          K augmented copies of each input (see `decoding.tta`), each decoded with beam B, top-1
    moe_sample   K decodes where every token of every layer draws its expert from the MoE router

`forward_passes` is the number of sequences decoded in parallel per item (the beams in flight):
K * B for `hypotheses`, `tta` and `moe_sample`, B for `beam` and `dbs`, K for `sample`. It is the cost
axis of the quality-versus-diversity plot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch

from loramcl.config import ConfigError
from loramcl.model import replicate

METHODS = ("hypotheses", "beam", "dbs", "sample", "tta", "moe_sample")
SAMPLERS = {
    "top_k": {"top_k": 50, "top_p": 1.0, "typical_p": 1.0},  # paper: k = 50
    "nucleus": {"top_k": 0, "top_p": 0.95, "typical_p": 1.0},  # paper: p = 0.95
    "typical": {"top_k": 0, "top_p": 1.0, "typical_p": 0.95},  # paper: 0.95
    "ancestral": {"top_k": 0, "top_p": 1.0, "typical_p": 1.0},  # the model's full distribution
}


@dataclass
class Candidate:
    text: str
    hypothesis: int  # hypothesis / expert / augmented copy / beam rank that produced it
    score: float  # the decoder's score (length-normalised log-probability)


@dataclass
class DecodingSpec:
    name: str
    method: str
    num_beams: Union[int, str] = 1  # an int or "K", "2K", "K^2"
    label: Optional[str] = None
    diversity_penalty: float = 0.5  # dbs lambda
    num_beam_groups: Union[int, str] = "K"  # dbs groups
    sampler: Optional[str] = None  # top_k | nucleus | typical | ancestral
    temperature: float = 1.0
    batched: bool = True  # hypotheses: all K in one generate call (False: K separate calls)
    tta: dict = field(default_factory=dict)  # tta options (decoding.tta.TTAConfig fields)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"decoding.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "sample" and self.sampler not in SAMPLERS:
            raise ConfigError(f"decoding.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.method == "dbs" and self.diversity_penalty < 0:
            raise ConfigError(f"decoding.diversity_penalty must be >= 0, got {self.diversity_penalty}")

    @classmethod
    def from_config(cls, cfg: Any) -> "DecodingSpec":
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def beams(self, K: int) -> int:
        return resolve_count(self.num_beams, K, "decoding.num_beams")

    def forward_passes(self, K: int) -> int:
        B = self.beams(K)
        if self.method in ("hypotheses", "tta", "moe_sample"):
            return K * B
        if self.method == "sample":
            return K
        return B

    def describe(self, K: int) -> str:
        if self.label:
            return self.label.replace("{K}", str(K)).replace("{B}", str(self.beams(K)))
        B = self.beams(K)
        return {
            "hypotheses": f"Hypotheses, beam {B}",
            "beam": f"Beam search (B={B})",
            "dbs": f"DBS (lambda={self.diversity_penalty:g})",
            "sample": f"Sampling ({self.sampler})",
            "tta": f"TTA, beam {B}",
            "moe_sample": "Sampled expert per token",
        }[self.method]


def resolve_count(value: Union[int, str], K: int, what: str) -> int:
    """1, 2, "K", "2K", "K^2" (or "K**2") -> an int for this K."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        text = str(value).replace(" ", "").replace("**", "^")
        table = {"K": K, "2K": 2 * K, "K^2": K * K, "K2": K * K}
        if text.isdigit():
            n = int(text)
        elif text in table:
            n = table[text]
        else:
            raise ConfigError(f"{what} must be an int or one of K, 2K, K^2; got {value!r}")
    if n < 1:
        raise ConfigError(f"{what} must be >= 1, got {value!r} (= {n})")
    return n


def generation_kwargs(tokenizer: Any, max_new_tokens: int, repetition_penalty: Optional[float]) -> dict:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = {"max_new_tokens": int(max_new_tokens), "eos_token_id": tokenizer.eos_token_id, "pad_token_id": pad}
    if repetition_penalty is not None and repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = float(repetition_penalty)
    return kwargs


def sequence_scores(out: Any, prompt_length: int, eos_token_id: int) -> torch.Tensor:
    """Mean log-probability of each generated sequence under the processed scores (greedy / sampling)."""
    steps = torch.stack([s.float().log_softmax(-1) for s in out.scores], dim=1)  # (R, T, V)
    tokens = out.sequences[:, prompt_length:prompt_length + steps.shape[1]]
    logp = steps.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (R, T)
    # tokens after the first EOS are padding
    is_eos = tokens == eos_token_id
    alive = (is_eos.cumsum(1) - is_eos.long()) == 0
    logp = torch.where(alive & torch.isfinite(logp), logp, torch.zeros_like(logp))
    return logp.sum(1) / alive.sum(1).clamp(min=1)


class Decoder:
    """Decodes batches of prompts into K candidates per item with one `DecodingSpec`.

    `model` is an `MCLModel`; `routing` is what single-output methods run under (0 for a K = 1 MLE
    model, "moe" for a LoRA-MoE model); `K` is the number of candidates per item.
    """

    def __init__(self, model: Any, tokenizer: Any, spec: DecodingSpec, K: int, max_new_tokens: int,
                 repetition_penalty: Optional[float] = 1.1, routing: Any = 0, length_penalty: float = 1.0):
        self.model, self.tokenizer, self.spec, self.K = model, tokenizer, spec, K
        self.gen = generation_kwargs(tokenizer, max_new_tokens, repetition_penalty)
        self.routing = routing
        self.length_penalty = length_penalty

    # ------------------------------------------------------------------ helpers
    def _texts(self, sequences: torch.Tensor, prompt_length: int) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)]

    def _generate(self, inputs: dict[str, torch.Tensor], routing: Any, num_beams: int, num_return: int,
                  **extra: Any) -> tuple[list[str], torch.Tensor]:
        """One `generate` call: (texts of the R = rows * num_return sequences, their scores)."""
        prompt_length = inputs["input_ids"].shape[1]
        kwargs = dict(self.gen, num_beams=num_beams, num_return_sequences=num_return, return_dict_in_generate=True,
                      output_scores=True, do_sample=extra.pop("do_sample", False), **extra)
        if num_beams > 1:
            kwargs["length_penalty"] = self.length_penalty
            kwargs["early_stopping"] = False
        out = self.model.generate(**inputs, hypothesis_idx=routing, **kwargs) if not isinstance(routing, str) \
            else self.model.generate(**inputs, routing=routing, **kwargs)
        if num_beams > 1:
            scores = out.sequences_scores.float()
        else:
            scores = sequence_scores(out, prompt_length, self.gen["eos_token_id"])
        return self._texts(out.sequences, prompt_length), scores.cpu()

    # ------------------------------------------------------------------ methods
    def decode(self, inputs: dict[str, torch.Tensor], n_items: int) -> list[list[Candidate]]:
        """`inputs`: model tensors of n_items prompts (left padded); `tta` expects the K copies per
        item already in `inputs`, copy-major (rows [c * n, (c + 1) * n) are copy c)."""
        method = self.spec.method
        K, B = self.K, self.spec.beams(self.K)
        if method == "hypotheses":
            return self._hypotheses(inputs, n_items, B)
        if method in ("tta", "moe_sample"):
            rows = inputs if method == "tta" else {k: replicate(v, K, n_items) for k, v in inputs.items()}
            texts, scores = self._generate(rows, self.routing if method == "tta" else "moe-sample", B, 1)
            return self._copy_major(texts, scores, n_items)
        if method == "beam":
            if B < K:
                raise ConfigError(f"beam search returns K = {K} sequences: num_beams must be >= K, got {B}")
            texts, scores = self._generate(inputs, self.routing, B, K)
            return self._item_major(texts, scores, n_items)
        if method == "sample":
            params = dict(SAMPLERS[self.spec.sampler], temperature=self.spec.temperature)
            texts, scores = self._generate(inputs, self.routing, 1, K, do_sample=True, **params)
            return self._item_major(texts, scores, n_items)
        if method == "dbs":
            return self._dbs(inputs, n_items, B)
        raise AssertionError(method)

    def _hypotheses(self, inputs: dict[str, torch.Tensor], n: int, B: int) -> list[list[Candidate]]:
        K = self.K
        if self.spec.batched:
            rows = {k: replicate(v, K, n) for k, v in inputs.items()}
            ids = torch.arange(K).repeat_interleave(n)  # row k * n + i -> hypothesis k
            texts, scores = self._generate(rows, ids, B, 1)
            return self._copy_major(texts, scores, n)
        texts, scores = [], []
        for k in range(K):
            t, s = self._generate(inputs, k, B, 1)
            texts += t
            scores.append(s)
        return self._copy_major(texts, torch.cat(scores), n)

    def _dbs(self, inputs: dict[str, torch.Tensor], n: int, B: int) -> list[list[Candidate]]:
        from loramcl.decoding.dbs import diverse_beam_search

        K = self.K
        groups = resolve_count(self.spec.num_beam_groups, K, "decoding.num_beam_groups")
        if B < K or B % groups:
            raise ConfigError(f"dbs needs num_beams >= K = {K} and divisible by num_beam_groups = {groups}; got {B}")
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        with self.model.route(self.routing):
            sequences, scores = diverse_beam_search(
                self.model.base_model, inputs["input_ids"], inputs["attention_mask"], num_beams=B,
                num_beam_groups=groups, diversity_penalty=self.spec.diversity_penalty, num_return_sequences=K,
                max_new_tokens=self.gen["max_new_tokens"], eos_token_id=self.gen["eos_token_id"],
                pad_token_id=self.gen["pad_token_id"], length_penalty=self.length_penalty,
                repetition_penalty=self.gen.get("repetition_penalty"), **extra)
        return self._item_major(self._texts(sequences, 0), scores.float().cpu(), n)

    # ------------------------------------------------------------------ reshaping
    def _copy_major(self, texts: Sequence[str], scores: torch.Tensor, n: int) -> list[list[Candidate]]:
        """Rows [k * n, (k + 1) * n) are candidate k of the n items."""
        return [[Candidate(texts[k * n + i], k, float(scores[k * n + i])) for k in range(self.K)] for i in range(n)]

    def _item_major(self, texts: Sequence[str], scores: torch.Tensor, n: int) -> list[list[Candidate]]:
        """Rows [i * K, (i + 1) * K) are the K sequences of item i, best first."""
        K = self.K
        if len(texts) != n * K:
            raise RuntimeError(f"expected {n * K} sequences ({n} items x K = {K}), got {len(texts)}")
        return [[Candidate(texts[i * K + j], j, float(scores[i * K + j])) for j in range(K)] for i in range(n)]
