"""`SmallCNN`, the features extractor for images too small for SB3's NatureCNN.

Its own module because it imports torch: `ldm_autorl.candidates` imports it only when a
candidate is built on such images (or a pickle names it), so listing candidates stays light.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class SmallCNN(BaseFeaturesExtractor):
    """Three 2x2 convolutions (16, 32, 64 channels) and a linear layer, for tiny images.

    SB3's NatureCNN needs 36 pixels; MiniGrid's 7x7x3 grid encoding gets this instead (the
    extractor Farama's MiniGrid docs recommend). Accepts channels-first (as SB3's
    `VecTransposeImage` delivers) or channels-last, and pools anything larger than 8x8
    after the convolutions so the linear layer stays small.
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 128) -> None:
        super().__init__(observation_space, features_dim)
        shape = tuple(observation_space.shape)
        self.channels_last = int(np.argmin(shape)) != 0
        channels = shape[-1] if self.channels_last else shape[0]
        height, width = (shape[0], shape[1]) if self.channels_last else (shape[1], shape[2])
        pad = 1 if min(height, width) < 4 else 0
        self.cnn = nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=2, padding=pad),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=2, padding=pad),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=2, padding=pad),
            nn.ReLU(),
        )
        with th.no_grad():
            sample = th.zeros(1, channels, height, width)
            h, w = self.cnn(sample).shape[-2:]
        self.pool = nn.AdaptiveAvgPool2d((min(h, 8), min(w, 8)))
        n_flatten = 64 * min(h, 8) * min(w, 8)
        self.linear = nn.Sequential(nn.Flatten(), nn.Linear(n_flatten, features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        x = observations.float()
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return self.linear(self.pool(self.cnn(x)))
