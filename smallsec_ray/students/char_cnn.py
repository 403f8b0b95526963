"""eXpose-style character CNN (Saxe & Berlin 2017) for short strings: command lines and URLs.

Byte embedding -> parallel 1-D convolutions of widths 2..5 (character n-gram detectors) -> ReLU ->
max over time -> dense layers (Linear, LayerNorm, ReLU, dropout) -> logits.

Max-pooling (the paper sums) asks "does this n-gram occur anywhere?", which does not grow with the
string's length, so a long benign command line cannot outvote one malicious fragment. Windows that
start on padding are masked out of the max, so a string that fits scores the same whatever
`max_length` it is padded to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from smallsec_ray.students.encoders import CHAR_VOCAB_SIZE, CharEncoder


@dataclass(frozen=True)
class CharCNNConfig:
    max_length: int = 256
    embed_dim: int = 32
    filters: int = 256  # per convolution width
    widths: tuple[int, ...] = (2, 3, 4, 5)
    hidden: tuple[int, ...] = (1024, 1024, 1024)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.max_length < max(self.widths):
            raise ValueError(f"char_cnn: max_length {self.max_length} is shorter than the widest "
                             f"convolution ({max(self.widths)}); give max_length >= {max(self.widths)}")


PRESETS = {
    "default": CharCNNConfig(),
    "small": CharCNNConfig(embed_dim=24, filters=64, hidden=(256, 256)),
    "tiny": CharCNNConfig(max_length=64, embed_dim=8, filters=8, hidden=(16,)),
}


class CharCNN(nn.Module):
    name = "char_cnn"

    def __init__(self, config: CharCNNConfig, num_classes: int) -> None:
        super().__init__()
        self.config, self.num_classes = config, num_classes
        self.embed = nn.Embedding(CHAR_VOCAB_SIZE, config.embed_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(config.embed_dim, config.filters, w) for w in config.widths)
        self.head = dense_stack(config.filters * len(config.widths), config.hidden, num_classes, config.dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        present = (ids != 0).unsqueeze(1)  # [N, 1, L]
        x = self.embed(ids).transpose(1, 2)  # [N, E, L]
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))  # [N, F, L - w + 1]; ReLU >= 0, so zeroing masks the max
            pooled.append((h * present[..., : h.shape[-1]]).amax(dim=-1))
        return self.head(torch.cat(pooled, dim=-1))

    def encoder(self) -> CharEncoder:
        return CharEncoder(self.config.max_length)

    def flops_per_event(self) -> int:
        """Multiply-adds x 2 of the convolutions and dense layers (embedding, pooling and norms are
        memory-bound and left out)."""
        c = self.config
        conv = sum((c.max_length - w + 1) * w * c.embed_dim * c.filters for w in c.widths)
        return 2 * (conv + dense_macs(c.filters * len(c.widths), c.hidden, self.num_classes))


def dense_stack(width: int, hidden: tuple[int, ...], num_classes: int, dropout: float) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU -> Dropout per hidden size, then a Linear to the logits."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.LayerNorm(size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def dense_macs(width: int, hidden: tuple[int, ...], num_classes: int) -> int:
    sizes = (width, *hidden, num_classes)
    return sum(a * b for a, b in zip(sizes, sizes[1:], strict=False))
