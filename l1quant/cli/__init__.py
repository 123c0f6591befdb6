"""The ``l1quant`` command line: a thin layer over the library.

Each command lives in its own module under ``l1quant.cli`` and only parses options and calls one library
function with the same parameters. Errors derived from :class:`l1quant.errors.L1QuantError` are printed as one
line on stderr with a non-zero exit; ``--debug`` (or ``L1QUANT_DEBUG=1``) shows the traceback instead.

Example:
    $ l1quant convert path/to/L1-Qwen-1.5B-Max --type q8_0
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import click

from l1quant.errors import L1QuantError, Terminated, clip


class _Group(click.Group):
    """Turns library errors into one clean line and an exit code, for every subcommand.

    ``L1QuantError`` -> ``l1quant: error: <message>`` and its exit code; Ctrl-C -> 130, SIGTERM -> 143; any other
    exception is a bug in l1quant: one line saying so (exit 70, EX_SOFTWARE) rather than a wall of traceback.
    ``--debug`` re-raises everything.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Bare ``l1quant`` asks what the tool does: show the help and succeed (click would exit 2).
        if not args and not ctx.resilient_parsing:
            click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(0)
        return super().parse_args(ctx, args)

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        # errors in the group's own options (``l1quant --bogus``) are raised here, before invoke
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.UsageError as e:
            _say(f"l1quant: error: {usage_line(e)}")
            sys.exit(e.exit_code)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                              list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            commands = [c for c in self.list_commands(ctx) if not self.get_command(ctx, c).hidden]  # type: ignore
            raise click.exceptions.UsageError(f"no command {name!r}{did_you_mean(name, commands)} (commands: "
                                              f"{', '.join(commands)})", ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click cuts each command's one-liner to the terminal width ("run each MODEL (GGUF) on each..."); the
        # definition list wraps long lines itself, so show every first sentence whole.
        rows = [(name, cmd.get_short_help_str(limit=1000)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        def debug() -> bool:  # set by main()'s callback, which runs inside super().invoke
            return bool(ctx.obj and ctx.obj.get("debug"))

        try:
            return super().invoke(ctx)
        except L1QuantError as e:
            if debug():
                raise
            _say(f"l1quant: error: {e}")
            ctx.exit(e.exit_code)
        except Terminated as e:
            if debug():
                raise
            name = _signal_name(e.signum)
            _say(f"l1quant: terminated ({name}){_published_note()}")
            ctx.exit(128 + e.signum)
        except KeyboardInterrupt:
            if debug():
                raise
            _say(f"l1quant: interrupted (SIGINT){_published_note()}")
            ctx.exit(130)
        except MemoryError:
            if debug():
                raise
            _say("l1quant: error: out of memory (the machine or a memory limit such as ulimit -v / a cgroup); "
                 "fewer --threads or a smaller --chunk-mb need less")
            ctx.exit(1)
        except RecursionError:
            if debug():
                raise
            _say("l1quant: error: input nested too deeply to process")
            ctx.exit(1)
        except click.exceptions.ClickException as e:
            if debug():
                raise
            _say(f"l1quant: error: {usage_line(e)}")  # click would print three lines (usage, hint, error)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise  # --help, ctx.exit: click's own handling
        except BrokenPipeError:
            # `l1quant inspect x.gguf | head`: the reader went away; not an error worth a message. Point stdout
            # at /dev/null so the interpreter's final flush does not raise again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(141)
        except Exception as e:
            if debug():
                raise
            cause = _resource_cause(e)
            if cause:
                _say(f"l1quant: error: {cause}")
                ctx.exit(1)
            first = str(e).splitlines()[0] if str(e) else ""
            _say(f"l1quant: internal error: {type(e).__name__}: {first[:300]} (a bug; rerun with --debug for the "
                 f"traceback and please report it)")
            ctx.exit(70)


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` (difflib's ratio >= 0.6), else "".

    Example:
        >>> did_you_mean("conver", ["convert", "quantize"])
        "; did you mean 'convert'?"
        >>> did_you_mean("zzz", ["convert"])
        ''
    """
    import difflib

    close = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


#: click's wording for a value outside a Choice: "'q9_9' is not one of 'q4_0', 'q8_0'." (8.1) or
#: "'q9_9' is not 'x'." / "... is not one of 'a', 'b'." (8.2)
_NOT_ONE_OF = re.compile(r"'([^']*)' is not (?:one of )?(.*?)\.?$")


def usage_line(e: click.exceptions.ClickException) -> str:
    """A click usage error as the text of one ``l1quant: error:`` line: the command, the error, the valid choices
    (with a "did you mean" where one is close) or the command's usage.

    Example:
        >>> usage_line(click.exceptions.UsageError("Missing argument 'MODEL'."))
        "Missing argument 'MODEL'."
    """
    msg = " ".join(e.format_message().split())  # one line, whatever click wrapped
    ctx = getattr(e, "ctx", None)
    where = f"{ctx.command_path.split(' ', 1)[1]}: " if ctx is not None and " " in ctx.command_path else ""
    m = _NOT_ONE_OF.search(msg)
    if m and "did you mean" not in msg:

        choices = re.findall(r"'([^']*)'", m.group(2)) or [c.strip() for c in m.group(2).split(",")]
        msg = msg.rstrip(".") + did_you_mean(m.group(1), choices)
    elif isinstance(e, click.exceptions.UsageError) and ctx is not None and "did you mean" not in msg \
            and "commands:" not in msg:
        usage = " ".join(ctx.get_usage().split())
        usage = usage.removeprefix("Usage: ")
        msg += f" (usage: {usage}; see --help)"
    return where + msg


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _published_note() -> str:
    """What was really done before the signal: outputs already complete under their final name stay valid."""
    from l1quant.output import PUBLISHED

    if not PUBLISHED:
        return ""
    names = ", ".join(str(p) for p in PUBLISHED[-3:])
    return f" after {names} was written completely (it is valid; later steps did not run)"


def _resource_cause(e: BaseException) -> str | None:
    """One line naming the exhausted resource, for the OS errors no l1quant code path turned into a message."""
    import errno

    if isinstance(e, RuntimeError) and "can't start new thread" in str(e):
        return ("cannot start another thread (a process/thread or memory limit); use fewer --threads")
    if isinstance(e, OSError):
        what = getattr(e, "filename", None)
        where = f"{clip(str(what), 120)}: " if what else ""
        if e.errno in (errno.EMFILE, errno.ENFILE):
            return f"{where}out of file descriptors ({e.strerror}); raise the limit (ulimit -n)"
        if e.errno == errno.ENOMEM:
            return f"{where}out of memory ({e.strerror})"
        if e.errno == errno.ENAMETOOLONG:
            return f"{where}path or file name too long ({e.strerror})"
    return None


def _say(line: str) -> None:
    # One line, whatever the message holds: a stray newline must not split it.
    click.echo(line.replace("\r", "\\r").replace("\n", "\\n"), err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, default=lambda: os.environ.get("L1QUANT_DEBUG") == "1",
              help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="l1quant")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Convert L1 checkpoints (qwen2, qwen3, llama) to GGUF in any type, verify them, and run them with a thinking
    budget."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    # Each command module adds itself to ``main``; a module that is not written yet is simply absent.
    import importlib

    for mod in ("convert", "quantize", "inspect", "verify", "l1", "compare", "imatrix"):
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


_register()

# Ctrl-C while the modules above were importing exited quietly (l1quant/_quiet_start.py); from here on it is a
# KeyboardInterrupt that the commands clean up after and _Group reports.
from l1quant._quiet_start import end_quiet_start  # noqa: E402

end_quiet_start()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
