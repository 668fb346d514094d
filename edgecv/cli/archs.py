"""edgecv archs: list the registered architectures."""

from __future__ import annotations

import click

from edgecv.cli._common import emit_json, json_option


@click.command()
@json_option
def archs(as_json):
    """List the registered teacher and student architectures."""
    from edgecv.models.registry import ARCHS, arch_info

    rows = [{"arch": a, "role": arch_info(a).role, "source": arch_info(a).source,
             "int8_friendly": arch_info(a).int8_friendly, "note": arch_info(a).note} for a in ARCHS]
    if as_json:
        emit_json(rows)
    else:
        for r in rows:
            click.echo(f"{r['arch']:36s} {r['role']:8s} {r['source']:12s} {r['note']}")
