"""The whole-list reads of ``backends/torch/_pairs`` and the checks and Triton launch groups
built on them: the list-by-list reading is a shortcut for the usual case only, and must
answer as the per-pair rules do (a pair off its shadow's shape, device or dtype is still
refused by name; strided, misaligned and empty pairs still leave the one-group shortcut)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ema_core.backends.torch import _launch, _pairs, _prewrite, _routes, _triton_kernel

KERNEL_PARAMS = (torch.bfloat16, torch.float16, torch.float32)  # the params the kernel reads


def _pair(size: int, layout: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 shadow and ``dtype`` params of ``size`` elements: contiguous, transposed
    (strided, 2-d), or a view one element into a larger buffer (misaligned)."""
    if layout == "strided":
        return torch.zeros(size, 2).t(), torch.ones(size, 2, dtype=dtype).t()
    if layout == "offset":
        return torch.zeros(size + 1)[1:], torch.ones(size + 1, dtype=dtype)[1:]
    return torch.zeros(size), torch.ones(size, dtype=dtype)


def _expected(shadows: list[torch.Tensor], params: list[torch.Tensor]) -> tuple[dict, list]:
    """The launch groups by the per-pair rule (``_triton_kernel.groups``'s docstring)."""
    found: dict = {}
    left = []
    for s, p in zip(shadows, params, strict=True):
        if not (s.is_contiguous() and p.is_contiguous()):
            left.append((s, p))
        elif s.numel():
            aligned = s.data_ptr() % 16 == 0 and p.data_ptr() % 16 == 0
            group = found.setdefault((p.dtype, aligned), ([], [], []))
            group[0].append(s.data_ptr())
            group[1].append(p.data_ptr())
            group[2].append(s.numel())
    return found, left


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 40),
            st.sampled_from(["contiguous", "contiguous", "strided", "offset"]),
            st.sampled_from(KERNEL_PARAMS),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_launch_groups_follow_the_per_pair_rule(specs):
    pairs = [_pair(*spec) for spec in specs]
    shadows, params = [s for s, _ in pairs], [p for _, p in pairs]
    got, left = _triton_kernel.groups(shadows, params)
    want, want_left = _expected(shadows, params)
    assert got == want
    assert [(id(s), id(p)) for s, p in left] == [(id(s), id(p)) for s, p in want_left]


def test_a_models_usual_pairs_take_one_group():
    shadows = [torch.zeros(n) for n in (3, 64, 1000)]
    params = [torch.ones(n, dtype=torch.bfloat16) for n in (3, 64, 1000)]
    got, left = _triton_kernel.groups(shadows, params)
    assert left == []
    assert got == {
        (torch.bfloat16, True): (_pairs.addresses(shadows), _pairs.addresses(params), [3, 64, 1000])
    }


@pytest.mark.parametrize("spoil", ["numel", "shadow_dtype", "params_dtype", "device"])
def test_launch_check_still_names_a_pair_that_is_off(spoil):
    shadows = [torch.zeros(4), torch.zeros(6)]
    params = [torch.ones(4, dtype=torch.float16), torch.ones(6, dtype=torch.float16)]
    if spoil == "numel":
        params[1] = torch.ones(5, dtype=torch.float16)
    elif spoil == "shadow_dtype":
        shadows[1] = torch.zeros(6, dtype=torch.float64)
    elif spoil == "params_dtype":
        params[1] = torch.ones(6, dtype=torch.float64)
    else:
        params[1] = torch.ones(6, dtype=torch.float16, device="meta")
    with pytest.raises(ValueError, match=r"params tensor of shape|float32 shadows with"):
        _launch.prepare(shadows, params)
    _launch.prepare(shadows[:1], params[:1])  # the pair before it is fine


def test_launch_check_takes_fp16_bf16_and_fp32_params_in_one_call():
    shadows = [torch.zeros(4), torch.zeros(6), torch.zeros(2)]
    params = [torch.ones(4, dtype=torch.float16), torch.ones(6, dtype=torch.bfloat16)]
    params.append(torch.ones(2))  # float32 params: the device-decay route of float32 pairs
    _launch.prepare(shadows, params)  # the loop's answer: all allowed
    got, left = _triton_kernel.groups(shadows, params)
    assert left == [] and {dtype for dtype, _ in got} == {*KERNEL_PARAMS}


@pytest.mark.parametrize("spoil", ["reshaped", "moved"])
def test_route_check_still_refuses_a_param_off_its_shadow(spoil):
    shadows = [torch.zeros(3, 4), torch.zeros(5)]
    params = [torch.ones(3, 4, dtype=torch.bfloat16), torch.ones(5, dtype=torch.bfloat16)]
    plan = _routes.make_plan(shadows, params, ["float", "float"], ["a", "b"])
    (group,) = plan.mixed
    _prewrite.check_pairs(group)  # as made
    if spoil == "reshaped":  # the same elements, another shape
        params[0].data = params[0].data.view(4, 3)
    else:  # the plan's tensor replaced by one elsewhere (``set_data`` refuses another device)
        group.params[0] = torch.ones(3, 4, dtype=torch.bfloat16, device="meta")
    with pytest.raises(ValueError, match="params a: shape"):
        _prewrite.check_pairs(group)


def test_all_on_reads_devices_without_building_them():
    cpu = [torch.zeros(2), torch.zeros(3)]
    assert _pairs.all_on(cpu, torch.device("cpu"))
    assert not _pairs.all_on([*cpu, torch.zeros(1, device="meta")], torch.device("cpu"))
    assert _pairs.all_on([torch.zeros(1, device="meta")], torch.device("meta"))
    assert not _pairs.all_on(cpu, torch.device("cuda", 0))  # get_device -1 is not CUDA 0
    assert not _pairs.all_on(cpu, torch.device("cuda"))  # no index: compared as devices
    assert _pairs.all_on([], torch.device("cuda", 1))


def test_all_dtype_contiguous_and_shapes():
    x = torch.zeros(3, 4)
    assert _pairs.all_dtype([x, x[1]], torch.float32)
    assert not _pairs.all_dtype([x, x.half()], torch.float32)
    assert _pairs.all_contiguous([x, x[1]]) and not _pairs.all_contiguous([x, x.t()])
    assert _pairs.same_shapes([x, x[0]], [x.half(), torch.ones(4)])
    assert not _pairs.same_shapes([x], [x.t()])
    assert _pairs.sizes([x, x[0], x[:0]]) == [12, 4, 0]


def test_launch_check_of_lists_of_other_lengths_raises_value_error():
    # the shortcut reads the first params' dtype: an empty params list must still reach the
    # loop's ValueError (zip strict), not an IndexError
    with pytest.raises(ValueError, match=r"shorter|longer"):
        _launch.prepare([torch.zeros(2)], [])
