"""The distillation loss against values worked out by hand, and its edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from smallsec_ray.training.loss import distillation_loss

LOGITS = [[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
TEACHER = [[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]]  # the last row has a zero probability


def softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def cross_entropy(logits: list[float], label: int) -> float:
    return -math.log(softmax(logits)[label])


def soft_term(logits: list[float], teacher: list[float], t: float) -> float:
    """T^2 * KL(teacher_T || student_T), teacher_T = p^(1/T) renormalised; 0 * log 0 = 0."""
    powered = [p ** (1 / t) for p in teacher]
    teacher_t = [p / sum(powered) for p in powered]
    student_t = softmax([x / t for x in logits])
    return t * t * sum(p * math.log(p / q) for p, q in zip(teacher_t, student_t, strict=True) if p > 0)


def loss(labels: list[int], teacher: list[list[float]] | None = TEACHER, alpha: float = 0.3,
         temperature: float = 2.0, weights: list[float] | None = None,
         logits: torch.Tensor | None = None) -> torch.Tensor:
    return distillation_loss(torch.tensor(LOGITS) if logits is None else logits, torch.tensor(labels),
                             None if teacher is None else torch.tensor(teacher), alpha, temperature,
                             None if weights is None else torch.tensor(weights))


def test_mixed_rows_match_hand_computation():
    # Row 0 labelled 0, row 1 unlabelled (soft term at full weight), row 2 labelled 1.
    rows = [0.3 * cross_entropy(LOGITS[0], 0) + 0.7 * soft_term(LOGITS[0], TEACHER[0], 2.0),
            soft_term(LOGITS[1], TEACHER[1], 2.0),
            0.3 * cross_entropy(LOGITS[2], 1) + 0.7 * soft_term(LOGITS[2], TEACHER[2], 2.0)]
    assert loss([0, -1, 1]).item() == pytest.approx(sum(rows) / 3, rel=1e-5)


def test_row_weights_give_a_weighted_mean():
    rows = [0.3 * cross_entropy(LOGITS[i], label) + 0.7 * soft_term(LOGITS[i], TEACHER[i], 2.0)
            for i, label in enumerate([0, 1, 1])]
    expected = (2.0 * rows[0] + 0.0 * rows[1] + 1.0 * rows[2]) / 3.0
    assert loss([0, 1, 1], weights=[2.0, 0.0, 1.0]).item() == pytest.approx(expected, rel=1e-5)


def test_alpha_one_is_cross_entropy_only():
    expected = F.cross_entropy(torch.tensor(LOGITS), torch.tensor([0, 1, 1]))
    assert loss([0, 1, 1], alpha=1.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_without_teacher_probs_labelled_rows_get_full_cross_entropy():
    expected = (cross_entropy(LOGITS[0], 0) + cross_entropy(LOGITS[2], 1)) / 2
    assert loss([0, -1, 1], teacher=None, alpha=0.3).item() == pytest.approx(expected, rel=1e-5)


def test_all_rows_unlabelled_use_the_soft_term_whatever_alpha():
    expected = sum(soft_term(LOGITS[i], TEACHER[i], 3.0) for i in range(3)) / 3
    for alpha in (0.0, 0.5, 1.0):
        assert loss([-1, -1, -1], alpha=alpha, temperature=3.0).item() == pytest.approx(expected, rel=1e-5)


def test_no_signal_gives_zero_that_still_backpropagates():
    logits = torch.tensor(LOGITS, requires_grad=True)
    value = loss([-1, -1, -1], teacher=None, logits=logits)
    value.backward()
    assert value.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_student_equal_to_teacher_has_zero_soft_loss_and_finite_gradients():
    logits = torch.tensor([[3.0, -1.0], [0.5, 0.5]], requires_grad=True)
    teacher = torch.softmax(logits.detach(), dim=-1).tolist()
    value = loss([-1, -1], teacher=teacher, temperature=1.0, logits=logits)
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    zero_teacher = loss([-1, -1], teacher=[[1.0, 0.0], [0.0, 1.0]], logits=logits)
    zero_teacher.backward()
    assert torch.isfinite(zero_teacher) and torch.isfinite(logits.grad).all()
