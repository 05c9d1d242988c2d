"""Mixtures of Markov chains for the LoRA-MCL toy experiment, with their exact reference losses.

A sequence x_1..x_T over S states is drawn by picking chain c with probability w_c, drawing x_1
from that chain's initial distribution, then x_{t+1} ~ P_c[x_t, :]. A causal language model scores
the T - 1 positions x_2..x_T (x_1 is never scored); losses are in nats per scored token. This
module samples such data (torch, vectorised over sequences, looping over time only) and computes
in float64 numpy, exactly and never by Monte Carlo, the lines of the toy loss plot: the best loss
of a full-context predictor (the Bayes posterior predictive), the best loss of a predictor with a
finite receptive field, the MCL band of C perfect hypotheses, the winner-takes-all loss of any K
fixed Markov predictors, and the averaged next-state matrix that an MLE model converges to.
Full-context expectations are sums over sufficient statistics (current state and transition
counts n_ij), which keeps S = 2, T = 32 to a few thousand terms per position.

Example:
    mix = paper_mixture("transition1")
    tokens, chain_ids = sample(mix, 128, 32, torch.Generator().manual_seed(0))
    theory_summary(mix, 32, window=9)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

INIT_MODES = ("uniform", "stationary")
ASSIGNMENTS = ("wta", "each")
STOCHASTIC_TOL = 1e-6  # tolerance on "sums to 1" for rows, weights and init

PAPER_SEQ_LEN = 32  # paper, section 5 / Figure 1
PAPER_TRANSITIONS = {  # paper, Figure 1 (P1, P2)
    "transition1": ([[0.8, 0.2], [0.9, 0.1]], [[0.2, 0.8], [0.25, 0.75]]),
    "transition2": ([[0.3, 0.7], [0.8, 0.2]], [[0.2, 0.8], [0.25, 0.75]]),
}


# --------------------------------------------------------------------------------------------
# The mixture
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)  # the fields hold numpy arrays, whose == is elementwise
class MarkovMixture:
    """A mixture of C Markov chains on S states.

    p(x_1..x_T) = sum_c w_c init_c(x_1) prod_{t=1}^{T-1} P_c[x_t, x_{t+1}].

    Attributes:
        transitions: C row-stochastic S x S matrices P_c (stored as float64 arrays).
        weights: chain probabilities w_c; None means uniform 1/C (paper).
        init: "uniform" (paper: first token uniform, the same for every chain), "stationary"
            (chain c starts from its own stationary distribution pi_c, as the paper's reference
            code assumed) or an explicit length-S probability vector shared by all chains.
    """

    transitions: Sequence[Any]
    weights: Optional[Sequence[float]] = None
    init: Union[str, Sequence[float]] = "uniform"

    def __post_init__(self) -> None:
        self.transitions = _check_transitions(self.transitions)
        self.weights = _check_weights(self.weights, len(self.transitions))
        self.init = _check_init(self.init, self.num_states)

    @property
    def num_states(self) -> int:
        return self.transitions[0].shape[0]

    @property
    def num_chains(self) -> int:
        return len(self.transitions)

    def stationary(self, c: int) -> np.ndarray:
        """pi_c with pi_c P_c = pi_c, sum_i pi_c(i) = 1, shape (S,).

        Unique when P_c has a single recurrent class; otherwise the minimum-norm solution.
        """
        return _stationary(self.transitions[c])

    def initial_distribution(self, c: int) -> np.ndarray:
        """init_c = p(x_1 | chain c), shape (S,)."""
        if isinstance(self.init, np.ndarray):
            return self.init.copy()
        if self.init == "stationary":
            return self.stationary(c)
        return np.full(self.num_states, 1.0 / self.num_states)

    def transition_stack(self) -> np.ndarray:
        """All P_c stacked, shape (C, S, S)."""
        return np.stack(self.transitions)

    def initial_stack(self) -> np.ndarray:
        """All init_c stacked, shape (C, S)."""
        return np.stack([self.initial_distribution(c) for c in range(self.num_chains)])

    def marginals(self, seq_len: int) -> np.ndarray:
        """p_{c,t}(i) = p(x_t = i | c) = (init_c P_c^{t-1})(i) for t = 1..T, shape (C, T, S)."""
        out = np.empty((self.num_chains, seq_len, self.num_states))
        out[:, 0] = self.initial_stack()
        trans = self.transition_stack()
        for t in range(1, seq_len):
            out[:, t] = np.einsum("ci,cij->cj", out[:, t - 1], trans)
        return out


def paper_mixture(name: str, init: Union[str, Sequence[float]] = "uniform") -> MarkovMixture:
    """The paper's "transition1" or "transition2" mixture (two chains, weights 1/2)."""
    if name not in PAPER_TRANSITIONS:
        raise ValueError(f"name must be one of {sorted(PAPER_TRANSITIONS)}, got {name!r}")
    return MarkovMixture(transitions=list(PAPER_TRANSITIONS[name]), init=init)


