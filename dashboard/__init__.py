"""The arange dashboard: a Streamlit app that shows scorecards to security reviewers.

Installed as ``arange.dashboard`` (see ``pyproject.toml``) and started with
``arange dashboard [--runs DIR] [--port N] [--host H]``. It only reads what runs wrote
(``scorecard.json``, ``samples.json``, ``examples/*.npz``, ``gates.json``): it never imports
torch, so it starts fast and can run on a machine without the attack stack's heavy parts.

Modules: :mod:`.data` (finding and reading runs), :mod:`.stats` and :mod:`.compare` (side-by-side
comparison with significance tests), :mod:`.images` (example galleries), :mod:`.charts` (Altair
charts), :mod:`.report` (one-page Markdown/HTML report), :mod:`.views`, :mod:`.hash_view` and
:mod:`.forensics_view` (the pages), and ``app.py`` (the script Streamlit runs).
"""

from __future__ import annotations

from pathlib import Path

APP_PATH = Path(__file__).resolve().with_name("app.py")
# The app reads the runs folder from this environment variable (set by ``arange dashboard``).
RUNS_ENV = "ARANGE_DASHBOARD_RUNS"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501


def streamlit_command(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """The ``streamlit run`` argument list for the app (without the interpreter prefix).

    Safe defaults: bound to ``host`` only (localhost unless told otherwise), no browser opened by
    the server, no usage statistics sent anywhere, no file watcher, XSRF protection on.
    The runs folder travels in the environment (:data:`RUNS_ENV`), not on the command line.
    """
    return ["run", str(APP_PATH),
            "--server.address", host,
            "--server.port", str(port),
            "--server.headless", "true",
            "--server.fileWatcherType", "none",
            "--server.runOnSave", "false",
            "--server.enableXsrfProtection", "true",
            "--browser.gatherUsageStats", "false",
            "--global.developmentMode", "false",
            "--client.toolbarMode", "minimal",
            "--theme.base", "light"]


__all__ = ["APP_PATH", "DEFAULT_HOST", "DEFAULT_PORT", "RUNS_ENV", "streamlit_command"]
