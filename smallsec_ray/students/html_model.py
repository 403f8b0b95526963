"""Hierarchical HTML model after Saxe et al. 2018 (the "inspector"/"master" model for web content).

A page is a sequence of hashed tokens. It is cut into 1, 2, 4, 8 and 16 equal chunks *of its own
length* (so "the top of the page" means the same for short and long pages). Each chunk is summarised by
the mean embedding of its tokens (a learned bag of words), and one small shared network, the inspector,
maps every chunk summary to features. Per scale the features are max-pooled over chunks ("does any
part of the page look like this?"); the scales are concatenated and a dense master network gives logits.

Chunks of a coarse scale are unions of chunks of the finest one (floor(t*s/n) = floor(floor(t*S/n)/(S/s))
when s divides S), so token sums are computed once, at the finest scale, and added up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from smallsec_ray.students.char_cnn import dense_macs, dense_stack
from smallsec_ray.students.encoders import HtmlTokenEncoder


@dataclass(frozen=True)
class HtmlHierConfig:
    max_tokens: int = 2048
    hash_buckets: int = 32768
    embed_dim: int = 64
    inspector: tuple[int, ...] = (256, 256)
    master: tuple[int, ...] = (512, 512)
    scales: tuple[int, ...] = (1, 2, 4, 8, 16)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not self.inspector:
            raise ValueError("html_hier: the inspector needs at least one layer size")
        finest = max(self.scales)
        if any(finest % s for s in self.scales):
            raise ValueError(f"html_hier: every scale must divide the finest one ({finest}), got {self.scales}")


PRESETS = {
    "default": HtmlHierConfig(),
    "small": HtmlHierConfig(max_tokens=1024, hash_buckets=8192, embed_dim=16, inspector=(64, 64), master=(128,)),
    "tiny": HtmlHierConfig(max_tokens=128, hash_buckets=512, embed_dim=8, inspector=(16,), master=(16,)),
}


class HtmlHierModel(nn.Module):
    name = "html_hier"

    def __init__(self, config: HtmlHierConfig, num_classes: int) -> None:
        super().__init__()
        self.config, self.num_classes = config, num_classes
        self.embed = nn.Embedding(config.hash_buckets, config.embed_dim, padding_idx=0)
        layers: list[nn.Module] = []
        width = config.embed_dim
        for size in config.inspector:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.inspector = nn.Sequential(*layers)
        self.master = dense_stack(width * len(config.scales), config.master, num_classes, config.dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        finest = max(self.config.scales)
        present = ids != 0
        length = present.sum(dim=1, keepdim=True).clamp(min=1)  # tokens are left-aligned
        position = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        chunk = torch.where(present, position * finest // length, finest)  # padding -> no chunk
        member = (chunk.unsqueeze(-1) == torch.arange(finest, device=ids.device)).to(self.embed.weight.dtype)
        sums = member.transpose(1, 2) @ self.embed(ids)  # [N, finest, D]
        counts = member.sum(dim=1)  # [N, finest]

        summaries, filled = [], []
        for scale in self.config.scales:
            group = finest // scale
            summaries.append(sums.reshape(sums.shape[0], scale, group, -1).sum(dim=2))
            filled.append(counts.reshape(counts.shape[0], scale, group).sum(dim=2))
        chunk_sums, chunk_counts = torch.cat(summaries, dim=1), torch.cat(filled, dim=1)
        # Empty chunks (pages shorter than 16 tokens) give zeros, neutral for a max over ReLU outputs.
        features = self.inspector(chunk_sums / chunk_counts.clamp(min=1).unsqueeze(-1))
        features = features * (chunk_counts > 0).unsqueeze(-1)
        per_scale = [part.amax(dim=1) for part in features.split(list(self.config.scales), dim=1)]
        return self.master(torch.cat(per_scale, dim=-1))

    def encoder(self) -> HtmlTokenEncoder:
        return HtmlTokenEncoder(self.config.max_tokens, self.config.hash_buckets)

    def flops_per_event(self) -> int:
        """Multiply-adds x 2 of the chunk-membership matmul, the inspector on every chunk and the master
        (embedding lookup, pooling and norms are memory-bound and left out)."""
        c = self.config
        membership = c.max_tokens * max(c.scales) * c.embed_dim
        inspector = sum(c.scales) * dense_macs(c.embed_dim, c.inspector[:-1], c.inspector[-1])
        master = dense_macs(c.inspector[-1] * len(c.scales), c.master, self.num_classes)
        return 2 * (membership + inspector + master)
