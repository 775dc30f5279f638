"""Settings: one vocabulary for YAML, CLI flags and the Python API.

The field names of `Preset` and `EngineSettings` are the names users type in
YAML, the CLI's `--flags` (with dashes) and the keyword arguments of the
Python API. Validation is pydantic's; this module only turns its errors into
messages that name the file, the key path and the line.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

_LAYER_PREFIXES = ("conv", "relu", "pool")
_VALID_LAYERS = {
    f"{kind}{block}_{i}"
    for block, convs in enumerate((2, 2, 4, 4, 4), start=1)
    for i in range(1, convs + 1)
    for kind in ("conv", "relu")
} | {f"pool{b}" for b in range(1, 6)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _style_from_string(value: Any) -> Any:
    return {"path": value} if isinstance(value, (str, Path)) else value


class StyleImage(_Strict):
    """One style image and its share of a blend."""

    path: Path
    weight: float = Field(1.0, gt=0)


class Pyramid(_Strict):
    """Coarse-to-fine schedule: each scale starts from the previous result.

    Scales run from `min_size` up to the preset's `size` in steps of
    `factor`; a coarse scale too small for the deepest layer is skipped.
    `iterations` lists iterations per scale, coarse to fine (the last value
    repeats); by default each coarser scale runs a tenth of the preset's
    `iterations` (it only has to lay the picture out, at a fraction of the
    cost: a half-size step costs a quarter) and the final scale all of them.
    """

    min_size: int = Field(64, ge=16)
    factor: float = Field(2.0, gt=1.0)
    iterations: list[Annotated[int, Field(ge=0)]] | None = None


class EarlyStop(_Strict):
    """Stop a scale when the loss stops falling.

    Every `every` iterations the mean loss of the last window is compared
    with the window before; an improvement below `min_improvement` (relative)
    ends the scale. Checked only at window ends, so the GPU is never made to
    wait for the host in between.
    """

    every: int = Field(50, ge=2)
    min_improvement: float = Field(0.001, ge=0)


class OutputSettings(_Strict):
    """How finished images are written (see nst_watch.photo)."""

    format: Literal["jpeg", "png", "webp", "tiff"] = "jpeg"
    quality: int = Field(95, ge=1, le=100)
    bit_depth: Literal[8, 16] = 8
    icc: Literal["srgb", "keep"] = "srgb"
    strip_gps: bool = False
    sidecar: bool = False

    @model_validator(mode="after")
    def _sixteen_bit_is_tiff(self) -> "OutputSettings":
        if self.bit_depth == 16 and self.format != "tiff":
            raise ValueError(f"bit_depth 16 needs format: tiff ({self.format} holds 8 bits per channel)")
        return self


class Preset(_Strict):
    """A named, hashable bundle of style images and optimisation settings."""

    name: str = "custom"
    styles: list[Annotated[StyleImage, BeforeValidator(_style_from_string)]] = Field(min_length=1)
    style_scale: float = Field(1.0, gt=0, description="style image long edge relative to the output's")
    size: int = Field(512, ge=16, description="output long edge in pixels")
    iterations: int = Field(500, ge=0)
    pyramid: Pyramid | None = Pyramid()
    early_stop: EarlyStop | None = EarlyStop()
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    learning_rate: float = Field(0.02, gt=0, description="Adam step on [0,1] pixels")
    average: float = Field(0.99, ge=0, lt=1, description="decay of the Adam iterate's moving average; 0 = off")
    history_size: int = Field(50, ge=1, description="L-BFGS history")
    content_weight: float = Field(1.0, ge=0)
    style_weight: float = Field(10.0, ge=0)
    tv_weight: float = Field(0.0, ge=0)
    content_layers: list[str] = Field(default_factory=lambda: ["relu4_2"], min_length=1)
    style_layers: list[str] = Field(
        default_factory=lambda: ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"], min_length=1
    )
    style_layer_weights: list[Annotated[float, Field(ge=0)]] | None = None
    color: Literal["none", "luminance", "histogram"] = "none"
    init: Literal["content", "noise", "gray"] = "content"
    seed: int = 0
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

    def fingerprint(self) -> str:
        """Hash of everything that changes the output pixels, except the style images' bytes."""
        data = self.model_dump(mode="json", exclude={"name", "output"})
        data["styles"] = [{"weight": s["weight"]} for s in data["styles"]]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class EngineSettings(_Strict):
    """The resident engine: where it runs and which VGG19 it loads."""

    device: str = Field("auto", description="auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    weights: str = Field(
        "torchvision",
        description="torchvision | caffe:PATH | PATH to a .pth with torchvision key names | random[:SEED] (tests only)",
    )
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    pooling: Literal["max", "avg"] = "max"
    padding: Literal["replicate", "zeros"] = "replicate"


