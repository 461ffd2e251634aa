"""The interactive notebooks in a real browser, as a person uses them.

JupyterLab (:func:`handfuse.lab.running_lab`: loopback, a random token) serves a
temporary copy of the notebooks; Debian's headless Chromium, driven by Playwright,
opens each notebook that uses :mod:`handfuse.widgets`, runs it in the ``smoke``
preset (the server, and so its kernels, inherit ``HANDFUSE_PRESET``,
``HANDFUSE_FIGURES`` and ``HANDFUSE_RUNS`` from ``make test``) through
``notebook:run-all-cells``, and checks what is on the page: every explorer drawn,
with its slider, dropdown and plotly plot, and the p_eq slider and the sequence
dropdown changing the plotted numbers (read from the plot's ``_fullData``).
Screenshots go to ``$HANDFUSE_ARTEFACTS`` (default: a temporary folder), and the
path is printed.

Chromium must be ``/usr/bin/chromium`` (``scripts/ensure-test-tools.sh``, which
``make test`` runs first, installs it); Playwright's own browsers are never used.
Without it the test fails, it does not skip.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError, Page, expect, sync_playwright

import netguard
from handfuse.lab import get, listening_addresses, running_lab

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync", "--disable-quic",
                 "--force-webrtc-ip-handling-policy=disable_non_proxied_udp"]  # + netguard.chromium_args: offline
# every cell rendered (no virtual scrolling: widgets off screen exist in the DOM), no news pop-up
LAB_SETTINGS = {"@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
                "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}
STEP_MS = 60_000  # one page action or render; generous for a loaded 2-core machine
RUN_ALL_MS = 240_000  # a whole notebook in the smoke preset: about 40 s here, trained from scratch
EXPLORER = ".jp-OutputArea-output > .widget-vbox"  # what every handfuse.widgets explorer displays as
KERNEL_IDLE = "window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'"
# at least n explorer plots, each drawn with its traces (plotly fills _fullData once it has plotted)
PLOTS_DRAWN = (f"n => {{ const plots = document.querySelectorAll('{EXPLORER} .js-plotly-plot');"
               " return plots.length >= n && Array.from(plots).every(p => p._fullData && p._fullData.length > 0); }")


def notebook_code(path: Path) -> list[str]:
    """The sources of a notebook's code cells."""
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def widget_calls(cells: list[str]) -> list[str]:
    """The calls to functions imported from ``handfuse.widgets`` in a notebook's code cells, in order."""
    trees = [ast.parse(source) for source in cells]
    names = {alias.asname or alias.name for tree in trees for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module == "handfuse.widgets" for alias in node.names}
    calls = []
    for tree in trees:  # cell by cell, in reading order within a cell
        found = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names]
        calls += [n.func.id for n in sorted(found, key=lambda n: (n.lineno, n.col_offset))]
    return calls


def interactive_notebooks() -> list[str]:
    """The notebooks that display widgets: a new one is tested by calling one."""
    return sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb") if widget_calls(notebook_code(p)))


def notebooks_calling(function: str) -> list[str]:
    return [n for n in interactive_notebooks() if function in widget_calls(notebook_code(ROOT / "notebooks" / n))]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    """Where screenshots and the server log go: $HANDFUSE_ARTEFACTS, or a temporary folder."""
    env = os.environ.get("HANDFUSE_ARTEFACTS")
    folder = Path(env) / "browser" if env else tmp_path_factory.mktemp("browser")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def lab(tmp_path_factory, artefacts):
    """JupyterLab serving a copy of the notebooks (the sources are never run in place): (url, token)."""
    served = tmp_path_factory.mktemp("served")
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(nb, served / nb.name)
    with running_lab(served, LAB_SETTINGS, log=artefacts / "jupyterlab.log") as (url, token):
        yield url, token


