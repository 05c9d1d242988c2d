"""The winner-takes-all loss family and the per-sequence NLL, against numbers computed by hand.

The (K=3, B=3) matrix used throughout:

    L = [[1.0, 2.0, 0.5],
         [1.5, 0.2, 0.5],
         [3.0, 1.0, 0.4]]

has column minima 1.0 (k=0), 0.2 (k=1), 0.4 (k=2), so the winners are the diagonal.
"""

import math

import pytest
import torch

from loramcl.config import MCLConfig
from loramcl.losses import mcl_loss, mcl_weights, sequence_nll, win_counts, win_fractions

L_ROWS = [[1.0, 2.0, 0.5], [1.5, 0.2, 0.5], [3.0, 1.0, 0.4]]
K, B = 3, 3


def loss_matrix(rows=L_ROWS) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32, requires_grad=True)


def grad_of(loss: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, losses)
    return grad


# ---------------------------------------------------------------------------------------- wta
def test_wta_value_and_gradient():
    L = loss_matrix()
    out = mcl_loss(L, MCLConfig(num_hypotheses=K, mode="wta"))
    assert out.loss.item() == pytest.approx((1.0 + 0.2 + 0.4) / 3, abs=1e-7)
    assert out.winners.tolist() == [0, 1, 2]
    expected = torch.zeros(K, B)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = 1 / B  # only each column's winner
    torch.testing.assert_close(grad_of(out.loss, L), expected)
    torch.testing.assert_close(out.weights, torch.eye(3))


def test_wta_ties_go_to_the_lowest_index():
    # column 0: hypotheses 0 and 1 tie at 0.7; column 1: hypotheses 1 and 2 tie at 0.3
    L = loss_matrix([[0.7, 1.0], [0.7, 0.3], [0.9, 0.3]])
    out = mcl_loss(L, MCLConfig(num_hypotheses=3, mode="wta"))
    assert out.winners.tolist() == [0, 1]
    assert out.loss.item() == pytest.approx((0.7 + 0.3) / 2, abs=1e-7)
    expected = torch.tensor([[0.5, 0.0], [0.0, 0.5], [0.0, 0.0]])
    torch.testing.assert_close(grad_of(out.loss, L), expected)


# -------------------------------------------------------------------------------- relaxed-wta
def test_relaxed_wta_weights_value_and_gradient():
    eps = 0.1
    L = loss_matrix()
    out = mcl_loss(L, MCLConfig(num_hypotheses=K, mode="relaxed-wta", epsilon=eps))
    w_win, w_lose = 1 - eps, eps / (K - 1)  # 0.9 and 0.05
    expected_w = torch.full((K, B), w_lose)
    expected_w[0, 0] = expected_w[1, 1] = expected_w[2, 2] = w_win
    torch.testing.assert_close(out.weights, expected_w)
    # by hand: col0 0.9*1.0 + 0.05*(1.5+3.0) = 1.125, col1 0.9*0.2 + 0.05*(2.0+1.0) = 0.33,
    #          col2 0.9*0.4 + 0.05*(0.5+0.5) = 0.41
    assert out.loss.item() == pytest.approx((1.125 + 0.33 + 0.41) / 3, abs=1e-6)
    torch.testing.assert_close(grad_of(out.loss, L), expected_w / B)  # 0.3 and 0.01667


def test_relaxed_wta_with_zero_epsilon_is_wta():
    L = loss_matrix()
    out = mcl_loss(L, MCLConfig(num_hypotheses=K, mode="relaxed-wta", epsilon=0.0))
    assert out.loss.item() == pytest.approx(1.6 / 3, abs=1e-7)


# ------------------------------------------------------------------------------- annealed-wta
def softmax_by_hand(column, tau):
    exps = [math.exp(-v / tau) for v in column]
    return [e / sum(exps) for e in exps]


def test_annealed_wta_value_and_detached_weights():
    tau = 0.5
    L = loss_matrix()
    w = mcl_weights(L, "annealed-wta", temperature=tau)
    columns = list(zip(*L_ROWS))
    expected_w = torch.tensor([softmax_by_hand(c, tau) for c in columns], dtype=torch.float32).T  # (K, B)
    torch.testing.assert_close(w, expected_w)
    assert w[:, 0].tolist() == pytest.approx([0.721399, 0.265388, 0.013213], abs=1e-6)  # e^-2, e^-3, e^-6

    out = mcl_loss(L, MCLConfig(num_hypotheses=K, mode="annealed-wta", temperature_init=tau), step=0)
    assert out.temperature == tau
    value = sum(expected_w[k, i].item() * L_ROWS[k][i] for k in range(K) for i in range(B)) / B
    assert out.loss.item() == pytest.approx(value, abs=1e-6)
    # stop-gradient: dloss/dL = w / B exactly (with gradient through w it would differ)
    torch.testing.assert_close(grad_of(out.loss, L), expected_w / B)
    assert not out.weights.requires_grad


