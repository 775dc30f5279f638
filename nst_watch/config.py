"""Settings: one vocabulary for YAML, CLI flags and the Python API.

The field names of `Preset` and `EngineSettings` are the names users type in
YAML, the CLI's `--flags` (with dashes) and the keyword arguments of the
Python API. Validation is pydantic's; this module only turns its errors into
messages that name the file, the key path and the line.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import ipaddress
import json
import logging
import math
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (BaseModel, BeforeValidator, ByteSize, ConfigDict, Field, PrivateAttr, SecretStr, TypeAdapter,
                      ValidationError, field_validator, model_validator)

from .errors import ConfigError

log = logging.getLogger("nst_watch.config")

_VALID_LAYERS = {
    f"{kind}{block}_{i}"
    for block, convs in enumerate((2, 2, 4, 4, 4), start=1)
    for i in range(1, convs + 1)
    for kind in ("conv", "relu")
} | {f"pool{b}" for b in range(1, 6)}


def min_edge(layers: list[str] | tuple[str, ...]) -> int:
    """Shortest image edge, in pixels, for which VGG19 still has a pixel left at every layer listed.

    Each max/avg pooling before a layer halves the image: relu1_x needs 1 px,
    relu2_x 2, relu3_x 4, relu4_x 8, relu5_x (and pool4) 16, pool5 32.
    """
    def pools_before(name: str) -> int:  # pool3 is the third pooling; relu3_1 comes after two
        return int(name[4]) if name.startswith("pool") else int(name[4]) - 1

    return 2 ** max(pools_before(name) for name in layers)


def deepest(layers: list[str] | tuple[str, ...]) -> str:
    """The layer of `layers` that needs the largest image (see `min_edge`)."""
    return max(layers, key=lambda name: min_edge([name]))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Says(str):
    """What a setting takes, as error messages name it where its type alone says less.

    Metadata for `Annotated` (pydantic ignores it): ``Annotated[int, Says("a number of pixels")]``
    makes a wrong value read "a number of pixels (16 or more), not 'big'" (see `_takes`).
    """


PIXELS = Says("a number of pixels")
SECONDS = Says("a number of seconds")


def _style_from_string(value: Any) -> Any:
    return {"path": value} if isinstance(value, (str, Path)) else value


class StyleImage(_Strict):
    """One style image and its share of a blend."""

    path: Path
    weight: float = Field(1.0, gt=0)


def _rgb(value: Any) -> Any:
    """A colour as an (r, g, b) tuple of 0-255: "#rrggbb", "#rgb", a CSS name ("white") or [r, g, b]."""
    if isinstance(value, str):
        from PIL import ImageColor  # torch-free

        try:
            rgb = ImageColor.getrgb(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a colour; give #rrggbb (e.g. #00ff00) or a name such as white") \
                from None
        return tuple(rgb[:3])
    return value


Colour = Annotated[tuple[Annotated[int, Field(ge=0, le=255)], Annotated[int, Field(ge=0, le=255)],
                         Annotated[int, Field(ge=0, le=255)]], BeforeValidator(_rgb),
                   Says("a colour (#rrggbb, a name such as white, or [r, g, b])")]

StyleList = Annotated[list[Annotated[StyleImage, BeforeValidator(_style_from_string),
                                     Says("a style image's path, or path: and weight:")]],
                      Says("a list of style images (each a path, or path: and weight:)")]


class Region(_Strict):
    """One region of a mask (Gatys et al. 2017, spatial control): the colour that paints it and what it gets.

    `styles`: style images blended as a preset's are, or `photo`: the region
    keeps the photo's own look (its Gram targets are the photo's own over the
    region), so only its border is harmonised with its neighbours.
    """

    color: Colour
    styles: Annotated[StyleList, Field(min_length=1)] | Literal["photo"]

    @property
    def keeps_photo(self) -> bool:
        return self.styles == "photo"


class Pyramid(_Strict):
    """Coarse-to-fine schedule: each scale starts from the previous result.

    Scales run from `min_size` up to the preset's `size` in steps of
    `factor`; a coarse scale too small for the deepest layer is skipped.
    `iterations` lists iterations per scale, coarse to fine (the last value
    repeats); by default each coarser scale runs a tenth of the preset's
    `iterations` (it only has to lay the picture out, at a fraction of the
    cost: a half-size step costs a quarter) and the final scale all of them.
    Above 1024 px (size: full, large sizes) the picture is laid out at the
    largest scale up to 1024 px with all `iterations`, and each larger scale
    only refines detail: iterations x (1024 / its long edge)^2, at least 10
    (nst_watch.engine.pyramid.scale_iterations).
    """

    min_size: Annotated[int, PIXELS] = Field(
        64, ge=16, description="long edge of the first, coarsest scale, in pixels")
    factor: float = Field(2.0, gt=1.0, description="step between scales")
    iterations: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="iterations per scale, coarse to fine, the last repeating (default: a tenth of "
        "iterations on each coarser scale, all of them at full size; fewer above 1024 px: README, Full resolution)")


class EarlyStop(_Strict):
    """End a scale once the picture stops changing visibly.

    Every `every` iterations the image is compared with the image `every`
    iterations earlier; when its pixels moved by less than `min_change` on
    average (mean absolute change per pixel and channel, in 8-bit levels,
    0-255), the scale ends. Departure from the paper, which runs a fixed
    number of iterations: measured on the bundled weights, L-BFGS keeps
    lowering the loss by ~1 % per 50 iterations long after the picture has
    settled, redistributing brush strokes nobody can tell apart (see
    benchmarks/RESULTS.md). The image is read only at window ends, so the GPU
    never waits for the host in between. In a batch, the photo that changed
    most decides.
    """

    every: int = Field(25, ge=2, description="window, in iterations")
    min_change: float = Field(4.0, ge=0, description="mean |change| per pixel over a window, in 8-bit levels")


class OutputSettings(_Strict):
    """How finished images are written (see nst_watch.photo)."""

    format: Literal["jpeg", "png", "webp", "tiff"] = Field("jpeg", description="output file format")
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality")
    bit_depth: Literal[8, 16] = Field(8, description="bits per channel; 16 needs format tiff")
    icc: Literal["srgb", "keep"] = Field(
        "srgb", description="Embed sRGB (srgb), or convert back to the photo's own profile (keep)")
    strip_gps: bool = Field(False, description="leave the GPS position out of the output's metadata")
    sidecar: bool = Field(False, description="write <output>.json with parameters, hashes and timings")

    @model_validator(mode="after")
    def _sixteen_bit_is_tiff(self) -> "OutputSettings":
        if self.bit_depth == 16 and self.format != "tiff":
            raise ValueError(f"bit_depth 16 needs format: tiff ({self.format} holds 8 bits per channel)")
        return self


class Preset(_Strict):
    """A named, hashable bundle of style images and optimisation settings."""

    name: str = "custom"
    styles: StyleList = Field(
        default_factory=list, min_length=1, description="style images for the whole photo (with regions: for a photo without a mask)")
    regions: dict[str, Region] | None = Field(
        None, min_length=1, description="mask colour -> styles or photo, per region (Gatys et al. 2017)")
    style_scale: float = Field(1.0, gt=0, description="style image long edge relative to the output's")
    size: Annotated[int, Field(ge=16), PIXELS] | Literal["full"] = Field(
        512, description="output long edge in pixels, or full: the photo's own (too big for memory runs in tiles)")
    iterations: int = Field(500, ge=0, description="most iterations at full size (early_stop usually ends sooner)")
    pyramid: Pyramid | None = Pyramid()
    early_stop: EarlyStop | None = EarlyStop()
    optimizer: Literal["lbfgs", "adam"] = Field(
        "lbfgs", description="L-BFGS as in the paper (lbfgs), or Adam with an iterate average (adam)")
    learning_rate: float = Field(0.02, gt=0, description="Adam step on [0,1] pixels")
    average: float = Field(0.99, ge=0, lt=1, description="decay of the Adam iterate's moving average; 0 = off")
    history_size: int = Field(50, ge=1, description="L-BFGS memory, in steps")
    content_weight: float = Field(1.0, ge=0, description="weight of the photo's content (paper: alpha)")
    style_weight: float = Field(
        5.0, ge=0, description="the strength knob: 1 subtle, 3 moderate, 5 balanced, 10 strong, 30 the photo dissolves"
    )
    tv_weight: float = Field(5.0, ge=0, description="smooths pixel-level colour speckle; 0 = off")
    content_layers: list[str] = Field(default_factory=lambda: ["relu4_2"], min_length=1,
                                      description="VGG19 layers matched to the photo")
    style_layers: list[str] = Field(
        default_factory=lambda: ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"], min_length=1,
        description="VGG19 layers whose Gram matrices are matched to the style",
    )
    style_layer_weights: list[Annotated[float, Field(ge=0)]] | None = Field(
        None, description="one weight per style layer (default: equal)")
    color: Literal["none", "luminance", "histogram"] = Field(
        "none", description="luminance: keep the photo's colours; histogram: recolour the style to the photo's")
    init: Literal["content", "noise", "gray"] = Field("content", description="image the optimisation starts from")
    seed: int = Field(0, description="random seed for init noise")
    output: OutputSettings = OutputSettings()

    @field_validator("content_layers", "style_layers")
    @classmethod
    def _known_layers(cls, layers: list[str]) -> list[str]:
        for name in layers:
            if name not in _VALID_LAYERS:
                close = difflib.get_close_matches(name, sorted(_VALID_LAYERS), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ValueError(f"unknown VGG19 layer {name!r}{hint}")
        return layers

    @model_validator(mode="after")
    def _weights_match_layers(self) -> "Preset":
        weights = self.style_layer_weights
        if weights is not None and len(weights) != len(self.style_layers):
            raise ValueError(
                f"style_layer_weights has {len(weights)} values but style_layers has {len(self.style_layers)}"
            )
        return self

    @model_validator(mode="after")
    def _styles_or_regions(self) -> "Preset":
        if not self.styles and self.regions is None:
            raise ValueError("give styles: [style images], or regions: for a mask")
        if self.regions is not None:
            seen: dict[tuple, str] = {}
            for name, region in self.regions.items():
                if region.color in seen:
                    raise ValueError(f"regions {seen[region.color]!r} and {name!r} have the same colour "
                                     f"#{'%02x%02x%02x' % region.color}; give each region a colour of its own")
                seen[region.color] = name
            if all(r.keeps_photo for r in self.regions.values()):
                raise ValueError("every region keeps the photo: give at least one region styles")
        return self

    @property
    def needs_mask(self) -> bool:
        """True for a preset with named regions: its photos wait for a mask (a plain preset takes one if given)."""
        return self.regions is not None

    def region_list(self) -> list[tuple[str, tuple[int, int, int], list[StyleImage] | None]]:
        """(name, colour, style images or None for the photo) per region of a mask, in order.

        A preset without `regions` has the simple case's two: "style" (white,
        the preset's styles) and "photo" (black); greys blend between them.
        """
        if self.regions is None:
            return [("style", (255, 255, 255), list(self.styles or [])), ("photo", (0, 0, 0), None)]
        return [(name, r.color, None if r.keeps_photo else list(r.styles)) for name, r in self.regions.items()]

    def style_images(self) -> list[StyleImage]:
        """Every style image the preset uses, in the order the engine takes them as tensors.

        The preset's own `styles` first, then each region's, in order of
        `regions` (a region that keeps the photo has none).
        """
        images = list(self.styles or [])
        for region in (self.regions or {}).values():
            if not region.keeps_photo:
                images += list(region.styles)
        return images

    def long_edge(self, height: int, width: int) -> int:
        """The output long edge, in pixels, for a photo of height x width (`size`, or the photo's own for full)."""
        return max(height, width) if self.size == "full" else self.size

    def fingerprint(self, *, size: bool = True) -> str:
        """Hash of everything that changes the output pixels, except the style images' bytes.

        With size=False, the look without its size: a proof and its final
        share it (nst_watch.engine.FromProof).
        """
        data = self.model_dump(mode="json", exclude={"name", "output"} | (set() if size else {"size"}))
        data["styles"] = [{"weight": s["weight"]} for s in data["styles"] or []]
        if data.get("regions") is None:
            del data["regions"]  # a preset without regions hashes as it always has
        else:
            for region in data["regions"].values():
                if region["styles"] != "photo":
                    region["styles"] = [{"weight": s["weight"]} for s in region["styles"]]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class EngineSettings(_Strict):
    """The resident engine: where it runs and which VGG19 it loads."""

    device: str = Field("auto", description="auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    weights: str = Field(
        "caffe",
        description="caffe (bundled original VGG19) | torchvision | caffe:PATH | PATH to a .pth with torchvision "
        "key names | random[:SEED] (tests only)",
    )
    precision: Literal["auto", "fp32", "bf16", "fp64"] = "auto"
    pooling: Literal["max", "avg"] = "max"
    padding: Literal["replicate", "zeros"] = "replicate"
    max_memory: Annotated[ByteSize, Says("a size (e.g. 6GB, 1.5GiB)")] | None = Field(
        None, description="peak memory for the engine's work, e.g. 6GB or 1.5GiB; a scale that would need more "
        "runs in tiles (default: 80% of the GPU's free memory, or half the available RAM on a CPU)")

    @field_validator("max_memory")
    @classmethod
    def _a_budget(cls, value: ByteSize | None) -> ByteSize | None:
        if value is not None:
            budget_floor(value)
        return value


# Below this, engine.max_memory is no budget but a slip (a missing unit: `max_memory: 6`, or 0 meant as
# "the default"). What the engine really needs is known once it has loaded (Engine.check_budget).
MIN_MAX_MEMORY = 10**6


def budget_floor(value: int) -> int:
    """`value` (bytes) when it can be a memory budget at all; ValueError saying how to write one."""
    if value < MIN_MAX_MEMORY:
        unit = "byte" if value == 1 else "bytes"
        raise ValueError(f"{value} {unit} is no memory budget: give a size with its unit, e.g. 6GB or 1.5GiB, "
                         "or leave it out for the default (80% of the GPU's free memory, or half the "
                         "available RAM on a CPU)")
    return value


def parse_budget(text: str) -> int:
    """Bytes from "1.5GB", "800MB", "2GiB" (pydantic's ByteSize), at least MIN_MAX_MEMORY.

    ValueError saying the form of a size, or why the value is no budget.
    """
    try:
        value = int(TypeAdapter(ByteSize).validate_python(text))
    except ValidationError:
        raise ValueError("give a size such as 1.5GB, 800MB or 2GiB") from None
    return budget_floor(value)


# Matched case-insensitively (IMG_0001.CR3 too). The RAW suffixes are the common
# cameras'; LibRaw reads more (add "*.pef", "*.srw"... to a watch's include).
DEFAULT_INCLUDE = ["*.jpg", "*.jpeg", "*.png", "*.tif", "*.tiff", "*.webp", "*.heic", "*.heif",
                   "*.dng", "*.cr2", "*.cr3", "*.nef", "*.arw", "*.raf", "*.orf", "*.rw2"]


DEFAULT_MASK_NAMES = ["{stem}.mask.png", "{stem}.mask.tif", "{stem}.mask.tiff"]


def _mask_name_problem(pattern: str) -> str | None:
    """Why `pattern` cannot name a photo's mask, or None (see MaskSettings.names)."""
    if pattern.count("{stem}") != 1:
        return "must hold {stem} (the photo's name without its extension) exactly once, e.g. {stem}.mask.png"
    rest = pattern.replace("{stem}", "")
    if "{" in rest or "}" in rest:
        return "knows only the token {stem}; remove the other braces"
    if "/" in rest or "\\" in rest:
        return "names a file beside the photo: no folders (no / or \\)"
    if pattern.startswith("."):
        return "starts with a dot, and nst-watch ignores dot files (temp and system files): drop the dot"
    if re.fullmatch(r"\.[^.]+", rest) and pattern.startswith("{stem}"):
        return (f"would make every {rest} file a mask and none a photo: add a word beside {{stem}}, "
                f"e.g. {{stem}}.mask{rest}")
    if pattern == "{stem}":
        return "would make every file a mask: add a word and an extension, e.g. {stem}.mask.png"
    return None


class MaskSettings(_Strict):
    """Masks beside the photos in a hot folder (Gatys et al. 2017 spatial control; README "Masks").

    A file whose name fits one of `names` is a mask: a sidecar that settles
    like a photo but is never stylised itself, nor moved on its own (it goes
    with its photo). A photo whose preset names `regions` waits for its mask
    up to `wait_seconds`, then `missing` says what happens: `fail` (the
    default: the photo goes to failed/ with a report saying which mask to
    add) or `run` (the preset's own `styles` over the whole photo). A preset
    without regions takes a mask when one is there as the photo is queued.
    """

    names: Annotated[list[str], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_MASK_NAMES),
        description="mask file names beside the photo; {stem} is the photo's name without its extension")
    wait_seconds: Annotated[float, SECONDS] = Field(
        120.0, ge=0, description="how long a photo whose preset needs a mask waits for it, in seconds")
    missing: Literal["fail", "run"] = Field(
        "fail", description="no mask after wait_seconds: fail (photo to failed/ with a report) or run (the "
        "preset's own styles over the whole photo)")

    @field_validator("names")
    @classmethod
    def _names_name_masks(cls, names: list[str]) -> list[str]:
        for pattern in names:
            problem = _mask_name_problem(pattern)
            if problem:
                raise ValueError(f"{pattern!r} {problem}")
        return names