@pytest.fixture(scope="module")
def browser():
    """Chromium, kept off the network (``netguard.chromium_args``): its "proxy" is a loopback port that
    this fixture holds bound and never listens on, so every connection to it is refused."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: the browser test needs Debian's chromium. Run `bash scripts/ensure-test-tools.sh`"
                    " (`make test` does it first); `playwright install` is not used.")
    expect.set_options(timeout=STEP_MS)
    with socket.socket() as refusing, sync_playwright() as p:
        refusing.bind(("127.0.0.1", 0))
        chromium = p.chromium.launch(executable_path=str(CHROMIUM),
                                     args=CHROMIUM_ARGS + netguard.chromium_args(refusing.getsockname()[1]))
        yield chromium
        chromium.close()


@dataclass
class Ran:
    """A notebook opened in JupyterLab and run through: its page, the uncaught page errors, and what
    ``notebook:run-all-cells`` resolved to (true when every cell ran without an error)."""
    page: Page
    errors: list[str]
    ok: object


def open_and_run(browser, url: str, token: str, name: str) -> Ran:
    """Open ``name`` in JupyterLab, wait for its kernel, run all cells, wait for the kernel to go idle."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(STEP_MS)
    ran = Ran(page, [], None)
    page.on("pageerror", lambda err: ran.errors.append(str(err)))
    page.goto(f"{url}/lab/tree/{name}?token={token}")
    page.wait_for_function(KERNEL_IDLE)
    start = time.perf_counter()
    page.evaluate("window.__ranAll = undefined; window.jupyterapp.commands.execute('notebook:run-all-cells')"
                  ".then(ok => { window.__ranAll = ok; }, err => { window.__ranAll = String(err); })")
    page.wait_for_function("window.__ranAll !== undefined", timeout=RUN_ALL_MS)
    page.wait_for_function(KERNEL_IDLE)
    ran.ok = page.evaluate("window.__ranAll")
    print(f"{name}: run all in {time.perf_counter() - start:.1f} s")
    return ran


@pytest.fixture(scope="module")
def run_notebook(lab, browser):
    """``run(name)``: :func:`open_and_run`, once per notebook and module."""
    done: dict[str, Ran] = {}

    def run(name: str) -> Ran:
        if name not in done:
            done[name] = open_and_run(browser, *lab, name)
        return done[name]

    yield run
    for ran in done.values():
        ran.page.close()


def show(capsys, text: str) -> None:
    """Print past pytest's capture, so that the artefact paths appear in a passing run too."""
    with capsys.disabled():
        print(f"\n{text}")


# ----------------------------------------------------------------------------- the server


def test_the_interactive_notebooks_are_found():
    assert "07_explore.ipynb" in interactive_notebooks()
    assert notebooks_calling("p_eq_explorer"), "no notebook shows the p_eq explorer"
    assert widget_calls(["from handfuse.widgets import a, b as c\nx = a(1)", "c(2); d(3)"]) == ["a", "c"]


def test_lab_refuses_requests_without_its_token_and_listens_on_loopback_only(lab):
    url, token = lab
    assert get(f"{url}/api/kernels?token={token}") == 200
    assert get(f"{url}/api/kernels") == 403
    assert get(f"{url}/api/kernels?token={'0' * len(token)}") == 403
    assert len(token) >= 32
    port = int(url.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"127.0.0.1"}


def _pids_with(text: str) -> list[int]:
    """The processes whose command line contains ``text`` (Linux ``/proc``)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            pass
    return found


def _exited(pid: int) -> bool:
    """Whether process ``pid`` has ended: gone from ``/proc``, or a zombie (ended, its parent has not
    reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _python_path(pid: int) -> list[str]:
    """The PYTHONPATH folders process ``pid`` started with."""
    env = dict(entry.split("=", 1) for entry in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in entry)
    return env.get("PYTHONPATH", "").split(os.pathsep)


def wait_until(condition, what: str, timeout_s: float = STEP_MS / 1000) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.05)


