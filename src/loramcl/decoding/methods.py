"""The evaluation sweep's decoding methods, one registry entry each: K candidates per item.

A `DecodingSpec` (a file of `configs/decoding/`, every key validated) names a `Method` of `METHODS`.
Each entry declares everything about its method in one place: the training schemes it suits, its
forward passes per item, its label, the data it needs and its decode function:

    hypotheses     (LoRA-MCL) every hypothesis decoded with beam B, top-1 kept; all K in ONE batched
                   `generate` call (rows replicated hypothesis-major, one routing id per row, which
                   survives the beam expansion inside `generate`)
    forced_expert  (LoRA-MoE) the same with expert k forced for the whole sequence
    mcl_dbs        (LoRA-MCL) hypothesis-grouped diverse beam search: ONE `decoding.dbs` call with K
                   groups of B beams, group k decoded by hypothesis k (one routing id per row) with the
                   Hamming penalty lambda across groups; candidate k = group k's best (lambda = 0:
                   exactly `hypotheses` with beam B)
    beam           beam search with B beams returning the K best sequences (MLE / MoE mixture)
    dbs            diverse beam search, K groups (the project's `decoding.dbs`); candidates best first,
                   each labelled with the group that produced it
    sample         K samples: top-k, nucleus, typical or ancestral
    tta            K augmented copies of each input (see `decoding.tta`), each decoded with beam B, top-1
    moe_sample     K decodes where every token of every layer draws its expert from the MoE router
    teacher_forced no decoding: only the oracle NLL of the test references (the paper's "test loss"
                   tables); `decode` is never called

`forward_passes` is the number of sequences decoded in parallel per item (the beams in flight):
K * B for `hypotheses`, `forced_expert`, `mcl_dbs`, `tta` and `moe_sample`, B for `beam` and `dbs`,
K for `sample`, 0 for `teacher_forced`. It is the cost axis of the quality-versus-diversity plot.

Adding a method: one `register(Method(...))` at the end of this file and one YAML file in
configs/decoding/.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch

from loramcl.errors import ConfigError
from loramcl.layers import Route
from loramcl.model import replicate
from loramcl.schemes import MCL, MLE, MOE

SAMPLERS = {
    "top_k": {"top_k": 50, "top_p": 1.0, "typical_p": 1.0},  # paper: k = 50
    "nucleus": {"top_k": 0, "top_p": 0.95, "typical_p": 1.0},  # paper: p = 0.95
    "typical": {"top_k": 0, "top_p": 1.0, "typical_p": 0.95},  # paper: 0.95
    "ancestral": {"top_k": 0, "top_p": 1.0, "typical_p": 1.0},  # the model's full distribution
}
ONE_OUTPUT = frozenset({MLE, MOE})  # models decoded as one distribution (the MoE mixture included)


@dataclass
class Candidate:
    """One of an item's K candidates. `hypothesis` is what produced it: the hypothesis (`hypotheses`,
    `mcl_dbs`), the forced expert, the augmented copy (`tta`), the DBS group (`dbs`: candidates are
    best first, so several may share a group when groups hold more than one beam), the beam rank
    (`beam`) or the sample index (`sample`, `moe_sample`)."""

    text: str
    hypothesis: int  # hypothesis / expert / augmented copy / DBS group / beam rank / sample that produced it
    score: float  # the decoder's score (length-normalised log-probability)


@dataclass(frozen=True)
class Method:
    """One decoding method: what it suits and costs, how it is named, and how it decodes."""

    name: str
    schemes: frozenset  # training schemes it suits (loramcl.schemes kinds)
    label: Callable[["DecodingSpec", int, int], str]  # (spec, K, B) -> default label
    forward_passes: Callable[[int, int], int]  # (K, B) -> sequences in flight per item
    decode: Callable[["Decoder", dict, int, int], list]  # (decoder, inputs, n items, B) -> candidates
    purpose: str  # "decoding=<name> <purpose>; this is a <scheme> run": said when a run does not suit it
    title: str = ""  # a longer name for messages (default: the name)
    data_kinds: Optional[frozenset] = None  # the data kinds it is defined for (None: any)
    augments_inputs: bool = False  # the caller puts K augmented copies of each item in `inputs`
    per_adapter: bool = False  # candidate k comes from adapter k: K candidates = the run's K adapters


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"decoding method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


@dataclass
class DecodingSpec:
    """A file of configs/decoding/: every key is a field here (an unknown key is an error)."""

    name: str
    method: str
    num_beams: Union[int, str] = 1  # an int or "K", "2K", "K^2"
    label: Optional[str] = None  # "{K}" and "{B}" are filled in
    diversity_penalty: float = 0.5  # dbs / mcl_dbs lambda
    num_beam_groups: Union[int, str] = "K"  # dbs groups (mcl_dbs: always K, one per hypothesis)
    sampler: Optional[str] = None  # top_k | nucleus | typical | ancestral
    temperature: float = 1.0
    batched: bool = True  # hypotheses: all K in one generate call (False: K separate calls)
    tta: dict = field(default_factory=dict)  # tta options (decoding.tta.TTAConfig fields)

    def __post_init__(self) -> None:  # the rules live in the schema (loramcl.schema.evaluation.DecodingSchema)
        from loramcl.schema.errors import validate
        from loramcl.schema.evaluation import DecodingSchema

        checked = validate(DecodingSchema, asdict(self), "decoding")
        # numbers as floats: `decoding.temperature=10` arrives as an int, which transformers refuses
        self.temperature, self.diversity_penalty = checked.temperature, checked.diversity_penalty
        if self.method == "sample" and self.sampler not in SAMPLERS:
            raise ConfigError(f"decoding.sampler must be one of {', '.join(SAMPLERS)} for decoding.method=sample, "
                              f"got {self.sampler!r}")

    @classmethod
    def from_config(cls, cfg: Any) -> "DecodingSpec":
        from omegaconf import OmegaConf

        from loramcl.schema.errors import validate
        from loramcl.schema.evaluation import DecodingSchema

        data = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
        validate(DecodingSchema, data, "decoding")  # unknown keys named with the nearest known one
        return cls(**data)

    @property
    def entry(self) -> Method:
        return METHODS[self.method]

    def beams(self, K: int) -> int:
        return resolve_count(self.num_beams, K, "decoding.num_beams")

    def forward_passes(self, K: int) -> int:
        return self.entry.forward_passes(K, self.beams(K))

    def describe(self, K: int) -> str:
        if self.label:
            return self.label.replace("{K}", str(K)).replace("{B}", str(self.beams(K)))
        return self.entry.label(self, K, self.beams(K))


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

    `model` is an adapter model (`MCLModel` / `MoEModel`); one-output methods run it under its
    `default_routing` (hypothesis 0 of a K = 1 MLE model, the router mixture of a LoRA-MoE model);
    `K` is the number of candidates per item.
    """

    def __init__(self, model: Any, tokenizer: Any, spec: DecodingSpec, K: int, max_new_tokens: int,
                 repetition_penalty: Optional[float] = 1.1, length_penalty: float = 1.0):
        self.model, self.tokenizer, self.spec, self.K = model, tokenizer, spec, K
        self.gen = generation_kwargs(tokenizer, max_new_tokens, repetition_penalty)
        self.routing = model.default_routing
        self.length_penalty = length_penalty

    def decode(self, inputs: dict[str, torch.Tensor], n_items: int) -> list[list[Candidate]]:
        """`inputs`: model tensors of n_items prompts (left padded); a method that augments its inputs
        (tta) expects the K copies per item there, copy-major (rows [c * n, (c + 1) * n) are copy c)."""
        return self.spec.entry.decode(self, inputs, n_items, self.spec.beams(self.K))

    # ------------------------------------------------------------------ helpers
    def _texts(self, sequences: torch.Tensor, prompt_length: int) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)]

    def _generate(self, inputs: dict[str, torch.Tensor], routing: Any, num_beams: int, num_return: int,
                  **extra: Any) -> tuple[list[str], torch.Tensor]:
        """One `generate` call under `routing`: (texts of the R = rows * num_return sequences, their scores)."""
        prompt_length = inputs["input_ids"].shape[1]
        kwargs = dict(self.gen, num_beams=num_beams, num_return_sequences=num_return, return_dict_in_generate=True,
                      output_scores=True, do_sample=extra.pop("do_sample", False), **extra)
        if num_beams > 1:
            kwargs["length_penalty"] = self.length_penalty
            kwargs["early_stopping"] = False
        with self.model.route(routing), torch.no_grad():
            out = self.model.base_model.generate(**inputs, **kwargs)
        if num_beams > 1:
            scores = out.sequences_scores.float()
        else:
            scores = sequence_scores(out, prompt_length, self.gen["eos_token_id"])
        return self._texts(out.sequences, prompt_length), scores.cpu()

    # ------------------------------------------------------------------ reshaping
    def _copy_major(self, texts: Sequence[str], scores: torch.Tensor, n: int) -> list[list[Candidate]]:
        """Rows [k * n, (k + 1) * n) are candidate k of the n items."""
        return [[Candidate(texts[k * n + i], k, float(scores[k * n + i])) for k in range(self.K)] for i in range(n)]

    def _item_major(self, texts: Sequence[str], scores: torch.Tensor, n: int,
                    labels: Optional[Sequence[int]] = None) -> list[list[Candidate]]:
        """Rows [i * K, (i + 1) * K) are the K sequences of item i (best first, or in hypothesis order);
        `labels`: each row's `Candidate.hypothesis` (default: its place j in the item)."""
        K = self.K
        if len(texts) != n * K:
            raise RuntimeError(f"expected {n * K} sequences ({n} items x K = {K}), got {len(texts)}")
        labels = [r % K for r in range(n * K)] if labels is None else labels
        return [[Candidate(texts[r], int(labels[r]), float(scores[r])) for r in range(i * K, (i + 1) * K)]
                for i in range(n)]


