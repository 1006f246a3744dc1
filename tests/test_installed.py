"""The README's first command installs arange with ``pip install .`` (not ``-e``) and leaves the
user in the repository root. From there, every process that puts the working directory on
``sys.path`` (Ray workers, Streamlit's script runner, ``python -m``) sees the source folder
``arange/`` before the installed package, so the source folder must be a complete package and
must agree with what is installed.

These tests install the checkout non-editably into a fresh virtual environment (the heavy
dependencies come from the test environment's own site-packages through a ``.pth`` file, so
nothing is downloaded), then run ``arange run --executor ray`` and ``arange dashboard`` from the
repository root, as a user would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, tiny_scenario


def test_source_folder_is_a_complete_package() -> None:
    """Without any installed arange on the path, ``import arange.*`` from the repository root
    finds every subpackage the installed wheel has."""
    site = sysconfig.get_paths()["purelib"]
    code = (f"import sys; sys.path.insert(0, ''); sys.path.append({site!r}); "
            "import arange, arange.attacks.pgd, arange.defenses.transforms, "
            "arange.dashboard.views, arange.core.driver; print(arange.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()).resolve() == (ROOT / "arange" / "__init__.py").resolve()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with this checkout installed by ``pip install .``: its ``bin`` folder."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    # no pip or setuptools of its own: the test environment's, through the .pth file below
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    get_site = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([str(py), "-c", get_site], capture_output=True, text=True,
                          check=True).stdout.strip()
    (Path(site) / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    build = tmp_path_factory.mktemp("build")
    shutil.copytree(ROOT, build / "src", symlinks=True,
                    ignore=shutil.ignore_patterns(".venv", "runs", "build", "*.egg-info",
                                                  "test-artifacts", "__pycache__", "*.so"))
    out = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "-q", str(build / "src")], capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    where = subprocess.run([str(py), "-c", "import arange; print(arange.__file__)"],
                           capture_output=True, text=True, cwd="/", check=True).stdout
    assert where.startswith(site), where  # the installed copy, not the checkout
    yield venv / "bin"


def test_ray_run_from_the_repository_root(installed: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    scenario = tmp_path / "s.yaml"
    target = dict(tiny_scenario()["target"], samples=32, batch_size=32)
    scenario.write_text(yaml.safe_dump(tiny_scenario(
        target=target, attacks=[{"name": "fgsm", "eps": ["4/255", "8/255"]}],
        evaluation={"checks": {"large_eps": False, "more_steps": False}})))
    out = tmp_path / "run"
    res = subprocess.run([str(installed / "arange"), "run", str(scenario), "--out", str(out),
                          "-q", "--executor", "ray"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    card = json.loads((out / "scorecard.json").read_text())
    assert [r["attack"] for r in card["results"]] == ["fgsm", "fgsm"]


def test_dashboard_from_the_repository_root(installed: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every page renders in a real browser, with no import error, when ``arange dashboard``
    (installed non-editably) is started from the repository root."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from .test_dashboard import _free_port, headless_chrome, wait_until_serving

    runs = tmp_path / "runs"
    runs.mkdir()
    port = _free_port()
    proc = subprocess.Popen([str(installed / "arange"), "dashboard", "--runs", str(runs),
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    driver = None
    try:
        wait_until_serving(url, proc)
        driver = headless_chrome(tmp_path / "profile", monkeypatch)
        for page, title in (("runs", "Runs"), ("scorecard", "Scorecard"),
                            ("examples", "Examples gallery"), ("compare", "Compare runs"),
                            ("hash", "Hash matching"), ("forensics", "Forgery localisation")):
            driver.get(f"{url}/?page={page}")
            WebDriverWait(driver, 60, poll_frequency=0.5).until(
                lambda d, title=title: title in d.find_element(By.TAG_NAME, "body").text)
            body = driver.find_element(By.TAG_NAME, "body").text
            assert "ModuleNotFoundError" not in body and "Traceback" not in body, page
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_every_package_folder_is_in_the_wheel() -> None:
    """pyproject.toml lists the packages explicitly; a new package folder left out of it is
    missing from every non-editable install (as arange.gates once was)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    roots = {"arange": ROOT / "arange", "arange.attacks": ROOT / "attacks",
             "arange.defenses": ROOT / "defenses", "arange.dashboard": ROOT / "dashboard"}
    found = set()
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            if rel.parts and rel.parts[0] in ("attacks", "defenses", "dashboard"):
                continue  # the links to the top-level folders, counted under their own name
            found.add(".".join((name, *rel.parts)))
    assert found == listed, (sorted(found - listed), sorted(listed - found))