def test_lab_shuts_down_with_its_kernels(tmp_path, lab):
    with running_lab(tmp_path) as (url, token):
        request = urllib.request.Request(f"{url}/api/kernels?token={token}", method="POST", data=b"{}",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            kernel = json.loads(reply.read())["id"]
        pids = _pids_with(f"kernel-{kernel}.json")
        assert len(pids) == 1, pids  # the kernel process is running
        server = _parent(pids[0])
        for pid in (server, pids[0]):  # JupyterLab and its kernel start with the network guard (tests/netguard.py)
            assert _python_path(pid)[0] == str(netguard.SITE), (pid, _python_path(pid))
        port = int(url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"127.0.0.1"} and token != lab[1]  # a fresh token per server
    wait_until(lambda: _exited(pids[0]), f"the kernel (pid {pids[0]}) ends with its server")
    assert _exited(server) and not _pids_with(f"kernel-{kernel}.json")
    wait_until(lambda: listening_addresses(port) == set(), f"port {port} closed")


def test_chromium_reaches_nothing_beyond_loopback(browser, lab):
    """Addresses and names beyond this machine fail at once in Chromium, at the refusing loopback proxy
    (no packet leaves the machine); JupyterLab on loopback is reached directly."""
    url, token = lab
    page = browser.new_page()
    try:
        assert page.goto(f"{url}/api/status?token={token}").status == 200
        fetched = page.evaluate("async () => { try { await fetch('http://192.0.2.1/', {mode: 'no-cors'}); return 'fetched'; }"
                                " catch (err) { return String(err); } }")
        assert fetched.startswith("TypeError"), fetched  # a page's own request: refused too
    finally:
        page.close()
    for target in ("http://192.0.2.1/", "https://example.org/", "http://handfuse-offline.invalid/"):
        page = browser.new_page()
        try:
            with pytest.raises(PlaywrightError, match="net::ERR_PROXY_CONNECTION_FAILED"):
                page.goto(target, timeout=STEP_MS)
        finally:
            page.close()


# ----------------------------------------------------------------------------- the notebooks in Chromium


@pytest.mark.parametrize("name", interactive_notebooks())
def test_notebook_runs_and_renders_its_widgets(name, run_notebook, artefacts, capsys):
    ran = run_notebook(name)
    page = ran.page
    assert ran.ok is True, f"run all cells of {name} did not succeed: {ran.ok}"
    expect(page.locator(".jp-OutputArea-output", has_text="checks passed")).to_have_count(1)

    calls = widget_calls(notebook_code(ROOT / "notebooks" / name))
    explorers = page.locator(EXPLORER)
    expect(explorers).to_have_count(len(calls))  # one rendered explorer per call
    page.wait_for_function(PLOTS_DRAWN, arg=len(calls))
    for k in range(len(calls)):
        box = explorers.nth(k)
        expect(box.locator(".js-plotly-plot svg.main-svg").first).to_be_visible()
        expect(box.locator(".widget-dropdown select")).to_have_count(1)
        assert box.locator(".widget-dropdown select option").count() > 1, f"{calls[k]}: a dropdown of one sequence"
        traces = box.locator(".js-plotly-plot").evaluate("el => el._fullData.filter(t => t.visible !== false).length")
        assert traces > 0, f"{calls[k]}: a plot without traces"
        # every legend entry carries its name: plotly's "trace N" means the front end lost one
        legend = box.locator(".js-plotly-plot .legendtext").all_text_contents()  # SVG: no innerText
        assert not [t for t in legend if re.fullmatch(r"trace \d+", t.strip())], f"{calls[k]}: unnamed traces {legend}"
        box.screenshot(path=artefacts / f"{Path(name).stem}-{k}-{calls[k]}.png")
    sliders = page.locator(f"{EXPLORER} .widget-slider")
    expect(sliders.first.locator(".noUi-handle")).to_be_visible()
    assert sliders.count() >= 1
    explorers.first.scroll_into_view_if_needed()
    shot = artefacts / f"{Path(name).stem}.png"
    page.screenshot(path=shot)
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    assert not ran.errors, ran.errors
    show(capsys, f"{name}: screenshots in {artefacts} ({shot.name} and one per widget)")


def _p_eq_explorer(page: Page):
    return page.locator(EXPLORER, has=page.locator(".widget-slider", has_text="p_eq"))


def _plotted(explorer) -> dict:
    """The p_eq explorer's per-frame errors as the browser holds them: ``y`` at the slider's p_eq (trace 0),
    ``ends`` at p_eq = 1 and p_eq = 0 (traces 1 and 2, by p_eq as the readout shows it), its name and title."""
    return explorer.locator(".js-plotly-plot").evaluate(
        "el => ({name: el._fullData[0].name, y: Array.from(el._fullData[0].y), title: el.layout.title.text,"
        " ends: {'1.00': Array.from(el._fullData[1].y), '0.00': Array.from(el._fullData[2].y)}})")


@pytest.mark.parametrize("name", notebooks_calling("p_eq_explorer"))
def test_moving_the_p_eq_slider_changes_the_plotted_values(name, run_notebook, artefacts, capsys):
    page = run_notebook(name).page
    explorer = _p_eq_explorer(page)
    expect(explorer).to_have_count(1)
    page.wait_for_function(PLOTS_DRAWN, arg=1)
    readout = explorer.locator(".widget-slider .widget-readout")
    before, shown = _plotted(explorer), readout.inner_text().strip()
    assert before["name"] == f"p_eq = {shown}"  # the plot is the slider's
    assert shown not in before["ends"] or before["y"] == before["ends"][shown]

    handle = explorer.locator(".noUi-handle")
    handle.focus()
    handle.press("End" if shown == "0.00" else "Home")  # the keyboard, as a person would
    expect(readout).not_to_have_text(shown)
    moved = readout.inner_text().strip()
    page.wait_for_function("([el, name]) => el._fullData?.[0]?.name === name",
                           arg=[explorer.locator(".js-plotly-plot").element_handle(), f"p_eq = {moved}"])
    after = _plotted(explorer)
    assert len(after["y"]) == len(before["y"]) and after["y"] != before["y"], (before, after)
    assert after["y"] == after["ends"][moved]  # Home/End: the curve drawn is the one of that end
    assert after["y"][0] == pytest.approx(before["y"][0], rel=1e-5)  # frame 0 is always fed w_eq
    assert f"p_eq = {moved}" in after["title"]
    status = explorer.locator(".widget-html").first.inner_text()
    shown = re.search(r"mean error (-?[0-9.]+) mm", status)  # the kernel's numbers are the plot's: the status rounds
    assert shown and abs(float(shown.group(1)) - sum(after["y"]) / len(after["y"])) <= 0.005 + 1e-4, status  # its own mean
    explorer.scroll_into_view_if_needed()
    shot = artefacts / f"{Path(name).stem}-p_eq-moved.png"
    page.screenshot(path=shot)
    show(capsys, f"{name}: p_eq {shown} -> {moved}; screenshot {shot}")


@pytest.mark.parametrize("name", notebooks_calling("p_eq_explorer"))
def test_choosing_another_sequence_redraws_the_p_eq_plot(name, run_notebook):
    page = run_notebook(name).page
    explorer = _p_eq_explorer(page)
    page.wait_for_function(PLOTS_DRAWN, arg=1)
    select = explorer.locator(".widget-dropdown select")
    before = _plotted(explorer)
    texts, current = select.evaluate("el => [Array.from(el.options).map(o => o.text), el.selectedIndex]")
    chosen = texts[1 if current != 1 else 0]  # "index: action"
    select.select_option(label=chosen)
    index, action = (part.strip() for part in chosen.replace("\xa0", " ").split(":"))  # ipywidgets keeps spaces as nbsp
    page.wait_for_function("([el, text]) => !!el.layout?.title?.text?.includes(text) && el._fullData?.length > 0",
                           arg=[explorer.locator(".js-plotly-plot").element_handle(), f"sequence {index}:"])
    after = _plotted(explorer)
    assert after["y"] != before["y"] and action in after["title"]