# ---------------------------------------------------------------------------- the methods
def _adapters(d: Decoder, inputs: dict, n: int, B: int) -> list[list[Candidate]]:
    """Adapter k (hypothesis, or forced expert) gives candidate k."""
    K = d.K
    if d.spec.batched:
        rows = {k: replicate(v, K, n) for k, v in inputs.items()}
        ids = torch.arange(K).repeat_interleave(n)  # row k * n + i -> adapter k
        texts, scores = d._generate(rows, ids, B, 1)
        return d._copy_major(texts, scores, n)
    texts, scores = [], []
    for k in range(K):
        t, s = d._generate(inputs, k, B, 1)
        texts += t
        scores.append(s)
    return d._copy_major(texts, torch.cat(scores), n)


def _augmented_copies(d: Decoder, inputs: dict, n: int, B: int) -> list[list[Candidate]]:
    """Copy c of each item (already in `inputs`) gives candidate c."""
    texts, scores = d._generate(inputs, d.routing, B, 1)
    return d._copy_major(texts, scores, n)


def _sampled_experts(d: Decoder, inputs: dict, n: int, B: int) -> list[list[Candidate]]:
    """K replicas of each item, every token's expert drawn from the router."""
    rows = {k: replicate(v, d.K, n) for k, v in inputs.items()}
    texts, scores = d._generate(rows, Route.SAMPLED, B, 1)
    return d._copy_major(texts, scores, n)


