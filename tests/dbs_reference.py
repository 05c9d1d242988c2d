"""The former diverse beam search, a Python loop over prompts, groups and candidates: the reference
that the equivalence tests (tests/test_dbs.py) hold `loramcl.decoding.dbs` to.

It waits on the device for every candidate, which the vectorised search in src/ does not, and gives
the same results. It shares the finished-hypothesis bookkeeping (`dbs._Hypotheses`), the media
expansion and the selection of the returned rows (`dbs._select`) with it; the search itself
(scores, Hamming penalties, repetition penalty through transformers' `prompt_ignore_length`, beam
bookkeeping) is independent. `bench/gpu_suite.py` times it against the vectorised search.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from loramcl.decoding import dbs


@torch.no_grad()
def diverse_beam_search(
    model, input_ids, attention_mask, num_beams, num_beam_groups, diversity_penalty, num_return_sequences,
    max_new_tokens, eos_token_id, pad_token_id, length_penalty=1.0, repetition_penalty=None, per_group=False,
    return_groups=False, penalise_padding=True, **model_kwargs,
):
    """`loramcl.decoding.dbs.diverse_beam_search` (same arguments and results) through the loop."""
    media = dbs._beam_media(model_kwargs, input_ids.shape[0], num_beams)
    hyps = _search_loop(
        model, input_ids, attention_mask, num_beams, num_beam_groups, diversity_penalty,
        max_new_tokens, eos_token_id, pad_token_id, length_penalty, repetition_penalty, penalise_padding, media,
    )
    sequences, scores, groups = dbs._select(hyps, num_return_sequences, per_group, max_new_tokens, eos_token_id,
                                            pad_token_id, input_ids.device)
    return (sequences, scores, groups) if return_groups else (sequences, scores)


def _search_loop(
    model, input_ids, attention_mask, num_beams, num_beam_groups, diversity_penalty,
    max_new_tokens, eos_token_id, pad_token_id, length_penalty, repetition_penalty, penalise_padding, media,
):
    """The former implementation: a Python loop over prompts, groups and candidates (returns ``hyps``)."""
    B, P = input_ids.shape
    K, G = num_beams, num_beam_groups
    k = K // G
    device = input_ids.device

    processors = LogitsProcessorList()
    if repetition_penalty is not None and repetition_penalty != 1.0:
        # transformers 5's own way to leave the padding out: a prompt length to ignore per row of a group
        padding = None if penalise_padding else (attention_mask == 0).sum(1).repeat_interleave(k)  # (B*k,)
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty, prompt_ignore_length=padding))

    # beam-expanded state: row b*K + j is beam j of prompt b
    ids = input_ids.repeat_interleave(K, dim=0)  # (B*K, P + t)
    mask = attention_mask.repeat_interleave(K, dim=0)  # (B*K, P + t)
    beam_scores = torch.full((B, K), -1e9, dtype=torch.float, device=device)
    beam_scores[:, ::k] = 0.0  # only the first beam of each group is alive at step 0
    beam_scores = beam_scores.view(-1)  # (B*K,)

    hyps = [[dbs._Hypotheses(k, length_penalty) for _ in range(G)] for _ in range(B)]
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

    # finalise: offer the running beams of unfinished groups
    gen_len = ids.shape[1] - P
    for b in range(B):
        for g in range(G):
            if done[b][g]:
                continue
            for j in range(k):
                row = b * K + g * k + j
                hyps[b][g].add(ids[row, P:].clone(), float(beam_scores[row]), gen_len)
    return hyps