def test_annealed_wta_tiny_temperature_equals_wta():
    L = loss_matrix()
    w = mcl_weights(L, "annealed-wta", temperature=1e-30)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, torch.eye(3))
    value = (w * L).sum(0).mean()
    assert value.item() == pytest.approx(1.6 / 3, abs=1e-7)
    assert torch.isfinite(grad_of(value, L)).all()


def test_annealed_wta_huge_losses_are_safe():
    L = torch.tensor([[1e30, 3e38, 5.0], [2e30, 1e38, 5.0]], requires_grad=True)
    w = mcl_weights(L, "annealed-wta", temperature=1.0)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]))
    w_tiny = mcl_weights(L, "annealed-wta", temperature=1e-30)
    torch.testing.assert_close(w_tiny, w)


def test_annealed_wta_falls_back_to_wta_below_tau_min():
    cfg = MCLConfig(num_hypotheses=K, mode="annealed-wta", temperature_init=1.0, temperature_decay=0.5,
                    temperature_min=0.1)
    L = loss_matrix()
    soft = mcl_loss(L, cfg, step=0)  # tau = 1
    assert soft.temperature == 1.0
    assert soft.weights[1, 0].item() == pytest.approx(math.exp(-1.5) / sum(math.exp(-v) for v in (1.0, 1.5, 3.0)))
    hard = mcl_loss(L, cfg, step=4)  # tau = 0.0625 <= 0.1
    assert hard.temperature is None
    torch.testing.assert_close(hard.weights, torch.eye(3))
    assert hard.loss.item() == pytest.approx(1.6 / 3, abs=1e-7)
    per_epoch = MCLConfig(num_hypotheses=K, mode="annealed-wta", temperature_decay=0.5, temperature_min=0.1,
                          schedule_unit="epoch")
    assert mcl_loss(L, per_epoch, step=100, epoch=1).temperature == 0.5
    assert mcl_loss(L, per_epoch, step=0, epoch=4).temperature is None


# --------------------------------------------------------------------------------- random-wta
def test_random_wta_picks_the_generator_indices():
    L = loss_matrix()
    cfg = MCLConfig(num_hypotheses=K, mode="random-wta")
    out = mcl_loss(L, cfg, generator=torch.Generator().manual_seed(1234))
    picks = torch.randint(K, (B,), generator=torch.Generator().manual_seed(1234))
    expected = torch.zeros(K, B)
    expected[picks, torch.arange(B)] = 1.0
    torch.testing.assert_close(out.weights, expected)
    assert out.loss.item() == pytest.approx(sum(L_ROWS[k][i] for i, k in enumerate(picks.tolist())) / B, abs=1e-6)
    torch.testing.assert_close(grad_of(out.loss, L), expected / B)  # only the picked entries
    assert out.winners.tolist() == [0, 1, 2]  # winners are still reported as argmin


def test_random_wta_is_uniform_and_ignores_the_losses():
    n = 3000
    L = torch.rand(K, n)
    w = mcl_weights(L, "random-wta", generator=torch.Generator().manual_seed(0))
    assert torch.all(w.sum(0) == 1)
    share = w.sum(1) / n
    assert torch.all((share - 1 / K).abs() < 0.04), share
    agrees_with_wta = (w.argmax(0) == L.argmin(0)).float().mean().item()
    assert abs(agrees_with_wta - 1 / K) < 0.04  # a random pick, not the winner


# ------------------------------------------------------------------------- K = 1, evaluation
@pytest.mark.parametrize("mode", ["wta", "relaxed-wta", "annealed-wta", "random-wta"])
def test_single_hypothesis_is_plain_mean_nll(mode):
    L = loss_matrix([[1.0, 2.0, 0.6]])
    cfg = MCLConfig(num_hypotheses=1, mode=mode, epsilon=0.3)
    out = mcl_loss(L, cfg, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.weights).all()  # relaxed must not divide by K - 1 = 0
    assert out.loss.item() == pytest.approx(1.2, abs=1e-7)
    torch.testing.assert_close(grad_of(out.loss, L), torch.full((1, 3), 1 / 3))