class Watch(_Strict):
    """An input folder, the presets its photos get, and where results go."""

    name: str = Field(min_length=1)
    input: Path
    output: Path
    presets: list[str] | None = Field(None, description="every photo gets each of these presets")
    route: Literal["subfolders"] | None = Field(None, description="input/<preset>/photo.jpg gets <preset>")
    recursive: bool = False
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE))
    ignore: list[str] = Field(default_factory=list, description="added to the built-in ignore list")
    settle_seconds: Annotated[float, SECONDS] = Field(5.0, ge=0)
    polling: bool | Literal["auto"] = "auto"
    processed: str = Field("keep", description="keep | move:<dir>")
    failed: Path | None = Field(None, description="folder for photos that cannot be processed")
    template: str = "{stem}-{preset}.{ext}"
    collision: Literal["suffix", "skip", "overwrite"] = "suffix"
    format: Literal["jpeg", "png", "webp", "tiff"] | None = Field(None, description="overrides the preset's")
    mask: MaskSettings = MaskSettings()
    proof: Annotated[int, Field(ge=16), PIXELS] | None = Field(
        None, description="proof every photo at this long edge (px) into `proofs`; finals only for the keepers "
        "(README \"Proofs, then finals\"); null: finals at once")
    proofs: Path | None = Field(None, description="folder for the proofs (default: OUTPUT/proofs)")
    finals: Path | None = Field(
        None, description="drop a proof (or its original) here to render its final (default: PROOFS/finals)")

    @field_validator("processed")
    @classmethod
    def _processed_form(cls, value: str) -> str:
        if value != "keep" and not (value.startswith("move:") and value[5:].strip()):
            raise ValueError("must be 'keep' or 'move:<folder>'")
        return value

    @field_validator("template")
    @classmethod
    def _template_ok(cls, value: str) -> str:
        from .photo import validate_template  # torch-free

        validate_template(value)
        return value

    @model_validator(mode="after")
    def _one_routing(self) -> "Watch":
        if (self.presets is None) == (self.route is None):
            raise ValueError("give either presets: [..] or route: subfolders")
        if self.presets is not None and not self.presets:
            raise ValueError("presets must name at least one preset")
        return self

    @property
    def processed_dir(self) -> Path | None:
        return Path(self.processed[5:].strip()) if self.processed.startswith("move:") else None

    def walks_subfolders(self) -> bool:
        return self.recursive or self.route == "subfolders"

    @property
    def proofs_dir(self) -> Path:
        """Where proofs go: `proofs`, or OUTPUT/proofs."""
        return self.proofs if self.proofs is not None else self.output / "proofs"

    @property
    def finals_dir(self) -> Path | None:
        """The drop folder that asks for finals (`finals`, or PROOFS/finals); None for a watch without proofs."""
        if self.proof is None:
            return None
        return self.finals if self.finals is not None else self.proofs_dir / "finals"


