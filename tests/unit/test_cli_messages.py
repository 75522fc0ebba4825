"""CLI messages written to a file (`hub serve > serve.log 2>&1`) stay one line each: not cut at 80 columns."""

from __future__ import annotations

import io

import pytest
import typer

from deployments import cli, cli_fetch, cli_forget, cli_metrics, cli_serve, options


@pytest.mark.parametrize("module", [options, cli_serve, cli, cli_fetch, cli_forget, cli_metrics])
def test_a_long_message_to_a_file_is_one_line(module, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(module.console, "_file", out)  # restored to None: it follows sys.stderr again
    message = "registering the deployments of prefect.yaml against http://127.0.0.1:4200/api " + "x" * 80
    module.console.print(message)
    assert out.getvalue() == message + "\n"


def test_fail_keeps_its_reason_on_one_line(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(options.console, "_file", out)
    with pytest.raises(typer.Exit):
        options.fail("PREFECT_API_URL=http://prefect.internal:4200/api does not answer; " + "y" * 60)
    assert len(out.getvalue().splitlines()) == 1
