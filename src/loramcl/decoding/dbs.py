r"""Diverse (group) beam search on top of the public transformers 5 API.

transformers 5 dropped its built-in group beam search; this module re-implements the algorithm of
Vijayakumar et al. (2016, "Diverse Beam Search") with the conventions of transformers 4.x so that
results are reproducible across versions.

Notation: batch size ``B``, ``K = num_beams`` beams per prompt split into ``G = num_beam_groups``
groups of ``k = K / G`` beams, vocabulary size ``V``, prompt length ``P`` (left padded), step
``t = 1, 2, ...`` (number of generated tokens after the step).

At every step one forward pass is made for all ``B*K`` beams (with a ``DynamicCache``). The groups
are then processed one after another, ``g = 0 .. G-1``. For a beam ``b`` of group ``g`` with
running score ``s_b`` (sum of log-probabilities of its generated tokens) and token ``v``:

.. math::

    \tilde\ell_{b,v} = \mathrm{RP}\big(\log\mathrm{softmax}(z_b)_v
                       - \lambda\, c^{(g)}_v\big) ,\qquad
    S_{b,v} = s_b + \tilde\ell_{b,v}

where ``z_b`` are the logits, ``lambda = diversity_penalty`` and ``c^{(g)}_v`` is the number of
beams of the groups ``0 .. g-1`` of the same prompt that picked token ``v`` at *this* step
(Hamming diversity). ``RP`` is the optional repetition penalty, applied to the (already
penalised) log-probabilities of tokens present in the beam's ids (prompt included):
``x -> x * r`` if ``x < 0`` else ``x / r``.

The ``2k`` best ``(b, v)`` pairs of the group (over ``k * V`` candidates) are visited in order:
a pair with ``v = EOS`` whose rank is ``< k`` becomes a finished hypothesis with score
``S_{b,v} / t ** length_penalty`` (``t`` counts the generated tokens, EOS included); other pairs
continue as running beams until ``k`` are kept. Each group of each prompt keeps at most ``k``
finished hypotheses (the worst one is evicted). A group is done once it has ``k`` hypotheses and
(``early_stopping=False``) ``max_v S / t ** length_penalty <= worst finished score``, where the
max is over the ``2k`` candidates of this step; done groups emit the pad token (score 0) and are
never updated again. Decoding stops when all groups are done or ``max_new_tokens`` is reached.

Finalisation: the running beams of groups that are not done are offered to their group's
hypotheses with score ``s_b / T ** length_penalty`` (``T`` = generated length). The hypotheses of
*all* groups of a prompt are then pooled and the ``num_return_sequences`` best are returned in
decreasing score order (ties: the later-added group / entry first, as a stable ascending sort
popped from the end). Returned ids have EOS appended to finished hypotheses and are padded with
``pad_token_id`` to ``max_new_tokens``; the returned scores are the normalised scores.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, LogitsProcessorList, RepetitionPenaltyLogitsProcessor

__all__ = ["diverse_beam_search"]


class _Hypotheses:
    """Finished hypotheses of one (prompt, group): at most ``n`` entries (score, generated ids)."""

    def __init__(self, n: int, length_penalty: float) -> None:
        self.n = n
        self.length_penalty = length_penalty
        self.entries: list[tuple[float, torch.Tensor]] = []
        self.worst = 1e9

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, ids: torch.Tensor, sum_logprobs: float, gen_len: int) -> None:
        score = sum_logprobs / (gen_len**self.length_penalty)
        if len(self.entries) < self.n or score > self.worst:
            self.entries.append((score, ids))
            if len(self.entries) > self.n:
                order = sorted((s, i) for i, (s, _) in enumerate(self.entries))
                del self.entries[order[0][1]]
                self.worst = order[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_sum_logprobs: float, gen_len: int) -> bool:
        if len(self.entries) < self.n:
            return False
        return self.worst >= best_sum_logprobs / (gen_len**self.length_penalty)


@torch.no_grad()
def diverse_beam_search(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.LongTensor,
    num_beams: int,
    num_beam_groups: int,
    diversity_penalty: float,
    num_return_sequences: int,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    length_penalty: float = 1.0,
    repetition_penalty: float | None = None,
    **model_kwargs,
) -> tuple[torch.LongTensor, torch.FloatTensor]:
    """Group beam search for a decoder-only model with a left-padded prompt batch.

    ``input_ids``/``attention_mask``: (B, P); ``model_kwargs``: the media inputs of a multimodal
    model (e.g. ``input_features``, ``pixel_values``), given on the first step only. Returns ``sequences`` (B*num_return_sequences,
    max_new_tokens), the generated ids only (EOS then ``pad_token_id``), and ``scores``
    (B*num_return_sequences,), the length-normalised scores, best first within each prompt.
    """
    if num_beams % num_beam_groups != 0:
        raise ValueError("num_beams must be divisible by num_beam_groups")
    if num_return_sequences > num_beams:
        raise ValueError("num_return_sequences must be <= num_beams")
    B, P = input_ids.shape
    K, G = num_beams, num_beam_groups
    # media inputs of multimodal models (audio features, pixel values, ...): expanded to the beams
    # and fed on the first step only; afterwards the cache holds what the encoder produced
    media = {
        key: value.repeat_interleave(num_beams, dim=0) if torch.is_tensor(value) and value.ndim and value.shape[0] == B
        else value
        for key, value in model_kwargs.items()
    }
    k = K // G
    device = input_ids.device

    processors = LogitsProcessorList()
    if repetition_penalty is not None and repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty))

    # beam-expanded state: row b*K + j is beam j of prompt b
    ids = input_ids.repeat_interleave(K, dim=0)  # (B*K, P + t)
    mask = attention_mask.repeat_interleave(K, dim=0)  # (B*K, P + t)
    beam_scores = torch.full((B, K), -1e9, dtype=torch.float, device=device)
    beam_scores[:, ::k] = 0.0  # only the first beam of each group is alive at step 0
    beam_scores = beam_scores.view(-1)  # (B*K,)

    hyps = [[_Hypotheses(k, length_penalty) for _ in range(G)] for _ in range(B)]
    done = [[False] * G for _ in range(B)]
    cache = DynamicCache()
    step_ids = ids  # tokens fed to the model this step

    for t in range(1, max_new_tokens + 1):
        position_ids = mask.long().cumsum(-1) - 1
        position_ids = position_ids.masked_fill(mask == 0, 1)[:, -step_ids.shape[1] :]
        out = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            **(media if t == 1 else {}),
        )
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()  # (B*K, V)
        V = logits.shape[-1]

        current_tokens = torch.zeros(B * K, dtype=torch.long, device=device)  # chosen this step
        reorder = torch.zeros(B * K, dtype=torch.long, device=device)  # source row per row
        new_scores = beam_scores.clone()

        for g in range(G):
            rows = torch.tensor(
                [b * K + g * k + j for b in range(B) for j in range(k)], device=device
            )  # (B*k,)
            g_ids = ids[rows]  # (B*k, P + t - 1)
            logp = torch.log_softmax(logits[rows], dim=-1)  # (B*k, V)
            if g > 0:  # Hamming diversity against the groups 0..g-1 of the same prompt
                counts = torch.stack(
                    [torch.bincount(current_tokens[b * K : b * K + g * k], minlength=V) for b in range(B)]
                ).to(logp.dtype)  # (B, V)
                logp = logp - diversity_penalty * counts.repeat_interleave(k, dim=0)
            logp = processors(g_ids, logp)
            cand = (logp + beam_scores[rows].unsqueeze(-1)).view(B, k * V)  # (B, k*V)
            top_scores, top_flat = torch.topk(cand, 2 * k, dim=1, largest=True, sorted=True)
            top_beam = torch.div(top_flat, V, rounding_mode="floor")  # (B, 2k) in 0..k-1
            top_tok = top_flat % V

            for b in range(B):
                base = b * K + g * k
                if done[b][g]:
                    # finished group: emit pad with score 0 (source row is irrelevant)
                    current_tokens[base : base + k] = pad_token_id
                    new_scores[base : base + k] = 0.0
                    reorder[base : base + k] = torch.arange(base, base + k, device=device)
                    continue
                kept = 0
                for rank in range(2 * k):
                    tok = int(top_tok[b, rank])
                    src = base + int(top_beam[b, rank])
                    score = float(top_scores[b, rank])
                    if tok == eos_token_id:
                        if rank >= k:
                            continue
                        hyps[b][g].add(ids[src, P:].clone(), score, t)
                    else:
                        current_tokens[base + kept] = tok
                        new_scores[base + kept] = top_scores[b, rank]
                        reorder[base + kept] = src
                        kept += 1
                    if kept == k:
                        break
                if kept < k:
                    raise RuntimeError("not enough non-EOS candidates for the beam group")
                done[b][g] = hyps[b][g].is_done(float(top_scores[b].max()), t)

        ids = torch.cat([ids[reorder], current_tokens.unsqueeze(-1)], dim=-1)
        mask = torch.cat([mask, mask.new_ones(B * K, 1)], dim=-1)
        beam_scores = new_scores
        cache.reorder_cache(reorder)
        step_ids = current_tokens.unsqueeze(-1)
        if all(all(d) for d in done):
            break

    # finalise: offer the running beams of unfinished groups, then pool the groups of each prompt
    gen_len = ids.shape[1] - P
    sequences = torch.full((B * num_return_sequences, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    scores = torch.zeros(B * num_return_sequences, dtype=torch.float, device=device)
    for b in range(B):
        for g in range(G):
            if done[b][g]:
                continue
            for j in range(k):
                row = b * K + g * k + j
                hyps[b][g].add(ids[row, P:].clone(), float(beam_scores[row]), gen_len)
        pooled = sorted((e for g in range(G) for e in hyps[b][g].entries), key=lambda e: e[0])
        for r in range(num_return_sequences):
            score, seq = pooled.pop()
            i = b * num_return_sequences + r
            sequences[i, : seq.shape[0]] = seq
            if seq.shape[0] < max_new_tokens:
                sequences[i, seq.shape[0]] = eos_token_id
            scores[i] = score
    return sequences, scores
