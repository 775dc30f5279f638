"""The `nst-watch` command line.

Exit codes: 0 ok, 1 failure, 2 usage, 78 config error. Logs go to stderr;
stdout carries only results (`--json` where a script reads them). Torch is
imported only by the commands that run the engine.
"""

from __future__ import annotations

import json
import logging
import sys
from functools import partial
from pathlib import Path

import click

from . import __version__
from .config import (DEFAULT_HTTP, Config, EngineSettings, load_config, parse_budget, parse_http,
                     preset_from_styles, with_overrides)
from .errors import EXIT_FAILURE, ConfigError, NstWatchError, PhotoError
from .logs import fatal_line, setup_logging
from .service.status import RECENT

log = logging.getLogger("nst_watch")

DEFAULT_TEMPLATE = "{stem}-{preset}.{ext}"


class _Group(click.Group):
    """Turns NstWatchError into its message on stderr (with `<3>` for journald) and its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NstWatchError as exc:
            click.echo(fatal_line(str(exc)), err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nst-watch")
@click.option("-v", "--verbose", count=True, help="More log detail (-vv for libraries too).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """nst-watch: a neural-style-transfer darkroom for folders of photos.

    Stylise photos with Gatys et al.'s method on a resident VGG19.
    """
    setup_logging(-1 if quiet else verbose)


# --- stylize -----------------------------------------------------------------------
#
# Every preset setting has a flag named after it (nested keys joined with a
# dash: pyramid.min_size is --pyramid-min-size), with the setting's own help
# text and default, so YAML, CLI and API share one vocabulary. A flag left
# out keeps the preset's value.


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _size(text: str) -> int | str:
    """--size: pixels, or full."""
    if text.strip().lower() == "full":
        return "full"
    try:
        return int(text)
    except ValueError:
        raise ValueError("give a long edge in pixels, or full") from None


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# (setting path in the preset, click type or converter, metavar); the flag is the path with dashes.
_PRESET_FLAGS: list[tuple[str, object, str | None]] = [
    ("size", _size, "PX|full"),
    ("iterations", int, "N"),
    ("style_weight", float, "W"),
    ("content_weight", float, "W"),
    ("tv_weight", float, "W"),
    ("style_scale", float, "X"),
    ("color", click.Choice(["none", "luminance", "histogram"]), None),
    ("optimizer", click.Choice(["lbfgs", "adam"]), None),
    ("init", click.Choice(["content", "noise", "gray"]), None),
    ("seed", int, "N"),
    ("learning_rate", float, "LR"),
    ("average", float, "DECAY"),
    ("history_size", int, "N"),
    ("content_layers", _names, "L1,L2"),
    ("style_layers", _names, "L1,..."),
    ("style_layer_weights", _floats, "W1,..."),
    ("pyramid.min_size", int, "PX"),
    ("pyramid.factor", float, "X"),
    ("pyramid.iterations", _ints, "N1,..."),
    ("early_stop.every", int, "N"),
    ("early_stop.min_change", float, "LEVELS"),
    ("output.format", click.Choice(["jpeg", "png", "webp", "tiff"]), None),
    ("output.quality", int, "1-100"),
    ("output.bit_depth", click.Choice(["8", "16"]), None),
    ("output.icc", click.Choice(["srgb", "keep"]), None),
]
_PRESET_SWITCHES = [  # (flag, setting path, value when given, help)
    ("--no-pyramid", "pyramid", None, "Optimise at full size only (pyramid: null)."),
    ("--no-early-stop", "early_stop", None, "Run every iteration (early_stop: null)."),
    ("--strip-gps", "output.strip_gps", True, "Leave the GPS position out of the output's metadata."),
    ("--sidecar", "output.sidecar", True, "Write <output>.json with parameters, hashes and timings."),
]


def _setting(path: str):
    """(help, default) of a Preset setting, from the model itself."""
    from .config import Preset

    *parents, leaf = path.split(".")
    model = Preset
    for part in parents:
        model = type(model.model_fields[part].get_default())
    field = model.model_fields[leaf]
    default = field.get_default(call_default_factory=True)
    if isinstance(default, list):
        default = ",".join(map(str, default))
    text = field.description or ""
    return text[:1].upper() + text[1:], default


def _convert(converter, ctx, param, value):
    """A flag's text through its converter; a value it cannot read is a usage error (exit 2) naming the flag."""
    if value is None:
        return None
    try:
        return converter(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from None


def _preset_options(command):
    for path, kind, metavar in reversed(_PRESET_FLAGS):
        help_text, default = _setting(path)
        converter = None if kind in (int, float) or isinstance(kind, click.ParamType) else kind
        option = click.option(
            "--" + path.replace("_", "-").replace(".", "-"), path.replace(".", "__"),
            type=str if converter else kind, metavar=metavar, help=help_text or None,
            default=None if default is None else str(default), show_default=default is not None,
            callback=partial(_convert, converter) if converter else None,
        )
        command = option(command)
    for flag, path, _, help_text in reversed(_PRESET_SWITCHES):
        command = click.option(flag, "switch__" + path.replace(".", "__"), is_flag=True, help=help_text)(command)
    return command


def _preset_overrides(ctx: click.Context, values: dict) -> dict:
    """Flags given on the command line -> nested preset overrides; defaults shown in --help are not overrides."""
    from click.core import ParameterSource

    overrides: dict = {}
    for key, value in values.items():
        if ctx.get_parameter_source(key) != ParameterSource.COMMANDLINE:
            continue
        if key.startswith("switch__"):
            path = key[len("switch__"):]
            value = next(v for _, p, v, _ in _PRESET_SWITCHES if p.replace(".", "__") == path)
        else:
            path = key
            if path == "output__bit_depth":
                value = int(value)
        *parents, leaf = path.split("__")
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return overrides


@main.command()
@click.argument("contents", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), help="Config file holding presets.")
@click.option("-p", "--preset", "preset_name", help="Preset name from --config.")
@click.option("-s", "--style", "styles", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Style image (repeat to blend several); instead of --preset.")
@click.option("-m", "--mask", "masks", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Mask painted over the photo, any size with its aspect (repeat: one per photo, in order). "
              "White: the style; black: keep the photo; greys blend. With a preset's regions: each region's "
              "colour, soft edges between two blend.")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file (one photo only).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), help="Output folder.",
              show_default="the current folder")
