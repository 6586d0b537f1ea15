import os
import subprocess
import sys

import pytest

from segbeam.heap import release_freed_memory

# In a fresh interpreter, with the C allocator directly (numpy's own caches would blur it): the
# heap state that per-image arrays leave. After a large free, glibc raises its mmap threshold
# (set here as it would set it), so image-sized blocks come from the heap; live small blocks
# between them keep free() from shrinking the heap by itself.
_FRAGMENT_THEN_TRIM = """
import ctypes
from segbeam.heap import release_freed_memory

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def resident_mib():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2 ** 20

libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD: blocks under 4 MiB come from the heap
start = resident_mib()
blocks = []
for _ in range(200):
    block = libc.malloc(512 << 10)  # like a 360x480 RGB image
    ctypes.memset(block, 1, 512 << 10)
    blocks.append(block)
    libc.malloc(64 << 10)  # a live block after it (too large for any free fragment)
for block in blocks:
    libc.free(block)
freed = resident_mib()
release_freed_memory()
print(freed - start, freed - resident_mib())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_freed_heap_memory_goes_back_to_the_system():
    if not release_freed_memory():
        pytest.skip("the C library has no malloc_trim (not glibc)")
    done = subprocess.run([sys.executable, "-c", _FRAGMENT_THEN_TRIM], capture_output=True,
                          text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    resident_after_free, returned_by_trim = map(float, done.stdout.split())
    assert resident_after_free > 80  # 100 MiB freed, yet still counted against the process
    assert returned_by_trim > 80