@pytest.mark.parametrize("mode", ["relaxed-wta", "annealed-wta", "random-wta"])
def test_evaluation_always_uses_wta(mode):
    L = loss_matrix()
    cfg = MCLConfig(num_hypotheses=K, mode=mode, epsilon=0.3)
    train = mcl_loss(L, cfg, training=True, generator=torch.Generator().manual_seed(0))
    assert train.loss.item() != pytest.approx(1.6 / 3, abs=1e-4)  # the mode does something in training
    out = mcl_loss(L, cfg, training=False)
    assert out.loss.item() == pytest.approx(1.6 / 3, abs=1e-7)
    torch.testing.assert_close(out.weights, torch.eye(3))


def test_valid_excludes_samples_from_the_mean():
    L = loss_matrix()
    out = mcl_loss(L, MCLConfig(num_hypotheses=K), valid=torch.tensor([True, False, True]))
    assert out.loss.item() == pytest.approx((1.0 + 0.4) / 2, abs=1e-7)
    expected = torch.zeros(K, B)
    expected[0, 0] = expected[2, 2] = 0.5
    torch.testing.assert_close(grad_of(out.loss, L), expected)


# ------------------------------------------------------------------------------ sequence_nll
def nll_by_hand(logits, labels, mask):
    """Mean -log p(label_t | < t) over positions t >= 1 with label != -100 and mask == 1."""
    results, counts = [], []
    for n in range(labels.shape[0]):
        total, count = 0.0, 0
        for t in range(1, labels.shape[1]):
            y = int(labels[n, t])
            if y == -100 or int(mask[n, t]) == 0:
                continue
            row = [float(v) for v in logits[n, t - 1]]
            log_z = math.log(sum(math.exp(v) for v in row))
            total += log_z - row[y]
            count += 1
        results.append(total / count if count else 0.0)
        counts.append(count)
    return results, counts


def test_sequence_nll_against_a_token_loop():
    g = torch.Generator().manual_seed(0)
    N, S, V = 4, 7, 9
    logits = torch.randn(N, S, V, generator=g) * 2
    labels = torch.randint(0, V, (N, S), generator=g)
    mask = torch.ones(N, S, dtype=torch.long)
    labels[0, :3] = -100  # row 0: prompt masked in the labels
    mask[1, :3] = 0  # row 1: left padding whose labels are real ids (pad id 0): must not be scored
    labels[1, :3] = 0
    labels[1, 3] = -100
    labels[2, 4] = -100  # row 2: a label -100 in the middle with attention_mask 1: not scored
    labels[3, :] = -100  # row 3: nothing supervised
    mask[3, :2] = 0

    nll, count = sequence_nll(logits, labels, mask)
    expected, expected_count = nll_by_hand(logits, labels, mask)
    assert count.tolist() == expected_count == [4, 3, 5, 0]
    torch.testing.assert_close(nll, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert nll.dtype == torch.float32

    # without the attention mask the padded positions of row 1 would count
    nll_no_mask, count_no_mask = sequence_nll(logits, labels)
    assert count_no_mask[1].item() == 5
    assert nll_no_mask[1].item() != pytest.approx(nll[1].item(), abs=1e-4)

    # a (K=2, B=4) matrix from two "hypotheses": the empty row is excluded from the mean via valid
    L = torch.stack([nll, nll + 1.0])
    out = mcl_loss(L, MCLConfig(num_hypotheses=2), valid=count > 0)
    assert out.loss.item() == pytest.approx(sum(expected[:3]) / 3, abs=1e-5)


def test_sequence_nll_half_precision_logits_are_scored_in_float32():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 6, generator=g)
    labels = torch.randint(0, 6, (2, 5), generator=g)
    full, _ = sequence_nll(logits, labels)
    half, _ = sequence_nll(logits.bfloat16(), labels)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.05, rtol=0.02)


# --------------------------------------------------------------------------------- win rates
def test_win_rates_by_hand():
    winners = torch.tensor([0, 2, 2, 1, 2])
    assert win_counts(winners, 4).tolist() == [1, 1, 3, 0]
    torch.testing.assert_close(win_fractions(winners, 4), torch.tensor([0.2, 0.2, 0.6, 0.0]))
    assert win_fractions(torch.tensor([], dtype=torch.long), 2).tolist() == [0.0, 0.0]