@click.option("--template", default=DEFAULT_TEMPLATE, show_default=True,
              help="Output name template for --out-dir; tokens {stem} {ext} {preset} {date} {time} {hash8} "
              "{counter} {width} {height}.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output instead of adding ' (1)'.")
@click.option("--weights", help="VGG19 weights: caffe (bundled original) | torchvision | caffe:PATH | PATH | "
              "random (tests only).", show_default=EngineSettings().weights)
@click.option("--device", help="auto | cpu | cuda | cuda:N.", show_default=EngineSettings().device)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp64"]),
              show_default=EngineSettings().precision,
              help="auto: on CUDA bf16 convolutions where a scale has 1 MP or more a batch, fp32 below; fp32 on "
              "CPU; fp64 only to check exactness (slow).")
@click.option("--max-memory", metavar="SIZE",
              callback=lambda ctx, param, value: _convert(parse_budget, ctx, param, value),
              help="Peak memory for the engine, e.g. 1.5GB; larger images run in exact tiles.",
              show_default="80% of free GPU memory, or half the available RAM")
@click.option("--batch", default=4, show_default=True, help="Photos optimised together (same output size only).")
@click.option("--json", "as_json", is_flag=True, help="Print one record per photo as JSON on stdout.")
@click.option("--proof", type=click.IntRange(min=16), metavar="PX",
              help="Proof: render at this long edge into OUT-DIR/proofs (a daemon's `submit --proof` keeps what "
              "a final needs; see `render`).")
