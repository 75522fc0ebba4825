"""``hub serve --port N``: the UI served by that server must call the API on N, not Prefect's default 4200."""

from __future__ import annotations

import subprocess

import pytest

from deployments import prefect_server


class _Proc:
    pid = 4242

    def poll(self) -> None:
        return None


@pytest.mark.parametrize(("preset", "expected"), [(None, "http://127.0.0.1:4377/api"), ("http://ui.example/api", None)])
def test_the_ui_calls_the_api_on_the_servers_own_port(tmp_path, monkeypatch, preset, expected) -> None:
    seen: dict[str, str] = {}
    answers = iter([False, True])  # nothing answers before the start; the started server then does

    def popen(args, env, **kw):
        seen.update(env)
        return _Proc()

    monkeypatch.setattr(prefect_server, "healthy", lambda api: next(answers))
    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(prefect_server, "write_state", lambda *a: None)
    monkeypatch.delenv("PREFECT_SERVER_UI_API_URL", raising=False)
    if preset:
        monkeypatch.setenv("PREFECT_UI_API_URL", preset)
    else:
        monkeypatch.delenv("PREFECT_UI_API_URL", raising=False)
    prefect_server.start_server(tmp_path, "postgresql+asyncpg://x/prefect", "127.0.0.1", 4377)
    assert seen["PREFECT_UI_API_URL"] == (expected or preset)