def _beam(d: Decoder, inputs: dict, n: int, B: int) -> list[list[Candidate]]:
    if B < d.K:
        raise ConfigError(f"beam search returns K = {d.K} sequences: num_beams must be >= K, got {B}")
    texts, scores = d._generate(inputs, d.routing, B, d.K)
    return d._item_major(texts, scores, n)


def _sample(d: Decoder, inputs: dict, n: int, B: int) -> list[list[Candidate]]:
    params = dict(SAMPLERS[d.spec.sampler], temperature=d.spec.temperature)
    texts, scores = d._generate(inputs, d.routing, 1, d.K, do_sample=True, **params)
    return d._item_major(texts, scores, n)


def _diverse_beam_search(d: Decoder, inputs: dict, routing: Any, **options: Any) -> tuple[torch.Tensor, ...]:
    """`decoding.dbs.diverse_beam_search` under `routing`, with the decoder's generation settings:
    (sequences, scores, groups)."""
    from loramcl.decoding.dbs import diverse_beam_search

    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    with d.model.route(routing):
        return diverse_beam_search(
            d.model.base_model, inputs["input_ids"], inputs["attention_mask"],
            diversity_penalty=d.spec.diversity_penalty, max_new_tokens=d.gen["max_new_tokens"],
            eos_token_id=d.gen["eos_token_id"], pad_token_id=d.gen["pad_token_id"], length_penalty=d.length_penalty,
            repetition_penalty=d.gen.get("repetition_penalty"), return_groups=True, **options, **extra)


