"""edgecv command line. Thin: parse flags, call the library, print.

Exit codes (docs/errors.md): 0 ok; 1 a check failed (budget, regression, validation, diverged training) or an
unexpected error (one line, the traceback in a log file; ``--debug`` shows it); 2 bad input or an output that
cannot be written; 130 interrupted. Human output goes to stderr, ``--json`` output to stdout.
"""

from __future__ import annotations

import sys
import traceback

import click

from edgecv import __version__
from edgecv.cli import _errors as E
from edgecv.cli import archs, bench, compress, export, gate, predict, serve, train
from edgecv.cli import eval as eval_cmd
from edgecv.errors import EdgecvError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="edgecv")
@E.debug_option
def cli() -> None:
    """edgecv: turn a trained image classifier into fast, small models for edge targets.

    \b
    Typical flow:
      edgecv train    --data DATA --arch resnet18 --out teacher.pt
      edgecv compress --teacher teacher.pt --data DATA --out runs/r1
      edgecv export   runs/r1 --target all --out bundle/
      edgecv bench    bundle/ --data DATA
      edgecv gate     --baseline main_bundle/ --candidate bundle/
    """


cli.add_command(train.train)
cli.add_command(eval_cmd.eval_)
cli.add_command(compress.compress)
cli.add_command(export.export)
cli.add_command(bench.bench)
cli.add_command(gate.gate)
cli.add_command(archs.archs)
cli.add_command(predict.predict)
cli.add_command(serve.serve)


# ---------------------------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure ends as one line on stderr and an exit code (docs/errors.md)."""
    try:
        rv = cli.main(args=argv, prog_name="edgecv", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort as e:  # click turns Ctrl-C into Abort
        click.echo("edgecv: interrupted" if isinstance(e.__context__, KeyboardInterrupt) else "edgecv: aborted",
                   err=True)
        sys.exit(130)
    except click.ClickException as e:  # usage errors: one line, exit 2
        click.echo(f"edgecv: error: {e.format_message()}", err=True)
        sys.exit(2)
    except EdgecvError as e:
        if E.debug_enabled():
            traceback.print_exc()
        E.fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        click.echo("edgecv: interrupted", err=True)
        sys.exit(130)
    except OSError as e:
        msg = E.os_error_message(e)
        if msg is None or E.debug_enabled():
            E.unexpected(e, argv)
        E.fail(msg, 2)
    except Exception as e:
        E.unexpected(e, argv)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