def _check_transitions(transitions: Sequence[Any]) -> List[np.ndarray]:
    if len(transitions) == 0:
        raise ValueError("transitions must hold at least one chain, got none")
    mats = [_check_stochastic(p, f"transitions[{c}]") for c, p in enumerate(transitions)]
    sizes = [p.shape[0] for p in mats]
    if len(set(sizes)) > 1:
        raise ValueError(f"all chains must have the same number of states, got sizes {sizes}")
    return mats


def _check_stochastic(matrix: Any, name: str) -> np.ndarray:
    """A float64 copy of a row-stochastic square matrix, rows renormalised to sum exactly to 1."""
    try:
        p = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric S x S matrix ({err})") from None
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] == 0:
        raise ValueError(f"{name} must be a square S x S matrix, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} must be finite, got {p.tolist()}")
    if np.any(p < 0):
        raise ValueError(f"{name} must be non-negative, got min entry {p.min()}")
    sums = p.sum(axis=1)
    if np.any(np.abs(sums - 1.0) > STOCHASTIC_TOL):
        raise ValueError(
            f"rows of {name} must sum to 1 (within {STOCHASTIC_TOL}), got row sums {sums.tolist()}"
        )
    return p / sums[:, None]


def _check_probability_vector(vector: Any, size: int, name: str, positive: bool) -> np.ndarray:
    try:
        v = np.array(vector, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric vector ({err})") from None
    if v.shape != (size,):
        raise ValueError(f"{name} must have {size} entries, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite, got {v.tolist()}")
    if positive and np.any(v <= 0):
        raise ValueError(f"{name} must be positive, got {v.tolist()}")
    if np.any(v < 0):
        raise ValueError(f"{name} must be non-negative, got {v.tolist()}")
    if abs(v.sum() - 1.0) > STOCHASTIC_TOL:
        raise ValueError(f"{name} must sum to 1 (within {STOCHASTIC_TOL}), got sum {v.sum()}")
    return v / v.sum()


def _check_weights(weights: Optional[Sequence[float]], num_chains: int) -> np.ndarray:
    if weights is None:
        return np.full(num_chains, 1.0 / num_chains)
    return _check_probability_vector(weights, num_chains, "weights (one per chain)", True)


def _check_init(init: Union[str, Sequence[float]], num_states: int) -> Union[str, np.ndarray]:
    if isinstance(init, str):
        if init not in INIT_MODES:
            raise ValueError(
                f"init must be 'uniform', 'stationary' or a length-{num_states} probability "
                f"vector, got {init!r}"
            )
        return init
    return _check_probability_vector(init, num_states, "init", False)


def _check_seq_len(seq_len: int) -> int:
    if int(seq_len) != seq_len or seq_len < 2:
        raise ValueError(
            f"seq_len must be an integer >= 2 (T - 1 >= 1 scored tokens), got {seq_len}"
        )
    return int(seq_len)


def _stationary(p: np.ndarray) -> np.ndarray:
    """Solve [P^T - I; 1^T] pi = [0; 1] in the least-squares sense, shape (S,)."""
    s = p.shape[0]
    a = np.vstack([p.T - np.eye(s), np.ones((1, s))])  # (S + 1, S)
    b = np.zeros(s + 1)
    b[-1] = 1.0
    pi = np.clip(np.linalg.lstsq(a, b, rcond=None)[0], 0.0, None)
    return pi / pi.sum()


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def sample(
    mixture: MarkovMixture, num_sequences: int, seq_len: int, generator: torch.Generator
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw N sequences: c ~ w, x_1 ~ init_c, x_{t+1} ~ P_c[x_t, :].

    Deterministic given the generator's state. Returns tokens (N, T) and chain_ids (N,), both
    int64 (LongTensor).
    """
    if num_sequences < 1 or seq_len < 1:
        raise ValueError(
            f"num_sequences and seq_len must be >= 1, got {num_sequences} and {seq_len}"
        )
    s = mixture.num_states
    trans_cdf = torch.from_numpy(mixture.transition_stack()).cumsum(-1).reshape(-1, s)  # (C*S, S)
    init_cdf = torch.from_numpy(mixture.initial_stack()).cumsum(-1)  # (C, S)
    weights_cdf = torch.from_numpy(mixture.weights).cumsum(-1)  # (C,)
    chain_ids = _draw(weights_cdf.expand(num_sequences, -1), generator)  # (N,)
    tokens = torch.empty((num_sequences, seq_len), dtype=torch.long)
    tokens[:, 0] = _draw(init_cdf.index_select(0, chain_ids), generator)
    for t in range(1, seq_len):
        row_ids = chain_ids * s + tokens[:, t - 1]  # row (c, x_t) of trans_cdf, (N,)
        tokens[:, t] = _draw(trans_cdf.index_select(0, row_ids), generator)
    return tokens, chain_ids


def _draw(cdf: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One categorical draw per row of cdf (N, S): x = #{k : cdf_k <= u}, u ~ U[0, 1).

    A zero-probability state k has cdf_k = cdf_{k-1} and is never drawn; the clamp guards
    against a last cdf entry rounded below u.
    """
    u = torch.rand(cdf.shape[0], dtype=cdf.dtype, generator=generator)  # (N,)
    return (cdf <= u[:, None]).sum(dim=-1).clamp_(max=cdf.shape[-1] - 1)  # (N,)


# --------------------------------------------------------------------------------------------
# Forward recursion over sufficient statistics
# --------------------------------------------------------------------------------------------


def _forward(mixture: MarkovMixture, num_steps: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (keys, mass) for prefixes of length t = 1..num_steps grouped by their statistics.

    keys (K, 1 + S*S) int64: column 0 the current state x_t, then the transition counts n_ij of
    the prefix, row-major. mass (K, C):
    m_c(key) = w_c * sum over prefixes with that key of init_c(x_1) prod_ij P_c[i, j]^{n_ij}.
    The key also fixes x_1: along a path, out_k - in_k = [x_1 = k] - [x_t = k] for every state k,
    so x_1 is the state with one more exit than entry (x_t itself when all balance). A prefix's
    likelihood under c therefore depends only on its key, even when the chains start from
    different distributions, and p(c | x_1..t) = m_c(key) / sum_c' m_c'(key).
    """
    s = mixture.num_states
    trans = mixture.transition_stack()  # (C, S, S)
    keys = np.zeros((s, 1 + s * s), dtype=np.int64)
    keys[:, 0] = np.arange(s)
    mass = (mixture.weights[:, None] * mixture.initial_stack()).T  # (S, C)
    keys, mass = _prune(keys, mass)
    yield keys, mass
    for _ in range(num_steps - 1):
        keys, mass = _advance(keys, mass, trans)
        yield keys, mass


def _advance(
    keys: np.ndarray, mass: np.ndarray, trans: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Extend every prefix by each next state j: m_c(key + e_ij) += m_c(key) P_c[i, j]."""
    s = trans.shape[1]
    cur = keys[:, 0]  # (K,)
    rows = np.arange(len(keys))
    new_keys, new_mass = [], []
    for j in range(s):
        k = keys.copy()
        k[:, 0] = j
        k[rows, 1 + cur * s + j] += 1
        new_keys.append(k)
        new_mass.append(mass * trans[:, cur, j].T)  # (K, C)
    return _merge(*_prune(np.concatenate(new_keys), np.concatenate(new_mass)))


def _prune(keys: np.ndarray, mass: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Drop keys of probability exactly zero under every chain."""
    keep = mass.sum(axis=1) > 0
    return keys[keep], mass[keep]


def _merge(keys: np.ndarray, mass: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sum the masses of equal keys."""
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    merged = np.zeros((len(unique), mass.shape[1]))
    np.add.at(merged, inverse.ravel(), mass)
    return unique, merged


def _conditional_entropy_sum(joint: np.ndarray) -> float:
    """-sum_{k,j} m(k, j) log(m(k, j) / m(k)), m(k) = sum_j m(k, j), for joint (K, S).

    0 log 0 = 0: next states of probability zero contribute nothing.
    """
    total = joint.sum(axis=1, keepdims=True)  # (K, 1)
    ratio = np.where(joint > 0, joint / np.where(total > 0, total, 1.0), 1.0)
    return float(-(joint * np.log(ratio)).sum())


def _mle_position_losses(mixture: MarkovMixture, num_positions: int) -> np.ndarray:
    """E[-log p(x_{t+1} | x_1..t)] under the Bayes predictive for t = 1..num_positions, (t_max,).

    With m(key, j) = sum_c m_c(key) P_c[x_t, j], the term is -sum_key sum_j m(key, j)
    log(m(key, j) / m(key)): every prefix with the same key has the same predictive.
    """
    trans = mixture.transition_stack()  # (C, S, S)
    losses = []
    for keys, mass in _forward(mixture, num_positions):
        joint = np.einsum("kc,ckj->kj", mass, trans[:, keys[:, 0], :])  # (K, S)
        losses.append(_conditional_entropy_sum(joint))
    return np.array(losses)


def _final_counts(mixture: MarkovMixture, seq_len: int) -> Tuple[np.ndarray, np.ndarray]:
    """Distribution of the transition counts of whole sequences: counts (K, S, S), prob (K,).

    Keys that share counts but differ in the last state stay separate rows.
    """
    s = mixture.num_states
    for keys, mass in _forward(mixture, seq_len):
        pass
    return keys[:, 1:].reshape(-1, s, s), mass.sum(axis=1)


def _sequence_nll(counts: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """-log Q_k(x_2..T | x_1) = -sum_ij n_ij log Q_k[i, j], shape (K_keys, K); inf if impossible."""
    safe_log = np.log(np.where(matrices > 0, matrices, 1.0))  # (K, S, S)
    nll = -np.einsum("nij,kij->nk", counts, safe_log)  # (K_keys, K)
    impossible = np.einsum("nij,kij->nk", counts, (matrices == 0).astype(np.float64)) > 0
    return np.where(impossible, np.inf, nll)


# --------------------------------------------------------------------------------------------
# Reference losses
# --------------------------------------------------------------------------------------------


def mle_optimum(mixture: MarkovMixture, seq_len: int) -> float:
    """Best expected loss per scored token of a predictor that sees the whole prefix.

    (1 / (T-1)) sum_{t=1}^{T-1} E[-log p(x_{t+1} | x_1..t)], where
    p(j | x_1..t) = sum_c p(c | x_1..t) P_c[x_t, j] is the Bayes posterior predictive.
    Exact: a forward recursion over (x_t, n_ij). The counts sum to t - 1 and obey S - 1 balance
    constraints, so there are about T^(S^2 - S) keys: under a thousand for S = 2, T = 32 (tens
    of milliseconds), 50 000 for S = 3, T = 16 (about a second); large S or T gets slow.
    """
    seq_len = _check_seq_len(seq_len)
    return float(_mle_position_losses(mixture, seq_len - 1).mean())


def receptive_field_optimum(mixture: MarkovMixture, seq_len: int, window: int) -> float:
    """Best expected loss per scored token of a predictor that sees only the last `window` tokens.

    Position t uses x_{max(1, t-W+1)..t}: the full prefix while t <= W (the recursion of
    `mle_optimum`), then p(j | u) = sum_c m_c(u) P_c[u_W, j] / sum_c m_c(u) over all S^W windows
    u, with m_c(u) = w_c p_{c,t-W+1}(u_1) prod_k P_c[u_k, u_{k+1}]. Cost grows like S^W.
    window >= T - 1 gives `mle_optimum`.
    """
    seq_len = _check_seq_len(seq_len)
    if int(window) != window or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window}")
    near = min(int(window), seq_len - 1)
    losses = list(_mle_position_losses(mixture, near))
    losses += _window_losses(mixture, seq_len, int(window))
    return float(np.mean(losses))


def _window_losses(mixture: MarkovMixture, seq_len: int, window: int) -> List[float]:
    """E[-log p(x_{t+1} | x_{t-W+1..t})] for t = W+1..T-1 (empty when W >= T - 1)."""
    if window + 1 > seq_len - 1:
        return []
    trans = mixture.transition_stack()  # (C, S, S)
    windows = np.array(list(itertools.product(range(mixture.num_states), repeat=window)))  # (M, W)
    path = np.prod(trans[:, windows[:, :-1], windows[:, 1:]], axis=-1)  # (C, M)
    following = trans[:, windows[:, -1], :]  # (C, M, S)
    marg = mixture.marginals(seq_len)  # (C, T, S); index t-1 holds p_{c,t}
    losses = []
    for t in range(window + 1, seq_len):
        start = marg[:, t - window, :][:, windows[:, 0]]  # p_{c,t-W+1}(u_1), (C, M)
        mass = mixture.weights[:, None] * start * path  # (C, M)
        joint = np.einsum("cm,cmj->mj", mass, following)  # (M, S)
        losses.append(_conditional_entropy_sum(joint))
    return losses


def mcl_band(mixture: MarkovMixture, seq_len: int) -> Tuple[float, float]:
    """Loss per scored token of C perfect hypotheses (Q_c = P_c), as (lo, hi).

    lo = (1/(T-1)) E[min_c -log P_c(x_2..T | x_1)]: winner-takes-all, each sequence credited to
    the chain that explains it best (from the exact distribution of the counts n_ij).
    hi = (1/(T-1)) sum_c w_c E_c[-log P_c(x_2..T | x_1)]
       = (1/(T-1)) sum_c w_c sum_{t=1}^{T-1} sum_i p_{c,t}(i) H(P_c[i, :]): each sequence scored
    by its own generating chain. lo <= hi.
    """
    seq_len = _check_seq_len(seq_len)
    lo = exact_loss_of_predictors(mixture, seq_len, mixture.transition_stack(), "wta")
    return lo, own_chain_loss(mixture, seq_len)


def wta_entropy_bound(
    mixture: MarkovMixture, seq_len: int, num_hypotheses: Optional[int] = None
) -> float:
    """Lower bound on the WTA loss of ANY K predictors: mle_optimum - log(K) / (T-1), K default C.

    min_k -log q_k(x) >= -log sum_k q_k(x) = -log mean_k q_k(x) - log K, and the mean of the
    q_k is one predictor, whose expected loss is at least H(x_2..T | x_1) = (T-1) mle_optimum.
    The paper's reference lower ends of the band (0.5025, 0.5519 at T = 32, stationary starts)
    match this bound within 4e-4, not `mcl_band`'s lo (0.5081, 0.5532).
    """
    k = mixture.num_chains if num_hypotheses is None else int(num_hypotheses)
    if k < 1:
        raise ValueError(f"num_hypotheses must be >= 1, got {num_hypotheses}")
    return mle_optimum(mixture, seq_len) - float(np.log(k)) / (seq_len - 1)


def own_chain_loss(mixture: MarkovMixture, seq_len: int) -> float:
    """Loss per scored token of each sequence scored by its own generating chain (exact, cheap)."""
    trans = mixture.transition_stack()  # (C, S, S)
    safe_log = np.log(np.where(trans > 0, trans, 1.0))
    entropy = -(trans * safe_log).sum(axis=-1)  # H(P_c[i, :]), (C, S)
    visits = mixture.marginals(seq_len)[:, :-1, :].sum(axis=1)  # sum_{t<T} p_{c,t}(i), (C, S)
    return float(np.einsum("c,ci,ci->", mixture.weights, visits, entropy) / (seq_len - 1))


def exact_loss_of_predictors(
    mixture: MarkovMixture, seq_len: int, matrices: Sequence[Any], assignment: str = "wta"
) -> Union[float, List[float]]:
    """Expected loss per scored token of K fixed Markov predictors x_{t+1} ~ Q_k[x_t, :].

    "wta":  (1/(T-1)) E[min_k -log Q_k(x_2..T | x_1)], a float (with Q = the true chains this is
            `mcl_band`'s lo);
    "each": [(1/(T-1)) E[-log Q_k(x_2..T | x_1)] for each k], a list of K floats.
    -log Q_k(x_2..T | x_1) = -sum_ij n_ij log Q_k[i, j], so the expectation is a sum over the
    exact distribution of the final counts. A zero entry of Q_k that the data use gives inf.
    """
    seq_len = _check_seq_len(seq_len)
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
    if len(matrices) == 0:
        raise ValueError("matrices must hold at least one predictor, got none")
    q = np.stack([_check_stochastic(m, f"matrices[{k}]") for k, m in enumerate(matrices)])
    if q.shape[1] != mixture.num_states:
        s = mixture.num_states
        raise ValueError(f"matrices must be {s} x {s}, got {q.shape[1:]}")
    counts, prob = _final_counts(mixture, seq_len)  # (N, S, S), (N,)
    nll = _sequence_nll(counts.astype(np.float64), q)  # (N, K)
    if assignment == "wta":
        return float(prob @ nll.min(axis=1) / (seq_len - 1))
    return [float(v) for v in prob @ nll / (seq_len - 1)]


# --------------------------------------------------------------------------------------------
# Averaged matrices
# --------------------------------------------------------------------------------------------


def position_averaged_matrix(
    mixture: MarkovMixture, seq_len: int, chains: Optional[Sequence[int]] = None
) -> np.ndarray:
    """Perfect full-context predictor's next-state distribution averaged over t = 1..T-1 by x_t = i.

    By the tower property E[p(j | x_1..t) 1{x_t = i}] = sum_c w_c p_{c,t}(i) P_c[i, j], so
    A[i, :] = sum_c sum_t w_c p_{c,t}(i) P_c[i, :] / sum_c sum_t w_c p_{c,t}(i), shape (S, S).
    `chains` restricts the sums to those chains (chains=[c] gives P_c). A state never visited
    gets a row of NaN.
    """
    seq_len = _check_seq_len(seq_len)
    idx = _check_chain_subset(mixture, chains)
    visits = mixture.marginals(seq_len)[idx, :-1, :].sum(axis=1)  # (C', S)
    trans = mixture.transition_stack()[idx]  # (C', S, S)
    return _visit_weighted_average(mixture.weights[idx, None] * visits, trans)


def stationary_average_matrix(mixture: MarkovMixture) -> np.ndarray:
    """Pbar[i, :] = sum_c w_c pi_c(i) P_c[i, :] / sum_c w_c pi_c(i), shape (S, S).

    Equals `position_averaged_matrix` when every chain starts from its stationary distribution.
    """
    pis = np.stack([mixture.stationary(c) for c in range(mixture.num_chains)])  # (C, S)
    return _visit_weighted_average(mixture.weights[:, None] * pis, mixture.transition_stack())


def _visit_weighted_average(visits: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """sum_c v_c(i) P_c[i, :] / sum_c v_c(i) for visits v (C, S) and trans (C, S, S)."""
    num = np.einsum("ci,cij->ij", visits, trans)  # (S, S)
    den = visits.sum(axis=0)[:, None]  # (S, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _check_chain_subset(mixture: MarkovMixture, chains: Optional[Sequence[int]]) -> List[int]:
    if chains is None:
        return list(range(mixture.num_chains))
    idx = [int(c) for c in chains]
    if not idx or any(c < 0 or c >= mixture.num_chains for c in idx):
        raise ValueError(
            f"chains must be a non-empty list of indices in [0, {mixture.num_chains}), got {chains}"
        )
    return idx


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def theory_summary(
    mixture: MarkovMixture, seq_len: int, window: Optional[int] = None
) -> Dict[str, Any]:
    """All reference lines of the toy plot as JSON-serialisable floats and nested lists.

    Keys: lines ("exact"), mle_optimum, mle_receptive_field_optimum (None without a window), receptive_field,
    mcl_band [lo, hi], wta_entropy_bound (mle_optimum - log C / (T-1)), average (the
    position-averaged matrix), stationary_average (Pbar) and chains (the P_c).
    """
    seq_len = _check_seq_len(seq_len)
    mle = mle_optimum(mixture, seq_len)
    lo, hi = mcl_band(mixture, seq_len)
    rf = None if window is None else receptive_field_optimum(mixture, seq_len, window)
    return {
        "lines": "exact",
        "mle_optimum": mle,
        "mle_receptive_field_optimum": rf,
        "receptive_field": None if window is None else int(window),
        "mcl_band": [lo, hi],
        "wta_entropy_bound": mle - float(np.log(mixture.num_chains)) / (seq_len - 1),
        "average": position_averaged_matrix(mixture, seq_len).tolist(),
        "stationary_average": stationary_average_matrix(mixture).tolist(),
        "chains": [p.tolist() for p in mixture.transitions],
    }
