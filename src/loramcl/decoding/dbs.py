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
``x -> x * r`` if ``x < 0`` else ``x / r``. The prompt's left padding counts as present (as in
transformers 4, whose recorded outputs we reproduce) unless ``penalise_padding=False`` (as in
transformers 5's ``generate``: a prompt's result then does not depend on how much its batch pads it).

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
popped from the end). With ``per_group=True`` the groups are not pooled: every group returns its
own ``num_return_sequences`` best (same order and ties), groups in order (LoRA-MCL's hypothesis
DBS: group g is decoded by adapter g and returns hypothesis g's candidate). Returned ids have EOS
appended to finished hypotheses and are padded with ``pad_token_id`` to ``max_new_tokens``; the
returned scores are the normalised scores; ``return_groups=True`` adds the group of each row.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, RepetitionPenaltyLogitsProcessor

__all__ = ["diverse_beam_search"]

_NOT_A_TOKEN = torch.iinfo(torch.long).max  # an id the repetition penalty ignores (>= the vocabulary size)


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
    per_group: bool = False,
    return_groups: bool = False,
    penalise_padding: bool = True,
    **model_kwargs,
) -> tuple[torch.Tensor, ...]:
    """Group beam search for a decoder-only model with a left-padded prompt batch.

    ``input_ids``/``attention_mask``: (B, P); ``model_kwargs``: the media inputs of a multimodal
    model (e.g. ``input_features``, ``pixel_values``), given on the first step only. Returns
    ``sequences`` (R, max_new_tokens), the generated ids only (EOS then ``pad_token_id``), and
    ``scores`` (R,), the length-normalised scores, with R = B * num_return_sequences rows, best first
    within each prompt.

    ``per_group=True``: R = B * G * num_return_sequences rows, row ``(b * G + g) * n + r`` the r-th
    best of group g of prompt b (``n = num_return_sequences <= num_beams / num_beam_groups``).
    ``return_groups=True``: a third tensor ``groups`` (R,), the group that produced each row.
    ``penalise_padding=False``: the repetition penalty ignores the prompt's padding (transformers 5).
    Rows of the model are prompt-major, ``b * num_beams + g * k + j`` beam j of group g, and a beam
    only ever moves inside its group, so a fixed row -> adapter routing (group g -> adapter g) holds
    for the whole search.

    The former per-candidate Python loop, which gives the same results, is kept as the reference of
    the equivalence tests (tests/dbs_reference.py).
    """
    if num_beams % num_beam_groups != 0:
        raise ValueError("num_beams must be divisible by num_beam_groups")
    if num_return_sequences > num_beams:
        raise ValueError("num_return_sequences must be <= num_beams")
    if per_group and num_return_sequences > num_beams // num_beam_groups:
        raise ValueError(f"per_group returns num_return_sequences per group: it must be <= num_beams / "
                         f"num_beam_groups = {num_beams // num_beam_groups}, got {num_return_sequences}")
    hyps = _search(
        model, input_ids, attention_mask, num_beams, num_beam_groups, diversity_penalty,
        max_new_tokens, eos_token_id, pad_token_id, length_penalty, repetition_penalty, penalise_padding,
        _beam_media(model_kwargs, input_ids.shape[0], num_beams),
    )
    sequences, scores, groups = _select(hyps, num_return_sequences, per_group, max_new_tokens, eos_token_id,
                                        pad_token_id, input_ids.device)
    return (sequences, scores, groups) if return_groups else (sequences, scores)


def _beam_media(model_kwargs: dict, B: int, K: int) -> dict:
    """The media inputs of multimodal models (audio features, pixel values, ...) expanded to the K
    beams of each of the B prompts; fed on the first step only, afterwards the cache holds what the
    encoder produced."""
    return {
        key: value.repeat_interleave(K, dim=0) if torch.is_tensor(value) and value.ndim and value.shape[0] == B
        else value
        for key, value in model_kwargs.items()
    }


