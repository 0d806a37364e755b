"""Parameter shapes of real models (copied from the project's shared workloads)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent / "workloads"
#: Workloads run by default on the CPU; llama_1b needs --big (or a GPU).
DEFAULT = ("resnet50", "vit_b16", "gpt2_small", "many_small_20k")
BIG = ("llama_1b",)


@dataclass(frozen=True)
class Workload:
    name: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def elements(self) -> int:
        total = 0
        for shape in self.shapes:
            n = 1
            for dim in shape:
                n *= dim
            total += n
        return total


def load(name: str) -> Workload:
    data = json.loads((HERE / f"{name}.json").read_text())
    return Workload(name, tuple(tuple(shape) for _, shape in data["params"]))


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.json"))