def _dbs(d: Decoder, inputs: dict, n: int, B: int) -> list[list[Candidate]]:
    """The K best of all groups, best first; candidate j is labelled with its group."""
    K = d.K
    groups = resolve_count(d.spec.num_beam_groups, K, "decoding.num_beam_groups")
    if B < K or B % groups:
        raise ConfigError(f"dbs needs num_beams >= K = {K} and divisible by num_beam_groups = {groups}; got {B}")
    sequences, scores, group = _diverse_beam_search(d, inputs, d.routing, num_beams=B, num_beam_groups=groups,
                                                    num_return_sequences=K)
    return d._item_major(d._texts(sequences, 0), scores.float().cpu(), n, labels=group.tolist())


def _hypothesis_dbs(d: Decoder, inputs: dict, n: int, B: int) -> list[list[Candidate]]:
    """K groups of B beams, group k decoded by hypothesis k; candidate k = group k's best.

    The search's rows are prompt-major, row i * K B + k B + j beam j of group k of item i, and beams
    only move inside their group: one routing id per (item, group), which the layers expand to the
    group's B contiguous rows (media encoder pass included), holds for the whole search.
    """
    K = d.K
    if resolve_count(d.spec.num_beam_groups, K, "decoding.num_beam_groups") != K:
        raise ConfigError(f"mcl_dbs decodes one group per hypothesis: num_beam_groups must be K (= {K}), "
                          f"got {d.spec.num_beam_groups!r}")
    if d.model.num_hypotheses != K:
        raise ConfigError(f"mcl_dbs gives one candidate per hypothesis: K = {K} candidates but the model has "
                          f"{d.model.num_hypotheses} hypotheses")
    routing = torch.arange(K).repeat(n)  # (item i, group k) -> hypothesis k
    # the repetition penalty ignores the prompts' padding, as `generate` (hence `hypotheses`) does
    sequences, scores, group = _diverse_beam_search(d, inputs, routing, num_beams=K * B, num_beam_groups=K,
                                                    num_return_sequences=1, per_group=True, penalise_padding=False)
    return d._item_major(d._texts(sequences, 0), scores.float().cpu(), n, labels=group.tolist())


def _k_times_b(K: int, B: int) -> int:
    return K * B


ONE_OUTPUT_PURPOSE = "is for one-output models (LoRA-MLE, LoRA-MoE)"
register(Method("hypotheses", frozenset({MCL}), lambda s, K, B: f"Hypotheses, beam {B}", _k_times_b, _adapters,
                purpose="decodes each of the K hypotheses of a LoRA-MCL run", per_adapter=True))
register(Method("forced_expert", frozenset({MOE}), lambda s, K, B: f"Expert k forced, beam {B}", _k_times_b,
                _adapters, purpose="forces each of the K experts of a LoRA-MoE run", per_adapter=True))
register(Method("mcl_dbs", frozenset({MCL}),
                lambda s, K, B: f"Hypothesis DBS (B={B}, lambda={s.diversity_penalty:g})", _k_times_b, _hypothesis_dbs,
                purpose="decodes the K hypotheses of a LoRA-MCL run as the K groups of one diverse beam search",
                title="hypothesis-grouped diverse beam search", per_adapter=True))
register(Method("beam", ONE_OUTPUT, lambda s, K, B: f"Beam search (B={B})", lambda K, B: B, _beam,
                purpose=ONE_OUTPUT_PURPOSE))
register(Method("dbs", ONE_OUTPUT, lambda s, K, B: f"DBS (lambda={s.diversity_penalty:g})", lambda K, B: B, _dbs,
                purpose=ONE_OUTPUT_PURPOSE))
register(Method("sample", ONE_OUTPUT, lambda s, K, B: f"Sampling ({s.sampler})", lambda K, B: K, _sample,
                purpose=ONE_OUTPUT_PURPOSE))
register(Method("tta", ONE_OUTPUT, lambda s, K, B: f"TTA, beam {B}", _k_times_b, _augmented_copies,
                purpose=ONE_OUTPUT_PURPOSE, title="test-time augmentation",
                data_kinds=frozenset({"audio_caption", "image_caption"}), augments_inputs=True))
register(Method("moe_sample", frozenset({MOE}), lambda s, K, B: "Sampled expert per token", _k_times_b,
                _sampled_experts, purpose="samples the experts of a LoRA-MoE run from its routers"))


def _no_decoding(d: Decoder, inputs: dict, n: int, B: int) -> list[list[Candidate]]:
    raise RuntimeError("teacher_forced scores the references only: there is nothing to decode")


register(Method("teacher_forced", frozenset({MCL, MLE, MOE}), lambda s, K, B: "Test loss (teacher-forced)",
                lambda K, B: 0, _no_decoding, purpose="scores every kind of model"))
