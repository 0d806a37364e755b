"""The Triton kernel's table (``_triton_kernel.table``): its layout, its cache by addresses and
sizes, eviction, and threads; and the launcher's refusal of dtypes the kernel does not read.
Plain CPU tensors: the table is built on the host, and only copied when the leaves are CUDA."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")

from ema_core.backends.torch import _cuda, _triton_kernel  # noqa: E402


@pytest.fixture(autouse=True)
def _empty_cache(monkeypatch):
    monkeypatch.setattr(_triton_kernel, "_TABLES", type(_triton_kernel._TABLES)())


def _pairs(sizes: list[int], pdtype=torch.bfloat16):
    return [torch.zeros(n) for n in sizes], [torch.zeros(n, dtype=pdtype) for n in sizes]


def test_layout_addresses_sizes_then_each_chunks_leaf_and_start():
    shadows, params = _pairs([3, 1024, 1025, 2500])
    table, chunks = _triton_kernel.table(shadows, params, 1024)
    assert table.dtype == torch.int64 and table.device == shadows[0].device
    assert chunks == 1 + 1 + 2 + 3
    want = [s.data_ptr() for s in shadows] + [p.data_ptr() for p in params]
    want += [3, 1024, 1025, 2500]
    want += [0, 1, 2, 2, 3, 3, 3]  # the leaf of each chunk
    want += [0, 0, 0, 1024, 0, 1024, 2048]  # its first element
    assert table.tolist() == want


def test_the_same_leaves_reuse_their_table_and_others_get_their_own():
    shadows, params = _pairs([5, 7])
    first, _ = _triton_kernel.table(shadows, params, 4)
    again, _ = _triton_kernel.table(list(shadows), list(params), 4)
    assert again is first  # built once: a steady-state update copies nothing
    other, _ = _triton_kernel.table([shadows[0], torch.zeros(7)], params, 4)
    assert other is not first
    assert other[1].item() != first[1].item()  # the new shadow's address
    block, chunks = _triton_kernel.table(shadows, params, 8)
    assert block is not first and chunks == 2  # the chunk size is part of the key


def test_the_oldest_table_goes_first(monkeypatch):
    monkeypatch.setattr(_triton_kernel, "TABLES_KEPT", 2)
    sets = [_pairs([n]) for n in (3, 4, 5)]
    tables = [_triton_kernel.table(*pair, 4)[0] for pair in sets]
    assert _triton_kernel.table(*sets[0], 4)[0] is not tables[0]  # evicted, built again
    assert _triton_kernel.table(*sets[2], 4)[0] is tables[2]  # still kept


def test_threads_get_their_own_leaves_tables():
    sets = [_pairs([k + 1, 2 * k + 3]) for k in range(16)]
    got: dict[int, list[int]] = {}

    def work(k: int) -> None:
        for _ in range(20):
            table, _ = _triton_kernel.table(*sets[k], 2)
            got[k] = table.tolist()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, (shadows, params) in enumerate(sets):
        assert got[k][:6] == [
            *(s.data_ptr() for s in shadows),
            *(p.data_ptr() for p in params),
            k + 1,
            2 * k + 3,
        ]


@pytest.mark.parametrize(
    ("sdtype", "pdtype"),
    [(torch.float32, torch.float64), (torch.float64, torch.bfloat16), (torch.float32, torch.int8)],
)
def test_the_launcher_refuses_pairs_the_kernel_does_not_read(sdtype, pdtype):
    # the kernel reads float32 shadows and float16, bfloat16 or float32 params by their
    # address: anything else would be read as the wrong type, so it is refused before any pair
    # is written
    good_s, good_p = torch.ones(4), torch.zeros(4, dtype=torch.bfloat16)
    bad_s, bad_p = torch.ones(4, dtype=sdtype), torch.zeros(4, dtype=pdtype)
    with pytest.raises(ValueError, match="float32 shadows with float16, bfloat16 or float32 pa"):
        _cuda.triton_lerp_([good_s, bad_s], [good_p, bad_p], 0.5)
    assert torch.equal(good_s, torch.ones(4)) and torch.equal(bad_s, torch.ones(4, dtype=sdtype))


def test_the_same_addresses_with_other_sizes_get_their_own_table():
    # views that start where the old leaves started but are longer: a table keyed by addresses
    # alone would hand the kernel the old sizes and leave the new tails unblended
    s_buf, p_buf = torch.zeros(20), torch.zeros(20, dtype=torch.bfloat16)
    short, _ = _triton_kernel.table([s_buf[:5]], [p_buf[:5]], 4)
    long, chunks = _triton_kernel.table([s_buf[:9]], [p_buf[:9]], 4)
    assert long is not short
    assert long[2].item() == 9 and chunks == 3


def test_the_same_shadows_over_other_params_get_their_own_table():
    # the params are read by their address too: new params (a model's tensors replaced, or a
    # second model averaged into the same shadows) need the table that points at them
    shadows, params = _pairs([6, 3])
    first, _ = _triton_kernel.table(shadows, params, 4)
    others = [torch.zeros(6, dtype=torch.bfloat16), params[1]]
    second, _ = _triton_kernel.table(shadows, others, 4)
    assert second is not first
    assert second[2].item() == others[0].data_ptr() and first[2].item() == params[0].data_ptr()