@_preset_options
@click.pass_context
def stylize(ctx, contents, config_path, preset_name, styles, masks, output, out_dir, template, overwrite, weights,
            device, precision, max_memory, batch, as_json, proof, **settings):
    """Stylise CONTENT photos with a preset or with --style images.

    Preset settings below override the preset's (or, with --style, the
    defaults shown). Photos (or their --mask) that cannot be read are
    reported and skipped; the exit code is then 1.
    """
    if masks and len(masks) != len(contents):
        raise click.UsageError(f"{len(masks)} --mask for {len(contents)} photos: give one --mask per photo, in the "
                               "photos' order, or none")
    if bool(preset_name) == bool(styles):
        raise click.UsageError("give either --preset NAME (with --config FILE) or one or more --style IMAGE")
    if preset_name and not config_path:
        raise click.UsageError("--preset needs --config FILE")
    if output and len(contents) > 1:
        raise click.UsageError("-o/--output takes one photo; use --out-dir for several")
    if output and out_dir:
        raise click.UsageError("give -o/--output or --out-dir, not both")
    if proof and output:
        raise click.UsageError("--proof writes into OUT-DIR/proofs: give --out-dir (or neither), not -o/--output")
    if proof and ctx.get_parameter_source("size") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--proof PX is the size of the proofs: give --proof or --size, not both")
    if output and not output.parent.is_dir():
        raise click.BadParameter(f"the folder {output.parent} does not exist", param_hint="-o/--output")
    from .photo import validate_template

    try:
        validate_template(template)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--template") from None

    config = load_config(config_path) if config_path else Config()
    overrides = _preset_overrides(ctx, settings)
    if proof:
        overrides["size"] = proof
        out_dir = (out_dir or Path.cwd()) / "proofs"
        out_dir.mkdir(parents=True, exist_ok=True)
    if preset_name:
        preset = with_overrides(config.preset(preset_name), **overrides)
    else:
        try:
            preset = preset_from_styles([str(s) for s in styles], **overrides)
        except ConfigError as exc:  # the flags given make an unusable preset
            raise click.UsageError(str(exc).replace("command line: invalid config", "invalid --style or flags")) \
                from None
    if not masks and preset.regions is not None and not preset.styles:
        raise click.UsageError(f"preset {preset.name!r} paints regions ({', '.join(preset.regions)}) and has no "
                               "styles of its own: give --mask FILE for each photo, painted in the regions' colours")
    try:
        engine_settings = _engine_settings(config.engine, weights=weights, device=device, precision=precision,
                                           max_memory=max_memory)
    except ConfigError as exc:  # e.g. --max-memory lots
        raise click.UsageError(str(exc)) from None

    from .darkroom import Darkroom  # imports torch

    # The engine loads on first use: photos and style images are checked first.
    darkroom = Darkroom(engine_settings, max_pixels=config.max_pixels)
    results = darkroom.stylize_files(
        contents, preset, output=output, out_dir=out_dir or Path.cwd(), template=template,
        collision="overwrite" if overwrite else "suffix", batch=batch, masks=list(masks) or None,
    )
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            click.echo(str(r.output) if r.output else f"{r.content}: skipped")
    if any(r.error for r in results):
        sys.exit(EXIT_FAILURE)


def _engine_settings(base: EngineSettings, **overrides) -> EngineSettings:
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return base
    from .config import validate

    return validate(EngineSettings, {**base.model_dump(), **given}, source="command line")


# --- weights -------------------------------------------------------------------------


@main.group(cls=_Group)
def weights() -> None:
    """Fetch, check and locate the VGG19 weights."""


@weights.command("download")
def weights_download() -> None:
    """Download torchvision's VGG19 (574 MB, hash-checked) into the torch cache."""
    from .engine import weights as w

    path = w.download(progress=True)
    click.echo(str(path))


_spec_argument = click.argument("spec", required=False, default=EngineSettings().weights)


@weights.command("verify")
@_spec_argument
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def weights_verify(spec: str, as_json: bool) -> None:
    """Check the weights SPEC loads (default: caffe, the bundled ones): hash, keys, shapes, values.

    SPEC is what engine.weights / --weights take: caffe, torchvision, caffe:PATH, PATH.
    """
    from .engine import weights as w

    report = w.verify(spec)
    if as_json:
        click.echo(json.dumps({"spec": report.spec, "path": str(report.path) if report.path else None,
                               "ok": report.ok, "details": list(report.details), "problems": list(report.problems)}))
    else:
        click.echo(str(report))
    if not report.ok:
        sys.exit(EXIT_FAILURE)


