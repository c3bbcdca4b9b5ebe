"""The `recapfast` command line: one Typer app, one module per command."""
from __future__ import annotations

from recapfast.runtime import prefer_passive_waiting

prefer_passive_waiting()  # before torch's OpenMP pool starts (recapfast.runtime)

from ._app import app  # noqa: E402
from . import attack, bench, demo, doctor, evaluate, reproduce, screen, synth, train, transfer, uap  # noqa: F401,E402 - registers the commands


def main() -> None:
    app()


__all__ = ["app", "main"]
