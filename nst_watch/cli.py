"""The `nst-watch` command line.

Exit codes: 0 ok, 1 failure, 2 usage, 78 config error. Logs go to stderr;
stdout carries only results (`--json` where a script reads them). Torch is
imported only by the commands that run the engine.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from . import __version__
from .config import Config, EngineSettings, load_config, preset_from_styles, with_overrides
from .errors import EXIT_FAILURE, NstWatchError
from .logs import setup_logging

log = logging.getLogger("nst_watch")

DEFAULT_TEMPLATE = "{stem}-{preset}.{ext}"


class _Group(click.Group):
    """Turns NstWatchError into its message on stderr and its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NstWatchError as exc:
            click.echo(f"nst-watch: error: {exc}", err=True)
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


@main.command()
@click.argument("contents", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), help="Config file holding presets.")
@click.option("-p", "--preset", "preset_name", help="Preset name from --config.")
@click.option("-s", "--style", "styles", multiple=True, type=click.Path(path_type=Path),
              help="Style image (repeat to blend several); instead of --preset.")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), help="Output file (one photo only).")
@click.option("--out-dir", type=click.Path(path_type=Path), help="Output folder [default: current folder].")
@click.option("--template", default=DEFAULT_TEMPLATE, show_default=True, help="Output name template for --out-dir.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output instead of adding ' (1)'.")
@click.option("--weights", help="torchvision | caffe:PATH | PATH | random (tests only).")
@click.option("--device", help="auto | cpu | cuda | cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]))
@click.option("--size", type=int, help="Output long edge in pixels.")
@click.option("--iterations", type=int, help="Iterations at full size (each coarser pyramid scale runs a tenth).")
@click.option("--style-weight", type=float)
@click.option("--content-weight", type=float)
@click.option("--tv-weight", type=float)
@click.option("--style-scale", type=float, help="Style image size relative to the output.")
@click.option("--color", type=click.Choice(["none", "luminance", "histogram"]))
@click.option("--optimizer", type=click.Choice(["adam", "lbfgs"]))
@click.option("--init", type=click.Choice(["content", "noise", "gray"]))
@click.option("--seed", type=int)
@click.option("--batch", default=4, show_default=True, help="Photos optimised together (same size only).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON on stdout.")
def stylize(contents, config_path, preset_name, styles, output, out_dir, template, overwrite, weights, device,
            precision, size, iterations, style_weight, content_weight, tv_weight, style_scale, color, optimizer,
            init, seed, batch, as_json):
    """Stylise CONTENT photos with a preset or with --style images."""
    if bool(preset_name) == bool(styles):
        raise click.UsageError("give either --preset NAME (with --config FILE) or one or more --style IMAGE")
    if preset_name and not config_path:
        raise click.UsageError("--preset needs --config FILE")
    if output and len(contents) > 1:
        raise click.UsageError("-o/--output takes one photo; use --out-dir for several")
    if output and out_dir:
        raise click.UsageError("give -o/--output or --out-dir, not both")

    config = load_config(config_path) if config_path else Config()
    overrides = dict(size=size, iterations=iterations, style_weight=style_weight, content_weight=content_weight,
                     tv_weight=tv_weight, style_scale=style_scale, color=color, optimizer=optimizer, init=init,
                     seed=seed)
    if preset_name:
        preset = with_overrides(config.preset(preset_name), **overrides)
    else:
        preset = preset_from_styles([str(s) for s in styles], **{k: v for k, v in overrides.items() if v is not None})
    engine_settings = _engine_settings(config.engine, weights=weights, device=device, precision=precision)

    from .darkroom import Darkroom  # imports torch

    darkroom = Darkroom(engine_settings, max_pixels=config.max_pixels)
    results = darkroom.stylize_files(
        contents, preset, output=output, out_dir=out_dir or Path.cwd(), template=template,
        collision="overwrite" if overwrite else "suffix", batch=batch,
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


@weights.command("verify")
@click.argument("spec", required=False)
@click.option("--json", "as_json", is_flag=True)
def weights_verify(spec: str | None, as_json: bool) -> None:
    """Check a weights file (default: the cached torchvision file): hash, keys, shapes."""
    from .engine import weights as w

    report = w.verify(spec or "torchvision")
    if as_json:
        click.echo(json.dumps({"spec": report.spec, "path": str(report.path) if report.path else None,
                               "ok": report.ok, "details": list(report.details), "problems": list(report.problems)}))
    else:
        click.echo(str(report))
    if not report.ok:
        sys.exit(EXIT_FAILURE)


@weights.command("where")
def weights_where() -> None:
    """Print where the torchvision VGG19 file is (or would be) cached."""
    from .engine import weights as w

    click.echo(str(w.cache_path()))


# --- the daemon ----------------------------------------------------------------------

_config_option = click.option("-c", "--config", "config_path", required=True, type=click.Path(path_type=Path),
                              help="Config file (YAML).")


@main.command()
@_config_option
def run(config_path: Path) -> None:
    """Run the hot-folder daemon in the foreground: watcher plus one worker.

    SIGTERM/SIGINT finish the running job (within service.grace_seconds) and
    exit 0; SIGHUP reloads the config.
    """
    from .service.daemon import Daemon

    sys.exit(Daemon(config_path, role="run", live_view=sys.stderr.isatty()).serve())


@main.command()
@_config_option
def watch(config_path: Path) -> None:
    """Watch folders and fill the ledger, without an engine (pair with `work`)."""
    from .service.daemon import Daemon

    sys.exit(Daemon(config_path, role="watch").serve())


@main.command()
@_config_option
@click.option("--device", help="cpu | cuda | cuda:N (default: engine.device).")
def work(config_path: Path, device: str | None) -> None:
    """Run one worker (one resident engine) on one device, taking jobs from the ledger."""
    from .service.daemon import Daemon

    sys.exit(Daemon(config_path, role="work", device=device).serve())


def _ledger(config: Config):
    from .jobs import Ledger

    config.state_dir.mkdir(parents=True, exist_ok=True)
    return Ledger(config.ledger_path, lease_seconds=config.service.lease_seconds,
                  max_attempts=config.service.max_attempts)


@main.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--recent", default=10, show_default=True, help="How many recent jobs to list.")
def status(config_path: Path, as_json: bool, recent: int) -> None:
    """Job counts per state, running processes, recent jobs and failures with reasons."""
    from .service.status import render, snapshot

    config = load_config(config_path)
    with _ledger(config) as ledger:
        snap = snapshot(config.state_dir, ledger, recent=recent)
    if as_json:
        click.echo(json.dumps(snap, indent=2))
    else:
        from rich.console import Console

        Console().print(render(snap))


@main.command()
@_config_option
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-p", "--preset", "presets", multiple=True, required=True, help="Preset (repeat for several).")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Where the results go.")
@click.option("--json", "as_json", is_flag=True)
def submit(config_path: Path, files, presets, out_dir: Path, as_json: bool) -> None:
    """Queue FILES for a running daemon (from Lightroom, a script, ...). Originals are never moved."""
    from .service.identity import file_sha256, preset_hash, size_bucket

    config = load_config(config_path)
    chosen = {name: config.preset(name) for name in presets}
    records, bad = [], 0
    with _ledger(config) as ledger:
        for path in files:
            path = path.resolve()
            if not path.is_file() or path.is_symlink():
                log.error("%s: not a regular file; not queued", path)
                records.append({"file": str(path), "error": "not a regular file"})
                bad += 1
                continue
            sha = file_sha256(path)
            for name, preset in chosen.items():
                result = ledger.add(sha256=sha, preset=name, preset_hash=preset_hash(preset), source_path=path,
                                    output_dir=out_dir.resolve(), bucket=size_bucket(path, preset.size))
                job = result.job
                records.append({"file": str(path), "preset": name, "job": job.id, "created": result.created,
                                "state": job.state, "output": job.output_path})
                if not as_json:
                    word = "queued" if result.created else f"already {job.state}"
                    click.echo(f"{path} [{name}]: {word} (job {job.id})")
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