def _select(hyps, n, per_group, max_new_tokens, eos_token_id, pad_token_id, device):
    """The returned rows from the finished hypotheses ``hyps[b][g]`` of every prompt b and group g:
    the n best of each prompt (groups pooled) or, ``per_group``, of each group; best first."""
    rows = []  # (score, generated ids, group)
    for prompt in hyps:  # prompt[g]: the finished hypotheses of group g
        G = len(prompt)
        pools = [[g] for g in range(G)] if per_group else [range(G)]
        for pool in pools:
            # a stable ascending sort popped from the end: ties go to the later-added group / entry
            ranked = sorted(((score, seq, g) for g in pool for score, seq in prompt[g].entries), key=lambda e: e[0])
            rows += [ranked.pop() for _ in range(n)]
    sequences = torch.full((len(rows), max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    for i, (_, seq, _) in enumerate(rows):
        sequences[i, : seq.shape[0]] = seq
        if seq.shape[0] < max_new_tokens:
            sequences[i, seq.shape[0]] = eos_token_id
    scores = torch.tensor([score for score, _, _ in rows], dtype=torch.float, device=device)
    groups = torch.tensor([g for _, _, g in rows], dtype=torch.long, device=device)
    return sequences, scores, groups


def _search(
    model, input_ids, attention_mask, num_beams, num_beam_groups, diversity_penalty,
    max_new_tokens, eos_token_id, pad_token_id, length_penalty, repetition_penalty, penalise_padding, media,
):
    """Each group's step for all prompts at once in tensor ops; one device->host transfer per step.

    Groups stay sequential (the Hamming counts of group g need the tokens of groups 0..g-1). Only the
    finished-hypothesis bookkeeping runs on the host, from the ``k`` best candidates of every group.
    Returns the finished hypotheses ``hyps[b][g]`` (running beams offered), for `_select`.
    """
    B, P = input_ids.shape
    K, G = num_beams, num_beam_groups
    k = K // G
    device = input_ids.device
    penalty, seen_prompt = _repetition_penalty(input_ids, attention_mask, K, repetition_penalty, penalise_padding)

    # beam-expanded state: row b*K + j is beam j of prompt b
    ids = input_ids.repeat_interleave(K, dim=0)  # (B*K, P + t)
    mask = attention_mask.repeat_interleave(K, dim=0)  # (B*K, P + t)
    beam_scores = torch.full((B, K), -1e9, dtype=torch.float, device=device)
    beam_scores[:, ::k] = 0.0  # only the first beam of each group is alive at step 0
    beam_scores = beam_scores.view(-1)  # (B*K,)
    rows = torch.arange(B * K, device=device).view(B, G, k)
    group_rows = [rows[:, g].contiguous() for g in range(G)]  # (B, k): the rows of group g
    ones = torch.ones(B, k, device=device)

    hyps = [[_Hypotheses(k, length_penalty) for _ in range(G)] for _ in range(B)]
    done = [[False] * G for _ in range(B)]  # host copy, for the bookkeeping
    done_mask = torch.zeros(B, G, dtype=torch.bool, device=device)  # device copy, for the selection
    cache = DynamicCache()
    step_ids = ids  # tokens fed to the model this step

    for t in range(1, max_new_tokens + 1):
        logits, cache = _next_logits(model, step_ids, mask, cache, media if t == 1 else {})  # (B*K, V)
        V = logits.shape[-1]
        counts = logits.new_zeros(B, V)  # tokens picked at this step by the groups before g
        seen = ids if seen_prompt is None else torch.cat([seen_prompt, ids[:, P:]], dim=1)  # for the penalty
        tokens, scores, sources, best_scores, best_flat = [], [], [], [], []
        for g in range(G):
            g_rows = group_rows[g].view(-1)  # (B*k,)
            top_scores, top_flat = _group_candidates(
                logits[g_rows], beam_scores[g_rows], counts if g > 0 else None, diversity_penalty,
                penalty, seen[g_rows] if penalty is not None else None, k,
            )  # (B, 2k) each
            tok, score, src = _running_beams(top_scores, top_flat, group_rows[g], V, eos_token_id)
            if any(done[b][g] for b in range(B)):  # finished groups emit pad with score 0, rows unmoved
                finished = done_mask[:, g : g + 1]
                tok = tok.masked_fill(finished, pad_token_id)
                score = score.masked_fill(finished, 0.0)
                src = torch.where(finished, group_rows[g], src)
            if g < G - 1:
                counts.scatter_add_(1, tok, ones)
            tokens.append(tok)
            scores.append(score)
            sources.append(src)
            best_scores.append(top_scores[:, :k])  # EOS ranks < k finish a hypothesis; rank 0 is the max
            best_flat.append(top_flat[:, :k])

        reorder = torch.cat(sources, dim=1).view(-1)  # (B*K,) source row per row
        current_tokens = torch.cat(tokens, dim=1).view(-1)  # (B*K,) chosen this step
        prev_ids = ids
        ids = torch.cat([ids[reorder], current_tokens.unsqueeze(-1)], dim=-1)
        mask = torch.cat([mask, mask.new_ones(B * K, 1)], dim=-1)
        beam_scores = torch.cat(scores, dim=1).view(-1)
        cache.reorder_cache(reorder)
        step_ids = current_tokens.unsqueeze(-1)

        # the step's one device->host transfer, last so that the host launches the state update while
        # the device is still busy; float64 holds the float32 scores and the flat indices exactly
        best = torch.stack([torch.stack(best_scores).double(), torch.stack(best_flat).double()])
        top_score, top_index = best.cpu().tolist()  # (G, B, k) each
        newly_done = _finish(hyps, done, top_score, top_index, prev_ids[:, P:], t, V, eos_token_id)
        if all(all(d) for d in done):
            break
        if newly_done:
            done_mask = torch.tensor(done, device=device)

    _offer_running(hyps, done, ids[:, P:], beam_scores.tolist())
    return hyps


def _repetition_penalty(input_ids, attention_mask, K, repetition_penalty, penalise_padding):
    """The repetition penalty (None without one) and, with ``penalise_padding=False``, the prompt
    ids it looks at, expanded to the K beams (B*K, P), with the padding out of its reach (else None:
    it looks at the beams' ids, padding included)."""
    if repetition_penalty is None or repetition_penalty == 1.0:
        return None, None
    penalty = RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty)
    if penalise_padding:
        return penalty, None
    # the processor ignores ids >= V: the prompt's padding becomes one
    return penalty, input_ids.masked_fill(attention_mask == 0, _NOT_A_TOKEN).repeat_interleave(K, dim=0)


def _next_logits(model, step_ids, mask, cache, media):
    """One forward pass of all beams with the cache: the last position's fp32 logits (B*K, V), and
    the cache."""
    position_ids = mask.long().cumsum(-1) - 1
    position_ids = position_ids.masked_fill(mask == 0, 1)[:, -step_ids.shape[1] :]
    out = model(
        input_ids=step_ids,
        attention_mask=mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,  # only the last position is scored: (B K, P, V) logits would be GBs at 7B
        **media,
    )
    return out.logits[:, -1, :].float(), out.past_key_values


def _group_candidates(logits, beam_scores, counts, diversity_penalty, penalty, seen, k):
    """The 2k best (beam, token) candidates of one group in every prompt, best first:
    ``S_{b,v} = s_b + RP(log softmax(z_b)_v - lambda c_v)`` (module docstring).

    ``logits``: (B*k, V) of the group's beams, ``beam_scores``: (B*k,) their running scores,
    ``counts``: (B, V) the tokens the earlier groups picked at this step (None for group 0),
    ``penalty``: the repetition penalty (or None) and ``seen`` (B*k, ·) the ids it looks at.
    Returns the scores and flat indices ``beam * V + token`` (B, 2k) each.
    """
    V = logits.shape[-1]
    B = logits.shape[0] // k
    logp = torch.log_softmax(logits, dim=-1)  # (B*k, V)
    if counts is not None:  # Hamming diversity against the groups 0..g-1 of the same prompt
        logp = (logp.view(B, k, V) - (diversity_penalty * counts).unsqueeze(1)).view(B * k, V)
    if penalty is not None:
        logp = penalty(seen, logp)
    cand = (logp + beam_scores.unsqueeze(-1)).view(B, k * V)  # (B, k*V)
    return torch.topk(cand, 2 * k, dim=1, largest=True, sorted=True)  # (B, 2k)


def _running_beams(top_scores, top_flat, rows, V, eos_token_id):
    """The group's next running beams: the first k non-EOS candidates in rank order, as (token,
    score, source row) (B, k) each; ``rows`` (B, k) are the group's rows. There are always k, as at
    most k of the 2k (beam, token) pairs have token EOS."""
    k = rows.shape[1]
    rank = torch.arange(2 * k, device=top_flat.device)
    top_tok = top_flat % V
    running = top_tok != eos_token_id
    kept = running & (running.cumsum(1) <= k)
    pick = torch.where(kept, rank, rank + 2 * k).argsort(dim=1)[:, :k]  # (B, k) ranks, in order
    tok = top_tok.gather(1, pick)
    score = top_scores.gather(1, pick)
    src = rows[:, :1] + torch.div(top_flat, V, rounding_mode="floor").gather(1, pick)
    return tok, score, src


def _finish(hyps, done, top_score, top_index, generated, t, V, eos_token_id) -> bool:
    """Host bookkeeping of step t: the EOS candidates of rank < k become finished hypotheses of
    their (prompt, group), and groups that cannot improve any more are marked done (``done[b][g]``).

    ``top_score``, ``top_index``: (G, B, k) the k best candidates' scores and flat indices
    ``beam * V + token``; ``generated`` (B*K, t - 1): the ids the beams had generated before this
    step. Returns whether a group finished at this step.
    """
    newly_done = False
    for b, prompt in enumerate(hyps):
        G = len(prompt)
        for g, group in enumerate(prompt):
            if done[b][g]:
                continue
            k = group.n
            for r in range(k):
                beam, tok = divmod(int(top_index[g][b][r]), V)
                if tok == eos_token_id:
                    # a view, not a copy: ids tensors are replaced each step, never written in place
                    group.add(generated[(b * G + g) * k + beam], top_score[g][b][r], t)
            done[b][g] = group.is_done(top_score[g][b][0], t)
            newly_done |= done[b][g]
    return newly_done


def _offer_running(hyps, done, generated, final_scores) -> None:
    """Finalisation: the running beams of the groups that are not done are offered to their group's
    hypotheses (`_select` picks the returned ones); ``generated`` (B*K, T) are their ids and
    ``final_scores`` (B*K,) their running scores."""
    gen_len = generated.shape[1]
    for b, prompt in enumerate(hyps):
        G = len(prompt)
        for g, group in enumerate(prompt):
            if done[b][g]:
                continue
            for j in range(group.n):
                row = (b * G + g) * group.n + j
                group.add(generated[row], final_scores[row], gen_len)
