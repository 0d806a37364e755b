"""torch peers: timm ModelEmaV3, torch_ema, ema-pytorch (default and ``use_foreach``), diffusers
EMAModel (``foreach=True``) and torch ``AveragedModel`` with ``get_ema_multi_avg_fn``.

Each is built on a module holding the workload's tensors, with the decay fixed at 0.999 and its
warm-up and delayed start turned off, so every call is one full blend. With bf16 params the
peers keep bf16 shadows (none of them offers a float32 shadow over bf16 params); ema-core keeps
float32 ones, so its rows move more bytes. Peers that are not installed are left out.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from typing import Any

from benchmarks.backends._common import host_arrays
from benchmarks.workloads import Workload

DECAY = 0.999


def _module(workload: Workload, dtype: str, device: str) -> Any:
    import torch

    shadows_np, params_np = host_arrays(workload)
    del shadows_np
    pdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    model = torch.nn.Module()
    model.params = torch.nn.ParameterList(
        torch.nn.Parameter(torch.from_numpy(p).to(device=device, dtype=pdtype)) for p in params_np
    )
    return model


def _timm_v3() -> Any:
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.submodule_search_locations is None:
        return None
    path = f"{next(iter(spec.submodule_search_locations))}/utils/model_ema.py"
    loader = importlib.util.spec_from_file_location("_timm_model_ema", path)
    if loader is None or loader.loader is None:
        return None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module.ModelEmaV3


def _timm(m: Any) -> Callable[[int], Any]:
    ema = _timm_v3()(m, decay=DECAY)
    return lambda t: ema.update(m, step=t)


def _torch_ema(m: Any) -> Callable[[int], Any]:
    from torch_ema import ExponentialMovingAverage

    ema = ExponentialMovingAverage(m.parameters(), DECAY, use_num_updates=False)
    return lambda t: ema.update()


def _ema_pytorch(foreach: bool) -> Callable[[Any], Callable[[int], Any]]:
    def build(m: Any) -> Callable[[int], Any]:
        from ema_pytorch import EMA

        # no delayed start, an update every call, and a warm-up that is already over
        ema = EMA(
            m,
            beta=DECAY,
            update_after_step=0,
            update_every=1,
            power=1e9,
            include_online_model=False,
            use_foreach=foreach,
        )
        return lambda t: ema.update()

    return build


def _diffusers(m: Any) -> Callable[[int], Any]:
    from diffusers.training_utils import EMAModel

    ema = EMAModel(m.parameters(), decay=DECAY, foreach=True)
    return lambda t: ema.step(m.parameters())


def _averaged_model(m: Any) -> Callable[[int], Any]:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(DECAY))
    return lambda t: ema.update_parameters(m)


def _builders() -> dict[str, Callable[[Any], Callable[[int], Any]]]:
    found = {
        name: importlib.util.find_spec(name) is not None
        for name in ("torch_ema", "ema_pytorch", "diffusers")
    }
    out: dict[str, Callable[[Any], Callable[[int], Any]]] = {}
    if _timm_v3() is not None:
        out["timm ModelEmaV3"] = _timm
    if found["torch_ema"]:
        out["torch_ema"] = _torch_ema
    if found["ema_pytorch"]:
        out["ema-pytorch"] = _ema_pytorch(False)
        out["ema-pytorch foreach"] = _ema_pytorch(True)
    if found["diffusers"]:
        out["diffusers foreach"] = _diffusers
    out["torch AveragedModel"] = _averaged_model
    return out


def cases(workload: Workload, dtype: str, device: str) -> dict[str, Callable[[int], Any]]:
    model = _module(workload, dtype, device)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, build in _builders().items():
            out[name] = build(model)
    return out
