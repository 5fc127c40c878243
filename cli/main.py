"""The `zsteer` command line: a click group whose commands parse flags into frozen configs and call the
library (`write_sample`, `run_job`, ...), which works the same without the CLI.

Adding a command: a click command that parses its flags into a config, calls a library function and
returns an exit code. Light commands are decorated here with ``@main.command()``; a command whose module
imports torch (or onnxruntime) is registered in ``LAZY_COMMANDS`` as "module:attribute", so that it is
imported only when named and `zsteer sample` / `zsteer --help` do not pay for torch. What the commands
share (``check_out_parent``) lives in ``paths``, a leaf module, so no command imports this one. User errors
(ZsteerError, click usage errors) are printed as one line, ``zsteer: error: ...``, exit code 2, no
traceback; so are OS errors (an unwritable --out, a full disk), naming the file.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import click

from zsteer.core.errors import ZsteerError

from .malloc import MALLOC_ENV, reexec_with_malloc_settings
from .paths import check_out_parent

ERROR_EXIT = 2
# The commands that run the engine for long enough to gain from the allocator settings (cli/malloc.py).
REEXEC_COMMANDS = ("edit", "demo", "bench")
# name -> "module:attribute" of commands imported only when used (their modules import torch).
LAZY_COMMANDS = {
    "edit": "zsteer.cli.edit:edit",
    "sheet": "zsteer.cli.tools:sheet",
    "demo": "zsteer.cli.tools:demo",
    "export": "zsteer.cli.tools:export",
    "import": "zsteer.cli.model_import:import_",
    "report": "zsteer.cli.report:report",
    "bench": "zsteer.cli.bench:bench",
    "verify": "zsteer.cli.verify:verify",
    "directions": "zsteer.cli.directions:directions",
}


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _os_error_line(exc: OSError) -> str:
    """``FILE: reason`` of an OSError, or its message where it names no file."""
    reason = exc.strerror or _one_line(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename is not None else reason


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (test runners swap it between invocations)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging() -> None:
    logger = logging.getLogger("zsteer")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("zsteer: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _reexec_with_malloc_settings(argv: list[str]) -> None:
    """Restart the `zsteer` process once with MALLOC_ENV (same pid: signals and kill -9 still reach it).

    Skipped where the user set any of them (their choice wins), off Linux, and when not started as the
    `zsteer` script (in-process calls such as tests, `python -m`).
    """
    script = Path(sys.argv[0])
    if (
        sys.platform != "linux"
        or not argv
        or argv[0] not in REEXEC_COMMANDS
        or any(key in os.environ for key in MALLOC_ENV)
        or script.name != "zsteer"
        or not script.is_file()
    ):
        return
    reexec_with_malloc_settings([sys.executable, str(script), *argv])


class ZsteerGroup(click.Group):
    """A click group that loads LAZY_COMMANDS on demand and reports every user error as one line, exit 2."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx, name):
        if name in LAZY_COMMANDS and name not in self.commands:
            module, attribute = LAZY_COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        if args is None:  # a real command line, not an in-process call
            _reexec_with_malloc_settings(argv)
        _setup_logging()
        try:
            code = super().main(
                args=argv, prog_name=prog_name or "zsteer", standalone_mode=False, obj={"argv": argv}, **extra
            )
        except click.exceptions.Abort:  # click's form of a KeyboardInterrupt (a second Ctrl-C)
            click.echo("zsteer: aborted; an edit job resumes when the same command runs again", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            where = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "zsteer"
            click.echo(f"{where}: error: {_one_line(exc.format_message())}", err=True)
            sys.exit(ERROR_EXIT)
        except ZsteerError as exc:
            click.echo(f"zsteer: error: {_one_line(exc)}", err=True)
            sys.exit(ERROR_EXIT)
        except OSError as exc:  # the backstop: a read-only or full disk, a file where a folder must go
            click.echo(f"zsteer: error: {_os_error_line(exc)}", err=True)
            sys.exit(ERROR_EXIT)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(
    name="zsteer",
    cls=ZsteerGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
def main():
    """zsteer: batch editing of GAN latents by classifier-gradient ascent (DeepLearning.AI GANs, C1W4B)."""


# -- sample ------------------------------------------------------------------------------------------


@main.command()
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Rows to write (ids 0..N-1).")
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed: the same seed, the same rows.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Parquet file.")
@click.option("--z-dim", type=click.IntRange(min=1), default=64, show_default=True, help="Length of z.")
@click.option(
    "--labels", type=click.IntRange(min=1), default=None, help="Add a label column uniform in [0, K)."
)
@click.option(
    "--row-group-size", type=click.IntRange(min=1), default=8192, show_default=True,
    help="Rows per Parquet row group (what a reader fetches at once); values do not depend on it.",
)  # fmt: skip
def sample(n, seed, out, z_dim, labels, row_group_size):
    """Write a manifest of N latents z ~ N(0, I) (float32), deterministic from --seed."""
    from zsteer.jobs.sample import SampleConfig, write_sample

    check_out_parent("--out", out)
    path = write_sample(SampleConfig(n, seed, out, z_dim, labels, row_group_size))
    click.echo(f"zsteer: wrote {n} rows to {path}", err=True)
    return 0


if __name__ == "__main__":  # python -m zsteer.cli.main
    main()