@weights.command("where")
@_spec_argument
def weights_where(spec: str) -> None:
    """Print the file SPEC loads (default: caffe, the bundled weights; torchvision: its cache path)."""
    from .engine import weights as w

    path = w.spec_path(spec)
    if path is None:
        raise click.UsageError(f"{spec!r}: random weights are generated on load and have no file")
    click.echo(str(path))


# --- the daemon ----------------------------------------------------------------------

_config_option = click.option("-c", "--config", "config_path", required=True, type=click.Path(path_type=Path),
                              help="Config file (YAML).")


def _http_address(text: str) -> str:
    parse_http(text)  # ValueError: a usage error naming --http
    return text


_http_option = click.option(
    "--http", "http", is_flag=False, flag_value=DEFAULT_HTTP, default=None, metavar="[HOST:PORT]",
    callback=lambda ctx, param, value: _convert(_http_address, ctx, param, value),
    help=f"Serve the web view (overrides service.http); alone: {DEFAULT_HTTP}. Beyond 127.0.0.1 it needs "
    "service.http_token.")


_ray_option = click.option(
    "--ray", "ray", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
    help="Run the engines on a Ray cluster, one per GPU (overrides `cluster:`); alone: auto, the cluster this "
    "machine joined with `ray start`. Needs the [ray] extra: pip install -e '.[ray]' in the nst-watch checkout.")


@main.command()
@_config_option
@_http_option
@_ray_option
def run(config_path: Path, http: str | None, ray: str | None) -> None:
    """Run the hot-folder daemon in the foreground: watcher plus one worker.

    With --ray (or cluster.backend: ray) the engines are Ray actors, one per
    GPU of the cluster, and this machine reads and writes the photos.
    SIGTERM/SIGINT finish the running job (within service.grace_seconds) and
    exit 0; SIGHUP reloads the config.
    """
    from .service.daemon import Daemon

    sys.exit(Daemon(config_path, role="run", live_view=sys.stderr.isatty(), http=http, ray=ray).serve())


@main.command()
@_config_option
@_http_option
def watch(config_path: Path, http: str | None) -> None:
    """Watch folders and fill the ledger, without an engine (pair with `work`)."""
    from .service.daemon import Daemon

    sys.exit(Daemon(config_path, role="watch", http=http).serve())


@main.command()
@_config_option
@click.option("--device", help="cpu | cuda | cuda:N (default: engine.device).")
@_ray_option
def work(config_path: Path, device: str | None, ray: str | None) -> None:
    """Run one worker (one resident engine) on one device, taking jobs from the ledger.

    With --ray (or cluster.backend: ray): one engine per GPU of a Ray
    cluster instead, photos read and written here (pair with `watch`).
    """
    from .service.daemon import Daemon

    if ray is not None and device is not None:
        raise click.UsageError("--device picks a local device; with --ray, Ray places one engine per GPU")
    sys.exit(Daemon(config_path, role="ray" if ray is not None else "work", device=device, ray=ray).serve())


def _ledger(config: Config):
    from .jobs import Ledger

    config.state_dir.mkdir(parents=True, exist_ok=True)
    return Ledger(config.ledger_path, lease_seconds=config.service.lease_seconds,
                  max_attempts=config.service.max_attempts)


@main.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--recent", default=RECENT, show_default=True, help="How many recent jobs to list.")
def status(config_path: Path, as_json: bool, recent: int) -> None:
    """Whether a daemon runs, job counts, processes and their jobs, entries not taken, originals not moved,
    recent jobs, failures.

    --json prints one object; "running" is false when no daemon or worker is
    alive. File names are escaped, never printed raw.
    """
    from .service.status import render, snapshot, to_json

    config = load_config(config_path)
    if config.ledger_path.exists():
        with _ledger(config) as ledger:
            snap = snapshot(config.state_dir, ledger, recent=recent)
    else:
        # Never run with this config: an empty queue, and no state created (a look must not write).
        import tempfile

        from .jobs import Ledger

        with tempfile.TemporaryDirectory() as scratch, Ledger(Path(scratch) / "jobs.db") as ledger:
            snap = snapshot(config.state_dir, ledger, recent=recent)
    if as_json:
        click.echo(to_json(snap))
    else:
        from rich.console import Console

        Console(highlight=False).print(render(snap))


