"""Every command's options, as ``--help`` shows them, against a snapshot taken before the CLI was refactored.

The structure is read from the click objects in-process (``to_info_dict``: names, type with its choices and
range, default, required, multiple, is_flag, help), not from help text wrapped to a terminal width. The group
is walked recursively, so a new command or sub-command is covered without editing this test.

A deliberate change of an option (a new flag, a new default) refreshes the snapshot; review its diff:

    EDGECV_UPDATE_SNAPSHOT=1 pytest tests/test_cli_help_snapshot.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from edgecv.cli import cli

SNAPSHOT = Path(__file__).parent / "data" / "cli_help_snapshot.json"


def _plain(value):
    """A JSON-comparable form of a click info value (click's UNSET sentinel, tuples, callables, paths)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if callable(value):
        return f"<callable {getattr(value, '__qualname__', type(value).__name__)}>"
    return repr(value)


def _param(param: click.Parameter) -> dict:
    info = param.to_info_dict()
    if isinstance(param, click.Option):
        info["show_default"] = param.show_default
        info["is_eager"] = param.is_eager
        info["expose_value"] = param.expose_value
    return _plain(info)


def describe(cmd: click.Command, ctx: click.Context) -> dict:
    """The command's help and options, and those of its sub-commands (recursively), keyed by name."""
    # cmd.params: the declared options; the help option comes from the context (and click caches the first one
    # it built on the command, so get_params() would depend on the tests run before): recorded as its names
    out = {"help": cmd.help, "help_option_names": list(ctx.help_option_names),
           "params": {p.name or "/".join(p.opts): _param(p) for p in cmd.params}}
    if isinstance(cmd, click.Group):
        out["commands"] = {name: describe(sub, click.Context(sub, parent=ctx, info_name=name))
                           for name, sub in sorted(cmd.commands.items())}
    return out


def current() -> dict:
    # with the group's context settings, as `edgecv` runs (-h/--help on every command)
    return describe(cli, click.Context(cli, info_name="edgecv", **cli.context_settings))


def test_every_command_keeps_its_options_and_defaults():
    now = current()
    if os.environ.get("EDGECV_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(now, indent=1) + "\n")
    snap = json.loads(SNAPSHOT.read_text())
    assert set(now["commands"]) == set(snap["commands"]), "commands added or removed"
    for name, cmd in snap["commands"].items():
        got = now["commands"][name]
        assert list(got["params"]) == list(cmd["params"]), f"{name}: options added, removed or reordered"
        for opt, want in cmd["params"].items():
            assert got["params"][opt] == want, f"edgecv {name} {opt} changed (refresh: see this module's doc)"
        assert got == cmd, f"edgecv {name}: help or sub-commands changed"
    assert now == snap


def test_snapshot_covers_every_command_with_its_defaults():
    snap = json.loads(SNAPSHOT.read_text())
    assert {"train", "eval", "compress", "export", "bench", "gate", "predict", "serve", "archs"} <= set(snap["commands"])
    compress = snap["commands"]["compress"]["params"]
    assert len(compress) > 40 and compress["target"]["type"]["choices"] == ["x86", "android", "jetson"]
    assert snap["commands"]["train"]["params"]["data"]["default"] == "digits"
