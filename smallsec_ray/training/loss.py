"""The distillation loss: the student learns from noisy hard labels and the teacher's distribution."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(logits: torch.Tensor, hard_labels: torch.Tensor, teacher_probs: torch.Tensor | None,
                      alpha: float, temperature: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton-style distillation: alpha * CE(hard label) + (1 - alpha) * T^2 * KL(teacher_T || student_T).

    How rows mix (row i's loss, then a mean weighted by `weights` over rows that carry any signal):
    * hard label and teacher probs: alpha * CE_i + (1 - alpha) * T^2 * KL_i;
    * no hard label (-1), teacher probs: T^2 * KL_i, the soft term at full weight;
    * hard label, no teacher probs (`teacher_probs` None): CE_i at full weight;
    * neither: left out of the mean. A batch with no signal at all gives 0 (still attached to the graph,
      so every distributed worker runs the same backward pass).

    logits [N, C] and hard_labels [N] (long, -1 = none) of the student; teacher_probs [N, C] at
    temperature 1; the teacher at temperature T is softmax(log(p) / T), with zero probabilities floored
    at the smallest normal float so that their logarithm stays finite. T^2 keeps the soft term's gradient
    scale independent of T. CE is taken at temperature 1.
    """
    logits = logits.float()
    labelled = (hard_labels >= 0).float()
    ce = F.cross_entropy(logits, hard_labels.clamp(min=0), reduction="none")
    if teacher_probs is None:
        per_row, has_signal = labelled * ce, labelled
    else:
        tiny = torch.finfo(torch.float32).tiny
        teacher_log_t = torch.log_softmax(teacher_probs.float().clamp(min=tiny).log() / temperature, dim=-1)
        student_log_t = torch.log_softmax(logits / temperature, dim=-1)
        kl = F.kl_div(student_log_t, teacher_log_t, reduction="none", log_target=True).sum(dim=-1)
        per_row = alpha * labelled * ce + (1 - alpha * labelled) * temperature**2 * kl
        has_signal = torch.ones_like(labelled)
    row_weights = torch.ones_like(labelled) if weights is None else weights.float()
    # With no signal the numerator is 0 too; the floor only avoids 0 / 0.
    return (row_weights * per_row).sum() / (row_weights * has_signal).sum().clamp(min=1e-12)
