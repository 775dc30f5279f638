"""Shared fixtures: seeded random VGG19 weights and synthetic photos.

Random weights are honest for mechanics, convergence and speed, and
meaningless for visual quality.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

# Two cores: oversubscribing threads makes every test slower.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def synthetic_photo(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """A photo-like HxWx3 float32 image in [0,1]: sky gradient, sun, hills, textured ground."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y /= height
    x /= width
    sky = np.stack([0.35 + 0.3 * y, 0.55 + 0.25 * y, 0.9 - 0.1 * y], axis=-1)
    image = sky
    cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3), rng.uniform(0.06, 0.12)
    sun = ((x - cx) ** 2 + (y - cy) ** 2) < r**2
    image[sun] = [1.0, 0.85, 0.4]
    horizon = 0.55 + 0.08 * np.sin(x * rng.uniform(4, 9) + rng.uniform(0, 6))
    ground = y > horizon
    texture = rng.normal(0, 0.06, (height, width)).astype(np.float32)
    grass = np.stack([0.25 + texture, 0.5 + 0.2 * (y - 0.5) + texture, 0.2 + 0.5 * texture], axis=-1)
    image[ground] = grass[ground]
    return np.clip(image, 0, 1).astype(np.float32)


def synthetic_painting(height: int = 64, width: int = 64, seed: int = 1) -> np.ndarray:
    """A style-like image: bold coloured stripes and swirls."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6, 3)
    freq = rng.uniform(0.2, 0.5, 3)
    channels = [0.5 + 0.5 * np.sin(freq[c] * (x + 2 * np.sin(y / 5)) + y * freq[(c + 1) % 3] + phase[c]) for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0, 1).astype(np.float32)


def save_image(array: np.ndarray, path):
    """Write an HxWx3 float image in [0, 1] as 8-bit (the format from `path`'s suffix); returns `path`."""
    from PIL import Image

    Image.fromarray((array * 255).round().astype(np.uint8)).save(path)
    return path


BULK_BYTES = 1 << 20  # a test's files above this size go whatever its outcome


@pytest.fixture(autouse=True)
def _no_bulk_left(request):
    """Remove the files over 1 MiB a test leaves in its tmp_path, whether it passed or failed.

    pytest keeps a failed test's tmp_path (tmp_path_retention_policy =
    failed, three runs back) for its logs and configs; the VGG-sized
    checkpoints (80 MB each) and full-size photos some tests write would
    stay with them.
    """
    if "tmp_path" not in request.fixturenames:
        yield
        return
    root = request.getfixturevalue("tmp_path")  # set up first, so torn down after this fixture
    yield
    # os.walk, not Path.rglob: a folder nested past the path limit (a test makes one) must be skipped, not raise.
    for folder, _, names in os.walk(root, onerror=lambda error: None):
        for name in names:
            path = os.path.join(folder, name)
            try:
                if not os.path.islink(path) and os.stat(path).st_size > BULK_BYTES:
                    os.unlink(path)
            except OSError:
                pass  # a file a process still writes, or one gone already: best effort


def nest_folders(base, length: int) -> tuple[str, int]:
    """Folders of 200-byte names nested in `base` (made if missing) until the path reaches `length` bytes.

    -> (the deepest folder's path, an open descriptor of it: the caller
    closes it). Made through descriptors, so the path may be longer than
    PATH_MAX (4096 bytes), where path-based calls fail with ENAMETOOLONG;
    write files into it with `os.open(name, ..., dir_fd=fd)`.
    """
    os.makedirs(base, exist_ok=True)
    path, fd, depth = os.fspath(base), os.open(base, os.O_DIRECTORY), 0
    while len(os.fsencode(path)) < length:
        name = f"{depth:02d}" + "d" * 198
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        path, fd, depth = f"{path}/{name}", child, depth + 1
    return path, fd


@pytest.fixture(scope="session")
def random_engine():
    """One resident engine with seeded random weights, shared by the engine tests."""
    from nst_watch.engine import Engine

    return Engine(device="cpu", weights="random", precision="fp32")


class FakeClock:
    """A clock tests move by hand, so time-based behaviour needs no sleeping."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def to_tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()


# Operations that only make a new view of existing memory (and autograd's own
# detach of what it saves): they launch no kernel on a GPU.
VIEWS = {"detach", "view", "_unsafe_view", "_reshape_alias", "transpose", "t", "permute", "unsqueeze", "squeeze",
         "expand", "slice", "select", "split", "unbind", "diagonal", "alias", "as_strided", "lift_fresh"}


def dispatch_counter():
    """A context manager counting the tensor operations dispatched inside it (TorchDispatchMode).

    On a GPU each operation but a view is at least one kernel launch, so
    `totals()` -> (all operations, those that launch a kernel) is the
    CPU-side measure of what an iteration costs the GPU's launch queue.
    """
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    class DispatchCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: collections.Counter = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.__name__.split(".")[0]] += 1
            return func(*args, **(kwargs or {}))

        def totals(self) -> tuple[int, int]:
            return sum(self.ops.values()), sum(v for k, v in self.ops.items() if k not in VIEWS)

    return DispatchCounter()