DEFAULT_HTTP = "127.0.0.1:8765"  # the web view's address when --http is given without one
MIN_TOKEN = 16
TOKEN_HINT = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def parse_http(text: str) -> tuple[str, int]:
    """("127.0.0.1", 8765) from "127.0.0.1:8765"; IPv6 in brackets ("[::1]:8765"); ValueError saying the form."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("write an IPv6 address in brackets, e.g. [::1]:8765")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"give HOST:PORT, e.g. {DEFAULT_HTTP} (a port from 1 to 65535)")
    return host, int(port)


def is_loopback(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: addresses only this machine can reach."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve to anything


def http_problem(http: str, token: SecretStr | None) -> str | None:
    """Why the web view may not listen on `http` (HOST:PORT, well formed) with `token`; None when it may."""
    host, port = parse_http(http)
    if token is None and not is_loopback(host):
        reach = "this machine" if host in ("0.0.0.0", "::") else host  # the wildcard: every address it has
        return (f"the web view on {http} would let anyone who can reach {reach} see the photos and retry jobs: "
                f"set service.http_token to a long random string (e.g. the output of `{TOKEN_HINT}`), "
                f"or listen on 127.0.0.1:{port} only")
    return None


class ServiceSettings(_Strict):
    """The daemon and its workers."""

    batch: int = Field(4, ge=1, description="same-preset photos optimised together")
    lease_seconds: Annotated[float, SECONDS] = Field(
        300, gt=0, description="a worker silent this long has its job taken back")
    max_attempts: int = Field(3, ge=1)
    grace_seconds: Annotated[float, SECONDS] = Field(
        30, ge=0, description="on SIGTERM, time for the running job to finish")
    reconcile_seconds: Annotated[float, SECONDS] = Field(
        120, gt=0, description="full rescan of every watch, for lost events")
    http: str | None = Field(None, description=f"HOST:PORT of the web view, e.g. {DEFAULT_HTTP}; null = off")
    http_token: SecretStr | None = Field(
        None, description="every web view request must carry it; required to listen beyond 127.0.0.1")
    proof_state: Annotated[ByteSize, Says("a size (e.g. 2GB, 500MB)")] = Field(
        ByteSize(2 * 10**9), description="most disk the proofs' kept images take in state_dir/proofs; the least "
        "recently used are dropped beyond it (their finals then render from scratch)")

    @field_validator("http")
    @classmethod
    def _http_form(cls, value: str | None) -> str | None:
        if value is not None:
            parse_http(value)
        return value

    @field_validator("http_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < MIN_TOKEN:
            raise ValueError(f"too short to resist guessing: use at least {MIN_TOKEN} characters, e.g. the "
                             f"output of `{TOKEN_HINT}`")
        return value

    @model_validator(mode="after")
    def _open_bind_needs_token(self) -> "ServiceSettings":
        problem = self.http and http_problem(self.http, self.http_token)
        if problem:
            raise ValueError(f"service.http: {problem}")
        return self


class ClusterSettings(_Strict):
    """Where the engines run: this machine, or one Ray actor per GPU of a Ray cluster (README "Several machines")."""

    backend: Literal["local", "ray"] = Field(
        "local", description="local: `run` has one worker here; ray: one actor per GPU of a Ray cluster "
        "(the [ray] extra: pip install -e '.[ray]')")
    address: str = Field(
        "auto", min_length=1, description="the Ray cluster: auto (the one this machine joined with `ray start`), "
        "HOST:PORT of its head, or ray://HOST:10001 (Ray Client)")


class Config(_Strict):
    """A whole config file."""

    state_dir: Path = Path("state")
    engine: EngineSettings = EngineSettings()
    service: ServiceSettings = ServiceSettings()
    cluster: ClusterSettings = ClusterSettings()
    presets: dict[str, Preset] = Field(default_factory=dict)
    watches: list[Watch] = Field(default_factory=list)
    max_pixels: Annotated[int, PIXELS] = Field(100_000_000, ge=1, description="largest photo accepted, in pixels")
    _path: Path | None = PrivateAttr(None)  # the file it was read from (load_config); kept by model_copy

    @property
    def path(self) -> Path | None:
        """The absolute path of the config file this was read from; None for a config built in code."""
        return self._path

    @model_validator(mode="before")
    @classmethod
    def _name_presets(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("presets"), dict):
            data = dict(data)
            data["presets"] = {
                name: ({"name": name, **body} if isinstance(body, dict) else body)
                for name, body in data["presets"].items()
            }
        return data

    @model_validator(mode="after")
    def _watches_fit(self) -> "Config":
        names = [w.name for w in self.watches]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two watches are named {name!r}; names must be unique")
        for i, watch in enumerate(self.watches):
            for preset in watch.presets or []:
                if preset not in self.presets:
                    known = ", ".join(sorted(self.presets)) or "none defined"
                    raise ValueError(f"watches.{i} ({watch.name}): unknown preset {preset!r} (presets: {known})")
            if watch.mask.missing == "run":
                for name in watch.presets or sorted(self.presets):
                    preset = self.presets[name]
                    if preset.needs_mask and not preset.styles:
                        raise ValueError(  # begins with its key path: _describe gives it its line
                            f"watches.{i}.mask.missing: run (watch {watch.name!r}), but preset {name!r} names "
                            "regions and no styles of its own, so a photo without a mask has nothing to run with: "
                            "give the preset styles: for such photos, or set missing: fail")
        return self

    def preset(self, name: str) -> Preset:
        try:
            return self.presets[name]
        except KeyError:
            known = ", ".join(sorted(self.presets)) or "none"
            raise ConfigError(f"no preset named {name!r} (presets in this config: {known})") from None

    def watch(self, name: str) -> Watch | None:
        return next((w for w in self.watches if w.name == name), None)

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "jobs.db"


# --- loading -----------------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """Read, validate and resolve a YAML config; every failure is a ConfigError.

    Every problem in the file is reported at once, each with its key path and
    line: keys given twice in one mapping (`_ConfigLoader`), pydantic's
    field errors in the config's own words (`_problems`), and for each preset
    that is valid on its own its style images (missing, unreadable, too
    small for the style layers) and size; folder layout comes last, once the
    whole file is valid. A file that is not YAML: the file, line and column.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (pass the right path with -c/--config)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    data, problems = _parse_yaml(text, path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, not {type(data).__name__}")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems += _problems(exc, Config, text)
        _check_raw_parts(data, path.parent, text, problems)
        config = None
    else:
        config = resolve_paths(config, path.parent, source=str(path), text=text, problems=problems)
    _raise_if(problems, str(path))
    config._path = path.resolve()  # where the error reports' `nst-watch retry -c` points
    return config


MERGE_TAG = "tag:yaml.org,2002:merge"  # YAML's merge key, `<<: *anchor`


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, which also finds keys given twice in one mapping.

    PyYAML keeps the last value of a duplicate key silently (yaml/pyyaml#165):
    a second `state_dir` would point the daemon at an empty ledger, a second
    preset of one name replace the first. YAML 1.2 requires mapping keys to be
    unique; keys a merge (`<<: *base`) brings in are not the mapping's own, and
    one given in the mapping itself overrides them, as YAML's merge key means.
    """

    def duplicate_keys(self, node: yaml.Node, path: tuple = (), seen: set | None = None) -> list[tuple[int, str]]:
        """(first line, problem) for each key given more than once in a mapping under `node`, at any depth."""
        seen = set() if seen is None else seen
        if id(node) in seen:  # an alias: the anchored node is checked where it is defined
            return []
        seen.add(id(node))
        found: list[tuple[int, str]] = []
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                found += self.duplicate_keys(item, (*path, i), seen)
        elif isinstance(node, yaml.MappingNode):
            lines: dict[Any, list[int]] = {}
            for key, value in node.value:
                if key.tag == MERGE_TAG:
                    continue
                name = self._key(key)
                if name is not None:
                    lines.setdefault(name, []).append(key.start_mark.line + 1)
                found += self.duplicate_keys(value, (*path, name), seen)
            for name, at in lines.items():
                if len(at) > 1:
                    where = ", ".join(map(str, at[:-1])) + f" and {at[-1]}"
                    times = "twice" if len(at) == 2 else f"{len(at)} times"
                    key = ".".join(str(part) for part in (*path, name))
                    found.append((at[0], f"{key} (lines {where}): given {times}; keep one"))
        return found

    def _key(self, node: yaml.Node) -> Any:
        """The key as the mapping will hold it (`size` and `"size"` are one key), None if not a plain value."""
        if not isinstance(node, yaml.ScalarNode):
            return None
        try:
            key = self.construct_object(node)
            hash(key)
        except (yaml.YAMLError, TypeError):
            return None
        return key


def _parse_yaml(text: str, path: Path) -> tuple[Any, list[str]]:
    """The YAML document in `text` (read from `path`) and one problem per key given twice, in line order.

    ConfigError naming the file, line and column when the text is not YAML.
    """
    stream = io.StringIO(text)
    stream.name = str(path)  # PyYAML's messages name the stream: the file, not "<unicode string>"
    loader = None
    try:
        loader = _ConfigLoader(stream)  # reads the first characters: may already fail
        node = loader.get_single_node()
        if node is None:
            return None, []
        # Before construction, which folds merged keys into each mapping.
        duplicates = sorted(loader.duplicate_keys(node))
        return loader.construct_document(node), [problem for _, problem in duplicates]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _raise_if(problems: list[str], source: str) -> None:
    if problems:
        many = f" ({len(problems)} problems)" if len(problems) > 1 else ""
        raise ConfigError(f"{source}: invalid config{many}:\n" + "\n".join(f"  - {line}" for line in problems))


def _check_raw_parts(data: dict, base: Path, text: str, problems: list[str]) -> None:
    """When the file as a whole is invalid, still check what is valid on its own.

    Pydantic's cross-field checks run only on a valid model, so without this
    a typo in one preset would hide a missing style image in another or a
    watch that names no preset.
    """
    presets = data.get("presets") if isinstance(data.get("presets"), dict) else {}
    for name, body in presets.items():
        try:
            preset = Preset.model_validate({"name": name, **body})
        except (ValidationError, TypeError):
            continue  # already reported
        resolve_preset(preset, base, source="", key=f"presets.{name}", text=text, problems=problems)
    watches = data.get("watches") if isinstance(data.get("watches"), list) else []
    for i, body in enumerate(watches):
        try:
            watch = Watch.model_validate(body)
        except (ValidationError, TypeError):
            continue
        for name in watch.presets or []:
            if name not in presets:
                known = ", ".join(sorted(map(str, presets))) or "none defined"
                problems.append(f"watches.{i}.presets{_at(text, f'watches.{i}.presets')}: unknown preset "
                                f"{name!r} (presets: {known})")
        _resolve_watch(watch, i, base, text=text, problems=problems)


def validate(model: type[BaseModel], data: Any, *, source: str, text: str | None = None):
    """model.model_validate(data), with errors naming source, key path and line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        _raise_if(_problems(exc, model, text), source)


# pydantic's own words for these say only that the value was wrong: the message says what the setting takes.
_WRONG_VALUE = {"int_parsing", "int_type", "int_from_float", "float_parsing", "float_type", "bool_parsing",
                "bool_type", "string_type", "literal_error", "greater_than", "greater_than_equal", "less_than",
                "less_than_equal", "list_type", "dict_type", "model_type", "model_attributes_type", "byte_size",
                "byte_size_unit", "path_type", "finite_number"}


def _problems(exc: ValidationError, model: type[BaseModel], text: str | None) -> list[str]:
    """One line per wrong setting in `exc`, with its key path and line.

    A value that fits no branch of a union (`size: big`) is one problem,
    not one per branch under pydantic's internal names.
    """
    problems: dict[tuple, str] = {}
    for err in exc.errors():
        loc, line = _describe(err, model, text)
        problems.setdefault(loc, line)
    return list(problems.values())


def _describe(err: dict, model: type[BaseModel], text: str | None) -> tuple[tuple, str]:
    """(the setting's key path, the problem in the config's words) for one of pydantic's errors."""
    loc = tuple(err["loc"])
    setting = _setting_at(model, loc) if err["type"] in _WRONG_VALUE else None
    if setting is not None:
        loc, annotation, metadata = setting
    key = ".".join(str(part) for part in loc) or "(top level)"
    where = _line_of(text, loc) if text else None
    at = f" (line {where})" if where else ""
    if setting is not None:
        return loc, f"{key}{at}: {_alternatives(_takes(annotation, metadata))}, not {_shown(err['input'])}"
    if err["type"] == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
        return loc, f"{key}{at}: unknown key{hint}"
    if err["type"] == "missing":
        return loc, f"{key}{at}: required; add it"
    if err["type"] in ("too_short", "string_too_short"):
        least = err["ctx"]["min_length"]
        units = ("character", "characters") if err["type"] == "string_too_short" else ("entry", "entries")
        return loc, f"{key}{at}: at least {least} {units[least != 1]}, not {_shown(err['input'])}"
    # Our own validators' messages, without pydantic's "Value error, " before them.
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    named = _KEY_PATH.match(msg) if not loc else None
    if named:
        # A check across settings (a model validator) has no key path of its own: its message begins with the
        # one it is about ("watches.0.mask.missing: ..."), which then gets its line like any other.
        loc = tuple(int(part) if part.isdigit() else part for part in named[1].split("."))
        return loc, f"{named[1]}{_at(text, named[1])}{msg[named.end(1):]}"
    return loc, f"{key}{at}: {msg}"


# The key path a model validator's message begins with, before a colon: "watches.0.mask.missing: ...".
_KEY_PATH = re.compile(r"((?:presets|watches|engine|service)(?:\.[\w-]+)+)(?=:)")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _setting_at(model: type[BaseModel], loc: tuple) -> tuple[tuple, Any, tuple] | None:
    """(key path, type, constraints) of the setting a pydantic error's `loc` points into; None if not found.

    The key path stops where the setting is: a union's errors carry one
    more part per branch (`size.constrained-int`, `size.literal['full']`).
    """
    annotation: Any = model
    metadata: tuple = ()
    for i, part in enumerate(loc):
        inner, _ = _unwrap(annotation, ())
        inner = _non_null(inner)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            field = inner.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            annotation, metadata = field.annotation, tuple(field.metadata)
        elif get_origin(inner) is list and isinstance(part, int):
            annotation, metadata = get_args(inner)[0], ()
        elif get_origin(inner) is dict:
            annotation, metadata = get_args(inner)[1], ()
        elif get_origin(inner) in (Union, types.UnionType):
            return loc[:i], annotation, metadata  # the rest names the union's branch
        else:
            return None
    return loc, annotation, metadata


def _unwrap(annotation: Any, metadata: tuple) -> tuple[Any, tuple]:
    """The type inside Annotated[...], with its metadata (constraints, Says) added to `metadata`."""
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        metadata = (*metadata, *extra)
    return annotation, metadata


def _non_null(annotation: Any) -> Any:
    """X for X | None (pydantic tags no branch of a nullable type), else `annotation`."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0], ())[0]
    return annotation


def _takes(annotation: Any, metadata: tuple = ()) -> list[str]:
    """What a setting of this type takes, in the config's words: one entry per alternative."""
    annotation, metadata = _unwrap(annotation, metadata)
    for item in metadata:  # a Field(ge=16) inside Annotated carries its constraints as metadata of its own
        metadata = (*metadata, *getattr(item, "metadata", ()))
    says = next((item for item in metadata if isinstance(item, Says)), None)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return [word for arg in get_args(annotation) for word in _takes(arg, metadata)]
    if annotation is type(None):
        return ["null"]
    if origin is Literal:
        return [str(value) for value in get_args(annotation)]
    if annotation is bool:
        return ["true", "false"]
    if says is not None:
        return [str(says) + _bounds(metadata)]
    if origin is list:
        return [f"a list of {_plural(_takes(get_args(annotation)[0]))}"]
    if origin is dict:
        return ["a mapping of names to settings"]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [f"a mapping ({', '.join(annotation.model_fields)})"]
    nouns = {int: "a whole number", float: "a number", str: "text", SecretStr: "text", Path: "a path"}
    return [nouns.get(annotation, getattr(annotation, "__name__", str(annotation))) + _bounds(metadata)]


def _plural(words: list[str]) -> str:
    """'numbers (0 or more)' from ['a number (0 or more)']: what each entry of a list takes."""
    plural = {"a whole number": "whole numbers", "a number": "numbers", "text": "names", "a path": "paths",
              "a mapping": "mappings"}
    text = _alternatives(words)
    noun, sep, rest = text.partition(" (")
    return plural[noun] + sep + rest if noun in plural else f"entries, each {text}"


def _bounds(metadata: tuple) -> str:
    """' (16 or more)', ' (from 1 to 100)', ' (more than 0)'...: the constraints among `metadata`, or ''."""
    def first(name):
        return next((getattr(m, name) for m in metadata if getattr(m, name, None) is not None), None)

    ge, gt, le, lt = first("ge"), first("gt"), first("le"), first("lt")
    if ge is not None and le is not None:
        return f" (from {ge:g} to {le:g})"
    low = f"{ge:g} or more" if ge is not None else f"more than {gt:g}" if gt is not None else None
    high = f"{le:g} or less" if le is not None else f"less than {lt:g}" if lt is not None else None
    words = ", ".join(w for w in (low, high) if w)
    return f" ({words})" if words else ""


def _alternatives(words: list[str]) -> str:
    """'a, b or c' from ['a', 'b', 'c'] (each once)."""
    words = list(dict.fromkeys(words))
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model at `loc`, for 'did you mean' hints."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            # a dict of models (presets) or a list: look inside its value type
            current = _inner_model(current, part)
            continue
        current = _inner_model_of_annotation(field.annotation)
    return sorted(getattr(current, "model_fields", {}) or [])


def _inner_model(current: Any, part: Any) -> Any:
    if current is Config and part not in Config.model_fields:
        return Preset
    return current


def _inner_model_of_annotation(annotation: Any) -> Any:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model_of_annotation(arg)
        if found is not None:
            return found
    return None


def _line_of(text: str, loc: tuple) -> int | None:
    """1-based line of the YAML node at `loc`, or of its nearest ancestor."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        node = _child(node, part)
        if node is not None:
            line = node.start_mark.line + 1
    return line


def _child(node: yaml.Node, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == str(part):
                return key if not isinstance(value, (yaml.MappingNode, yaml.SequenceNode)) else value
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]
    return None


def _at(text: str | None, key: str) -> str:
    """' (line N)' for a dotted key path, where the YAML text has it."""
    loc = tuple(int(part) if part.isdigit() else part for part in key.split("."))
    where = _line_of(text, loc) if text else None
    return f" (line {where})" if where else ""


def resolve_paths(config: Config, base: Path, *, source: str, text: str | None = None,
                  problems: list[str] | None = None) -> Config:
    """Make paths absolute (relative to the config file), check style images and folder layout.

    Problems are appended to `problems` when given; otherwise the first
    batch of them is raised as one ConfigError.
    """
    found: list[str] = [] if problems is None else problems
    presets = {name: resolve_preset(p, base, source=source, key=f"presets.{name}", text=text, problems=found)
               for name, p in config.presets.items()}
    watches = [_resolve_watch(w, i, base, text=text, problems=found) for i, w in enumerate(config.watches)]
    if problems is None:
        _raise_if(found, source)
    return config.model_copy(update={
        "presets": presets, "watches": watches, "state_dir": _absolute(config.state_dir, base),
    })


def _absolute(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _resolve_watch(watch: Watch, index: int, base: Path, *, text: str | None, problems: list[str]) -> Watch:
    folders = {"input": _absolute(watch.input, base), "output": _absolute(watch.output, base)}
    if watch.failed is not None:
        folders["failed"] = _absolute(watch.failed, base)
    for key in ("proofs", "finals"):
        if getattr(watch, key) is not None:
            folders[key] = _absolute(getattr(watch, key), base)
    processed = watch.processed
    if watch.processed_dir is not None:
        moved = _absolute(watch.processed_dir, base)
        folders["processed"] = moved
        processed = f"move:{moved}"
    inbox = folders["input"]
    if watch.proof is not None:
        _check_proof_folders(watch, folders, index, text, problems)
    for key, folder in folders.items():
        if key != "input" and (folder == inbox or folder.is_relative_to(inbox)):
            problems.append(
                f"watches.{index}.{key}{_at(text, f'watches.{index}.{key}')}: {folder} is inside the watched "
                f"folder {inbox}; nst-watch would process its own files forever. Put it beside the input folder"
            )
    return watch.model_copy(update={**folders, "processed": processed})


def _check_proof_folders(watch: Watch, folders: dict[str, Path], index: int, text: str | None,
                         problems: list[str]) -> None:
    """The proofs folder apart from the finals, and the finals drop folder apart from every folder nst-watch
    writes into: a file nst-watch puts there would ask for a final nobody chose."""
    proofs = folders.get("proofs", folders["output"] / "proofs")
    finals = folders.get("finals", proofs / "finals")
    if proofs == folders["output"]:
        problems.append(f"watches.{index}.proofs{_at(text, f'watches.{index}.proofs')}: {proofs} is the output "
                        "folder; proofs and finals would share names. Give proofs a folder of its own "
                        "(default: OUTPUT/proofs)")
    written = {"proofs": proofs, "output": folders["output"], "processed": folders.get("processed"),
               "failed": folders.get("failed")}
    for key, folder in written.items():
        if folder is not None and (finals == folder or (key in ("processed", "failed")
                                                        and finals.is_relative_to(folder))):
            problems.append(
                f"watches.{index}.finals{_at(text, f'watches.{index}.finals')}: {finals} is where nst-watch writes "
                f"the {key if key != 'output' else 'finals'} files; each one would ask for a final nobody chose. "
                "Give finals a folder of its own (default: PROOFS/finals)")
            return


def resolve_preset(preset: Preset, base: Path, *, source: str, key: str, text: str | None = None,
                   problems: list[str] | None = None) -> Preset:
    """Style image paths made absolute (relative ones are read from `base`) and checked.

    Checks that each style image exists, is an image nst-watch reads, and is
    large enough for the deepest style layer once scaled to the preset's size
    (`style_size_problem`), and that `size` suits the layers at all. Problems
    go to `problems` when given, else they are raised as one ConfigError.
    """
    found: list[str] = [] if problems is None else problems

    def resolved(images: list[StyleImage], at: str) -> list[StyleImage]:
        out = []
        for i, style in enumerate(images):
            path = style.path.expanduser()
            path = (path if path.is_absolute() else (base / path)).resolve()
            where = key if key.startswith("--") else f"{at}.{i}.path{_at(text, f'{at}.{i}')}"
            out.append(style.model_copy(update={"path": path}))
            if not path.is_file():
                found.append(f"{where}: style image {path} does not exist (fix the path; relative paths are read "
                             "from " + ("the config file's folder)" if text else "the current folder)"))
                continue
            try:
                size = style_image_size(path)
            except ValueError as exc:
                found.append(f"{where}: {exc}")
                continue
            problem = style_size_problem(preset, size)
            if problem:
                found.append(f"{where}: style image {path} {problem}")
            else:
                warn_enlarged_style(preset, path, size)
        return out

    update: dict[str, Any] = {}
    if preset.styles:
        update["styles"] = resolved(preset.styles, f"{key}.styles")
    if preset.regions is not None:
        update["regions"] = {
            name: region if region.keeps_photo else region.model_copy(
                update={"styles": resolved(region.styles, f"{key}.regions.{name}.styles")})
            for name, region in preset.regions.items()}
    need = min_edge([*preset.content_layers, *preset.style_layers])
    if preset.size != "full" and preset.size < need:
        layer = deepest([*preset.content_layers, *preset.style_layers])
        found.append(f"{'--size' if key.startswith('--') else key + '.size'}{_at(text, f'{key}.size')}: {preset.size} px is smaller than the {need} px that "
                     f"layer {layer} needs, so no photo could be stylised; raise size to {need} or more")
    if problems is None:
        _raise_if(found, source)
    return preset.model_copy(update=update)


def style_image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a style image as the engine will see it (EXIF orientation applied).

    A camera RAW or HEIC serves as well as a JPEG (sized as developed and
    turned upright). Reads the header only. ValueError naming the file when it is not an
    image nst-watch reads.
    """
    from PIL import UnidentifiedImageError

    from .photo.decode import DEFAULT_FORMATS, displayed_size

    try:
        width, height, kind = displayed_size(path)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"style image {path} cannot be read as an image ({exc}); replace it") from None
    if kind not in DEFAULT_FORMATS:
        raise ValueError(f"style image {path} is {kind}, which nst-watch does not read; "
                         "convert it to JPEG, PNG, TIFF or WebP")
    return width, height


def style_size_problem(preset: Preset, size: tuple[int, int]) -> str | None:
    """Why a style image of `size` (width, height) cannot serve `preset`, or None.

    The engine scales each style image to a long edge of size x style_scale;
    its short edge must then still reach `min_edge(style_layers)`. Coarser
    pyramid scales are taken care of by the engine (it enlarges the style
    there), so only the full size matters.
    """
    if preset.size == "full":  # the size is the photo's: the engine checks each photo
        return None
    width, height = size
    long_edge = max(1, round(preset.size * preset.style_scale))
    scaled = [max(1, round(e * long_edge / max(width, height))) for e in (width, height)]
    need = min_edge(preset.style_layers)
    if min(scaled) >= need:
        return None
    scale = need * max(width, height) / (min(width, height) * preset.size)
    crop = "crop the style image to a less elongated shape"
    if scale > 8:
        fix = crop
    else:
        fix = f"raise style_scale to {scale:.2g} or more" + (f", or {crop}" if max(size) > 3 * min(size) else "")
    return (f"is {width}x{height}: scaled to size {preset.size} x style_scale {preset.style_scale:g} it becomes "
            f"{scaled[0]}x{scaled[1]}, too small for layer {deepest(preset.style_layers)}, which needs {need} px "
            f"on the short edge. Fix: {fix}")


# Above this long edge a style image is not enlarged past its own pixels (see style_long_edge).
STYLE_EDGE = 1024
# A style image enlarged more than this paints blur: its brush strokes and
# grain spread over several output pixels, and its Grams describe the blur.
STYLE_BLUR_FACTOR = 2.0
_warned_styles: set[tuple] = set()


def style_long_edge(edge: int, style_scale: float, own: int) -> int:
    """The long edge, in px, a style image whose own long edge is `own` gets at a scale of long edge `edge`.

    edge x style_scale; above STYLE_EDGE (1024 px) not past its own pixels
    (a small painting blown up to a 6000 px photo's size is mush) nor past
    twice that (more pixels cost a longer Gram pass and add no texture), and
    never below STYLE_EDGE either. Up to 1024 px the style scales with the
    photo. Used by the engine (Engine._style_size) and the enlargement warning.
    """
    long_edge = max(1, round(edge * style_scale))
    if long_edge > STYLE_EDGE:
        long_edge = max(STYLE_EDGE, min(long_edge, own, 2 * STYLE_EDGE))
    return long_edge


def style_enlargement(preset: Preset, size: tuple[int, int]) -> str | None:
    """Why a style image of `size` (width, height) comes out blurry at `preset`'s size, or None.

    Blurry: enlarged more than STYLE_BLUR_FACTOR (2x) on its long edge at the
    full-size scale. With `size: full` the photo's size is unknown; a style
    image is then enlarged at most to STYLE_EDGE (1024 px) on the long edge,
    which is what is judged. The text gives the size it is enlarged to and
    the size from which it is not blurry.
    """
    width, height = size
    own = max(width, height)
    edge = 2 * STYLE_EDGE if preset.size == "full" else preset.size
    long_edge = style_long_edge(edge, preset.style_scale, own)
    factor = long_edge / own
    if factor <= STYLE_BLUR_FACTOR:
        return None
    scaled = [max(1, round(e * long_edge / own)) for e in (width, height)]
    at = ("size: full (up to 1024 px for a style image this small)" if preset.size == "full"
          else f"size {preset.size} x style_scale {preset.style_scale:g}")
    sharp = math.ceil(long_edge / STYLE_BLUR_FACTOR)
    return (f"is {width}x{height} px: at {at} it is enlarged {factor:.3g}x, to {scaled[0]}x{scaled[1]}, so it "
            f"gives blur rather than its texture. It stops being blurry at {sharp} px on the long edge "
            f"({long_edge} px: not enlarged at all); use a larger scan or export of the style image")


def warn_enlarged_style(preset: Preset, path: Path, size: tuple[int, int]) -> None:
    """Log `style_enlargement`'s warning for one style image of `preset`, once per process and setting.

    A warning, not a problem: a blurry style is a choice that still works.
    """
    text = style_enlargement(preset, size)
    key = (preset.name, str(path), tuple(size), preset.size, preset.style_scale)
    if text is None or key in _warned_styles:
        return
    _warned_styles.add(key)
    log.warning("preset %r: style image %s %s", preset.name, path, text)


def preset_from_styles(styles: list[str], **settings: Any) -> Preset:
    """An ad-hoc preset for `nst-watch stylize --style IMG ...`; ConfigError names --style."""
    preset = validate(Preset, {"name": "custom", "styles": styles, **settings}, source="command line")
    return resolve_preset(preset, Path.cwd(), source="command line", key="--style")


def with_http(config: Config, http: str) -> Config:
    """`config` with its web view on `http` (the --http flag, which overrides service.http); ConfigError if refused."""
    try:
        problem = http_problem(http, config.service.http_token)
    except ValueError as exc:
        problem = str(exc)
    if problem:
        raise ConfigError(f"--http {http}: {problem}")
    return config.model_copy(update={"service": config.service.model_copy(update={"http": http})})


def with_ray(config: Config, address: str) -> Config:
    """`config` with the Ray backend at `address` (the --ray flag, which overrides `cluster:`)."""
    return config.model_copy(update={"cluster": ClusterSettings(backend="ray", address=address)})


def with_overrides(preset: Preset, **overrides: Any) -> Preset:
    """The preset with CLI/API overrides applied, re-validated.

    Nested settings merge key by key (``pyramid={"factor": 1.5}`` keeps the
    preset's min_size); None turns a nullable one off (``early_stop=None``).
    """
    if not overrides:
        return preset
    data = preset.model_dump()
    if not data["styles"]:
        del data["styles"]  # a preset of regions only: its empty default, which `styles:` as written may not be
    return validate(Preset, _merge(data, overrides), source="command line")


def _merge(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied; nested settings (pyramid, early_stop, output) merge key by key."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
