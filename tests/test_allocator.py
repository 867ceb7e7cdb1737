"""sslcourse.allocator: large blocks stay in the process while training on a CPU, and only then.

glibc reports how many blocks it currently serves with mmap (``mallinfo2().hblks``): a
100 MB tensor is one such block under glibc's defaults, and none while
``keep_freed_memory`` is active.
"""
import ctypes
import ctypes.util

import pytest
import torch

from sslcourse import allocator
from sslcourse.train import fit

needs_glibc = pytest.mark.skipif(not allocator.available(), reason="needs Linux with glibc, malloc not replaced")

BIG = 100 * 2**20 // 4  # float32 elements in a 100 MB tensor


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo2():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc < 2.33 has no mallinfo2")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2


def mmapped_blocks_for_big_tensor() -> int:
    """How many more mmapped blocks glibc holds while a fresh big tensor is alive.

    The tensor is 100 MB larger than all the free memory in the heap (``fordblks``), so no
    free chunk left over from earlier tests can serve it: only the mmap setting decides.
    """
    mallinfo2 = _mallinfo2()
    elements = BIG + mallinfo2().fordblks // 4
    before = mallinfo2().hblks
    tensor = torch.empty(elements)
    during = mallinfo2().hblks
    del tensor
    return during - before


@needs_glibc
def test_big_tensors_come_from_the_heap_only_while_active():
    assert mmapped_blocks_for_big_tensor() == 1
    with allocator.keep_freed_memory() as active:
        assert active is True
        assert mmapped_blocks_for_big_tensor() == 0
    assert mmapped_blocks_for_big_tensor() == 1


@needs_glibc
def test_nested_uses_restore_when_the_outermost_exits():
    with allocator.keep_freed_memory():
        with allocator.keep_freed_memory():
            pass
        assert mmapped_blocks_for_big_tensor() == 0
    assert mmapped_blocks_for_big_tensor() == 1


@needs_glibc
def test_disabled_does_nothing():
    with allocator.keep_freed_memory(enabled=False) as active:
        assert active is False
        assert mmapped_blocks_for_big_tensor() == 1


@needs_glibc
def test_restored_after_an_exception():
    with pytest.raises(RuntimeError):
        with allocator.keep_freed_memory():
            raise RuntimeError("boom")
    assert mmapped_blocks_for_big_tensor() == 1


@needs_glibc
@pytest.mark.parametrize("keep_memory, expected", [(True, 0), (False, 1)])
def test_fit_keeps_memory_on_the_cpu_while_it_trains(keep_memory, expected):
    seen = []

    def loss_fn(model, batch):
        seen.append(mmapped_blocks_for_big_tensor())
        return model(batch).pow(2).mean()

    model = torch.nn.Linear(4, 1)
    batches = [torch.randn(8, 4) for _ in range(3)]
    fit(model, loss_fn, batches, torch.optim.SGD(model.parameters(), lr=0.1), 1, device="cpu",
        keep_memory=keep_memory, live_plot=False, progress=False)
    assert seen == [expected] * 3
    assert mmapped_blocks_for_big_tensor() == 1


@needs_glibc
def test_feature_extraction_keeps_memory_on_the_cpu():
    from sslcourse.evaluate import extract_features

    seen = []

    class Encoder(torch.nn.Module):
        def forward(self, x):
            seen.append(mmapped_blocks_for_big_tensor())
            return x.flatten(1)

    images = torch.zeros(6, 3, 2, 2, dtype=torch.uint8)
    features = extract_features(Encoder(), images, mean=(0.5,) * 3, std=(0.5,) * 3, device="cpu", batch_size=4)
    assert features.shape == (6, 12) and seen == [0, 0]
    assert mmapped_blocks_for_big_tensor() == 1


def resident_mb() -> float:
    """This process's resident memory in MB (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


@needs_glibc
def test_free_memory_is_handed_back_on_exit():
    allocator._LIBC.malloc_trim(0)   # start from a heap with nothing free left resident
    base = resident_mb()
    with allocator.keep_freed_memory():
        tensor = torch.ones(2 * BIG)   # 200 MB, every page touched
        del tensor
        assert resident_mb() - base > 150, "inside, the freed 200 MB stay with the process for reuse"
    assert resident_mb() - base < 50, "on exit, malloc_trim hands the free memory back"


def test_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "_LIBC", None)
    assert allocator.available() is False
    with allocator.keep_freed_memory() as active:
        assert active is False


@pytest.mark.parametrize("environ, chosen", [
    ({}, False),
    ({"PATH": "/usr/bin", "LD_PRELOAD": ""}, False),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, True),
    ({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}, True),
    ({"MALLOC_MMAP_MAX_": "0"}, True),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1000000"}, True),
    ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}, False),
])
def test_an_allocator_the_user_chose_is_left_alone(environ, chosen):
    assert allocator._user_chose_an_allocator(environ) is chosen