@main.command()
@_config_option
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-p", "--preset", "presets", multiple=True, required=True, help="Preset (repeat for several).")
@click.option("--mask", "masks", multiple=True, type=click.Path(path_type=Path),
              help="The photo's mask: a painted image saying where each style goes (one per FILE, in order).")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Where the results go.")
@click.option("--proof", type=click.IntRange(min=16), metavar="PX",
              help="Proofs at this long edge into OUT-DIR/proofs; `render JOB_ID` then makes the keepers' finals.")
@click.option("--json", "as_json", is_flag=True)
def submit(config_path: Path, files, presets, masks, out_dir: Path, proof: int | None, as_json: bool) -> None:
    """Queue FILES for a running daemon (from Lightroom, a script, ...). Originals (and masks) are never moved.

    With --proof PX each photo x preset is proofed at PX into OUT-DIR/proofs
    (a preset no larger renders at once); `nst-watch render JOB_ID` renders
    the keepers' finals into OUT-DIR, starting from their proofs.

    A mask (--mask, one per FILE) is checked against each preset before
    anything is queued: readable, the photo's aspect ratio, only colours the
    preset's regions name, no region too small at the preset's size. A
    preset that names regions needs one.
    """
    from .photo.decode import sniff
    from .service.identity import file_sha256
    from .service.proofs import rendering

    config = load_config(config_path)
    chosen = {name: config.preset(name) for name in presets}
    if masks and len(masks) != len(files):
        raise click.UsageError(f"--mask given {len(masks)} time(s) for {len(files)} file(s): give one --mask per "
                               "FILE, in the same order")
    records, bad = [], 0

    def refuse(path: Path, error: str, **extra) -> None:
        nonlocal bad
        log.error("%s; not queued", error)
        records.append({"file": str(path), **extra, "error": error})
        bad += 1

    with _ledger(config) as ledger:
        for path, mask in zip(files, masks or [None] * len(files)):
            path = path.resolve()
            mask = mask.resolve() if mask is not None else None
            problem = next((f"{p}: not a regular file" for p in (path, mask)
                            if p is not None and (not p.is_file() or p.is_symlink())), None)
            if problem is not None:
                refuse(path, problem)
                continue
            try:  # what is no photo fails here, at once, rather than once per preset in the queue
                with open(path, "rb") as f:
                    sniff(path, f)
            except PhotoError as exc:
                refuse(path, str(exc))
                continue
            sha = file_sha256(path)
            mask_sha = file_sha256(mask) if mask is not None else None
            for name, preset in chosen.items():
                problem = _submit_mask_problem(path, mask, preset, config.max_pixels) or (
                    _proof_size_problem(path, preset, proof) if proof is not None else None)
                if problem is not None:
                    refuse(path, problem, preset=name)
                    continue
                result = ledger.add(sha256=sha, preset=name, source_path=path, mask_path=mask, mask_sha256=mask_sha,
                                    **rendering(preset, path, proof=proof, output_dir=out_dir.resolve(),
                                                proofs_dir=out_dir.resolve() / "proofs"))
                job = result.job
                records.append({"file": str(path), "preset": name, "mask": str(mask) if mask else None,
                                "job": job.id, "created": result.created, "state": job.state, "role": job.role,
                                "output": job.output_path})
                if not as_json:
                    word = "queued" if result.created else f"already {job.state}"
                    if result.created and proof is not None:
                        word += (f" as a {proof} px proof" if job.proof else
                                 f" at its own size {preset.size} px, no larger than the proof")
                    with_mask = f" with mask {mask.name}" if mask else ""
                    click.echo(f"{path} [{name}]{with_mask}: {word} (job {job.id})")
    if as_json:
        click.echo(json.dumps(records, indent=2))
    if bad:
        sys.exit(EXIT_FAILURE)


def _proof_size_problem(photo: Path, preset, proof: int) -> str | None:
    """Why `photo` cannot be proofed at `proof` px with `preset` (too thin for its deepest layer), else None."""
    from .config import deepest, min_edge
    from .photo.decode import displayed_size

    try:
        width, height, _ = displayed_size(photo)
    except Exception:  # noqa: BLE001 - the worker says why it cannot be read
        return None
    scale = proof / max(width, height)
    need = min_edge([*preset.content_layers, *preset.style_layers])
    if round(min(width, height) * scale) >= need:
        return None
    return (f"{photo}: --proof {proof} makes it {max(1, round(width * scale))}x{max(1, round(height * scale))}, too "
            f"small for layer {deepest([*preset.content_layers, *preset.style_layers])} (a short edge of {need} px); "
            f"it fits at --proof {-(-need * max(width, height) // min(width, height))} or more")


