"""Test setup: the Triton interpreter on CPU, a fresh seed per test, CUDA-only cases skipped."""
import os

# Must happen before anything imports triton: the interpreter is chosen at import time.
if not os.environ.get("FASTVIT_TEST_ON_GPU"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The interpreter runs many tiny numpy dots: OpenBLAS threads spinning between them cost ~1000x.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import random  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist each worker gets one core's worth of threads instead of fighting over all.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


@pytest.fixture(autouse=True)
def _seed(request):
    """Every test gets its own seed, stable across runs, printed on failure through the node id."""
    seed = zlib.crc32(request.node.nodeid.encode()) & 0x7FFFFFFF
    random.seed(seed)
    torch.manual_seed(seed)
    yield


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() and os.environ.get("FASTVIT_TEST_ON_GPU") else "cpu")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
