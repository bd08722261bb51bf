import os

import matplotlib
import pytest
import torch

from tests.tiny_runs import one_thread as _one_thread_context
from tests.tiny_runs import train_tiny, use_one_thread

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tiny models: one thread is faster than two (thread hand-off dominates at these sizes).
use_one_thread()


def pytest_report_header(config):
    """The CPU and kernel build every timing and bit-for-bit claim of the run depends on."""
    from training.fused_attention import kernel_info

    info = kernel_info()
    return [
        f"markov-lens: CPU {info['cpu']}; attention kernel {info['status']}"
        + (f", {info['build']}" if info["build"] else ""),
    ]


@pytest.fixture
def gen():
    """A seeded torch.Generator on the CPU."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread for the test, the previous count restored after it (a test may change
    it, as `--threads` does). Modules opt in with `pytestmark = pytest.mark.usefixtures(...)`."""
    with _one_thread_context():
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """One torch thread from the module's first test to its end. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread_module")`; a module-scoped fixture that
    trains or measures requests it too, so that it is set up first."""
    with _one_thread_context():
        yield


# Tiny trained runs shared by the whole session (tiny_runs.train_tiny, about a second each):
# tests only read them; a test that writes into a run must copy it first (shutil.copytree).
# The directory names are the runs' labels in comparisons ("tied", "untied").


@pytest.fixture(scope="session")
def tiny_runs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_runs")


@pytest.fixture(scope="session")
def tiny_untied_run(tiny_runs_root):
    """One layer, untied embeddings, seed 0, 80 updates: leaves the unigram plateau."""
    with _one_thread_context():
        return train_tiny(tiny_runs_root / "untied", seed=0, tie_embeddings=False)


@pytest.fixture(scope="session")
def tiny_tied_run(tiny_runs_root):
    """One layer, tied embeddings (the paper default), seed 0, 80 updates."""
    with _one_thread_context():
        return train_tiny(tiny_runs_root / "tied", seed=0)


@pytest.fixture(scope="session")
def tiny_two_layer_run(tiny_runs_root):
    """Two layers (tied), seed 0, 20 updates."""
    with _one_thread_context():
        return train_tiny(tiny_runs_root / "deep", seed=0, n_layers=2, iters=20)
