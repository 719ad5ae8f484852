"""A small ResNet, the Eureka study's baseline that learns the two-step task without a plateau.

3×3 stride-1 stem (no max-pool, as the reduced-scale proposal says for small images), then one stage of
``blocks_per_stage`` BasicBlocks per entry of ``widths``, each stage after the first halving the
resolution; global average pool and a linear head. ``widths=(64, 128, 256, 512)`` with two blocks per
stage is ResNet-18's body; one block per stage is the study's ``resnet9``.

Taps for the probes: ``blocks.{s}.hook_resid_post``, the globally pooled output of stage s, as one token (B, 1, C).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .hooks import resid_post


@dataclass
class CNNConfig:
    channels: int = 3
    n_classes: int = 10
    widths: tuple[int, ...] = field(default=(64, 128, 256, 512))
    blocks_per_stage: int = 1

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        if not self.widths or min(self.widths) < 1 or self.blocks_per_stage < 1:
            raise ValueError("a CNN needs at least one stage of positive width and one block per stage")

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, cfg: CNNConfig):
        super().__init__()
        self.config = cfg
        w0 = cfg.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(cfg.channels, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU())
        stages, c_in = [], w0
        for s, width in enumerate(cfg.widths):
            blocks = [BasicBlock(c_in if b == 0 else width, width, 2 if (s > 0 and b == 0) else 1)
                      for b in range(cfg.blocks_per_stage)]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(c_in, cfg.n_classes)

    def tap_names(self) -> list[str]:
        return [resid_post(s) for s in range(len(self.stages))]

    def set_progress(self, fraction: float) -> None:
        """No temperature to anneal: here so that the recipe treats every model alike."""

    def forward(self, images: torch.Tensor, capture: Iterable[str] = ()):
        capture = set(capture)
        acts: dict[str, torch.Tensor] = {}
        x = self.stem(images)
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if resid_post(s) in capture:
                acts[resid_post(s)] = x.mean(dim=(2, 3))[:, None]
        logits = self.head(x.mean(dim=(2, 3)))
        return (logits, acts) if capture else logits