DEFAULT_INCLUDE = ["*.jpg", "*.jpeg", "*.png", "*.tif", "*.tiff", "*.webp", "*.heic", "*.heif"]


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
    settle_seconds: float = Field(5.0, ge=0)
    polling: bool | Literal["auto"] = "auto"
    processed: str = Field("keep", description="keep | move:<dir>")
    failed: Path | None = Field(None, description="folder for photos that cannot be processed")
    template: str = "{stem}-{preset}.{ext}"
    collision: Literal["suffix", "skip", "overwrite"] = "suffix"
    format: Literal["jpeg", "png", "webp", "tiff"] | None = Field(None, description="overrides the preset's")

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


class ServiceSettings(_Strict):
    """The daemon and its workers."""

    batch: int = Field(4, ge=1, description="same-preset photos optimised together")
    lease_seconds: float = Field(300, gt=0, description="a worker silent this long has its job taken back")
    max_attempts: int = Field(3, ge=1)
    grace_seconds: float = Field(30, ge=0, description="on SIGTERM, time for the running job to finish")
    reconcile_seconds: float = Field(120, gt=0, description="full rescan of every watch, for lost events")


class Config(_Strict):
    """A whole config file."""

    state_dir: Path = Path("state")
    engine: EngineSettings = EngineSettings()
    service: ServiceSettings = ServiceSettings()
    presets: dict[str, Preset] = Field(default_factory=dict)
    watches: list[Watch] = Field(default_factory=list)
    max_pixels: int = Field(100_000_000, ge=1, description="largest photo accepted, in pixels")

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
    """Read, validate and resolve a YAML config; every failure is a ConfigError."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (pass the right path with -c/--config)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, not {type(data).__name__}")
    config = validate(Config, data, source=str(path), text=text)
    return resolve_paths(config, path.parent, source=str(path), text=text)


def validate(model: type[BaseModel], data: Any, *, source: str, text: str | None = None):
    """model.model_validate(data), with errors naming source, key path and line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err, model, text) for err in exc.errors()]
        raise ConfigError(f"{source}: invalid config:\n" + "\n".join(f"  - {line}" for line in lines)) from None


def _describe(err: dict, model: type[BaseModel], text: str | None) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(part) for part in loc) or "(top level)"
    where = _line_of(text, loc) if text else None
    at = f" (line {where})" if where else ""
    if err["type"] == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
        return f"{key}{at}: unknown key{hint}"
    return f"{key}{at}: {err['msg']}"


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


def resolve_paths(config: Config, base: Path, *, source: str, text: str | None = None) -> Config:
    """Make paths absolute (relative to the config file), check style images and folder layout."""
    presets = {name: resolve_preset(p, base, source=source, key=f"presets.{name}", text=text)
               for name, p in config.presets.items()}
    watches = [_resolve_watch(w, i, base, source=source, text=text) for i, w in enumerate(config.watches)]
    return config.model_copy(update={
        "presets": presets, "watches": watches, "state_dir": _absolute(config.state_dir, base),
    })


def _absolute(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _resolve_watch(watch: Watch, index: int, base: Path, *, source: str, text: str | None) -> Watch:
    folders = {"input": _absolute(watch.input, base), "output": _absolute(watch.output, base)}
    if watch.failed is not None:
        folders["failed"] = _absolute(watch.failed, base)
    processed = watch.processed
    if watch.processed_dir is not None:
        moved = _absolute(watch.processed_dir, base)
        folders["processed"] = moved
        processed = f"move:{moved}"
    inbox = folders["input"]
    for key, folder in folders.items():
        if key != "input" and (folder == inbox or folder.is_relative_to(inbox)):
            where = _line_of(text, ("watches", index, key)) if text else None
            at = f" (line {where})" if where else ""
            raise ConfigError(
                f"{source}: watches.{index}.{key}{at}: {folder} is inside the watched folder {inbox}; "
                "nst-watch would process its own files forever. Put it beside the input folder instead"
            )
    return watch.model_copy(update={**folders, "processed": processed})


def resolve_preset(preset: Preset, base: Path, *, source: str, key: str, text: str | None = None) -> Preset:
    styles = []
    for i, style in enumerate(preset.styles):
        path = style.path.expanduser()
        path = path if path.is_absolute() else (base / path)
        if not path.is_file():
            where = _line_of(text, tuple(key.split(".")) + ("styles", i)) if text else None
            at = f" (line {where})" if where else ""
            raise ConfigError(
                f"{source}: {key}.styles.{i}.path{at}: style image {path} does not exist "
                "(fix the path; relative paths are read from the config file's folder)"
            )
        styles.append(style.model_copy(update={"path": path.resolve()}))
    return preset.model_copy(update={"styles": styles})


def preset_from_styles(styles: list[str], **settings: Any) -> Preset:
    """An ad-hoc preset for `nst-watch stylize --style IMG ...`."""
    preset = validate(Preset, {"name": "custom", "styles": styles, **settings}, source="command line")
    return resolve_preset(preset, Path.cwd(), source="command line", key="--style")


def with_overrides(preset: Preset, **overrides: Any) -> Preset:
    """The preset with CLI/API overrides applied (None means 'not given'), re-validated."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return preset
    data = preset.model_dump()
    data.update(given)
    return validate(Preset, data, source="command line")
