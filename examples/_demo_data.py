"""The demo's data and training setup, shared by its torch and JAX runs.

scikit-learn's digits: 1,797 grey 8x8 images of the digits 0-9, shipped inside scikit-learn (no
download). One fixed split, one fixed order of minibatches and one EMA config for both
frameworks, so the two runs differ only in the framework that trains them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits

import ema_core as ema

SEED = 0
TEST_SIZE = 360  # held-out images; the rest (1,437) train
BATCH = 4  # small batches and a high learning rate: noisy SGD, where an average helps
LR = 0.25
STEPS = 1200  # optimizer steps, about 6.7 epochs
EVAL_EVERY = 40  # steps between two test-accuracy points of the curves
CONFIG = ema.Config(schedule=ema.schedules.warmup(0.995))


@dataclass(frozen=True)
class Digits:
    """Images as float32 (N, 8, 8, 1) in [0, 1], labels as int64 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def batches(self) -> np.ndarray:
        """(STEPS, BATCH) indices into the training set: reshuffled every epoch, seeded."""
        rng = np.random.default_rng(SEED)
        n = len(self.y_train)
        epochs = -(-STEPS * BATCH // n)
        order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
        return order[: STEPS * BATCH].reshape(STEPS, BATCH)


def load() -> Digits:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(labels))
    test, train = order[:TEST_SIZE], order[TEST_SIZE:]
    return Digits(images[train], labels[train], images[test], labels[test])