def _submit_mask_problem(photo: Path, mask: Path | None, preset, max_pixels: int) -> str | None:
    """Why `mask` (or its absence) cannot serve `photo` with `preset`, naming the file and the fix; None if fine.

    Torch-free: the mask is read (nst_watch.photo.mask) and checked at the
    output size the photo's header gives.
    """
    from .service.identity import size_bucket

    if mask is None:
        if preset.needs_mask:
            return (f"{photo}: preset {preset.name!r} names regions, so it needs a mask: give --mask FILE (a "
                    "painted image in the regions' colours)")
        return None
    from .photo.decode import displayed_size
    from .photo.mask import check_regions, load_mask

    try:
        width, height, _ = displayed_size(photo)
        loaded = load_mask(mask, preset, photo_size=(width, height), max_pixels=max_pixels)
        out_w, out_h = map(int, size_bucket(photo, preset.size).split("x"))
        check_regions(loaded, preset, (out_h, out_w))
    except PhotoError as exc:  # MaskError among them
        return str(exc)
    except (OSError, ValueError, AttributeError) as exc:
        return f"{photo}: cannot be read to check its mask {mask}: {exc}"
    return None


@main.command()
@_config_option
@click.argument("job_ids", nargs=-1, type=int, required=True)
@click.option("--size", "size", metavar="full|PX", help="The finals' long edge.",
              show_default="the preset's own size")
@click.option("--json", "as_json", is_flag=True, help="One record per JOB_ID as JSON on stdout.")
def render(config_path: Path, job_ids, size: str | None, as_json: bool) -> None:
    """Render the finals of proofs JOB_ID... (see `status`: role proof) for a running daemon.

    Each final starts from its proof's result at the proof's size and only
    refines above it, so it looks like the proof. Asking again gives the same
    job (a failed one is queued again). Exit 1 when a JOB_ID is no done proof.
    """
    from .service.proofs import FinalError, parse_size, request_final

    try:
        wanted = parse_size(size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--size") from None
    config = load_config(config_path)
    records, bad = [], 0
    with _ledger(config) as ledger:
        for job_id in job_ids:
            try:
                result = request_final(config, ledger, job_id, wanted)
            except FinalError as exc:
                log.error("%s", exc)
                records.append({"proof": job_id, "error": str(exc)})
                bad += 1
                continue
            job = result.job
            records.append({"proof": job_id, "job": job.id, "created": result.created, "requeued": result.requeued,
                            "state": job.shown_state, "size": job.size, "output_dir": job.output_dir,
                            "output": job.output_path})
            if not as_json:
                click.echo(f"proof {job_id}: final {result.word} (job {job.id}) -> {job.output_path or job.output_dir}")
    if as_json:
        click.echo(json.dumps(records, indent=2))
    if bad:
        sys.exit(EXIT_FAILURE)


@main.command()
@_config_option
@click.argument("job_ids", nargs=-1, type=int)
@click.option("--failed", is_flag=True, help="Every failed job.")
@click.option("--dead", is_flag=True, help="Every job that ran out of attempts.")
def retry(config_path: Path, job_ids, failed: bool, dead: bool) -> None:
    """Queue failed or dead jobs again (photos moved to failed/ are picked up from there)."""
    if not job_ids and not failed and not dead:
        raise click.UsageError("give JOB_IDs, --failed or --dead")
    config = load_config(config_path)
    with _ledger(config) as ledger:
        count = ledger.retry(job_ids, failed=failed, dead=dead)
    click.echo(f"{count} job(s) queued again")


# --- validate ------------------------------------------------------------------------


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(path_type=Path))
def validate(config_path: Path) -> None:
    """Check a config file; exit 78 naming the key and line if it is wrong."""
    config = load_config(config_path)
    click.echo(f"{config_path}: ok ({len(config.presets)} presets)")
