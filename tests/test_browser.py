"""The course as a learner meets it: JupyterLab in a real browser.

JupyterLab is started from the course root the way the README says (so it loads the course's
``nbgrader_config.py`` through nbgrader's server extension, as a learner's does), on loopback,
serving a scratch copy of ``chapters/`` so the repository's notebooks are never saved over.
Debian's Chromium, headless, is driven by Playwright through ``executable_path`` (Playwright
never downloads a browser here). The test opens chapter 02's learner notebook and

1. runs all cells: every code cell runs, and each checkpoint on its stub shows a ✗ without
   stopping the notebook;
2. types a wrong ``rms_norm`` into its answer cell through the editor: ✗ with that mistake's hint;
3. types a correct one: ✓;
4. checks that the learner's kernel cannot import ``solutions``;
5. runs ``python -m autograder progress``: the pass is recorded;
6. opens the same chapter with its answers written in (the source notebook) and runs all
   cells: every checkpoint shows its green ✓.

Screenshots go to ``COURSE_TEST_ARTIFACTS`` (default ``.artifacts/browser/``, ignored by git).
On a machine without Chromium the test is skipped with the install command.
"""

from __future__ import annotations

import inspect
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autograder.notebooks import ROOT, source_path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHAPTER = "02_building_blocks"
ANSWERS = f"{CHAPTER}_with_answers.ipynb"
NB = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"  # the notebook of the tab in front
ARTIFACTS = Path(os.environ.get("COURSE_TEST_ARTIFACTS", ROOT / ".artifacts" / "browser"))

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install -y chromium (Debian) "
                       "or set up the course's CI, which installs it"),
]

WRONG_RMS_NORM = '''def rms_norm(x, weight, eps=1e-6):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab started from the course root (as the README says, so nbgrader's server
    extension reads the course's nbgrader_config.py), serving a scratch copy of the chapter in
    place of ``chapters/`` (the repository's notebooks are never touched), with a private
    progress record; yields (url, token, env)."""
    served = tmp_path_factory.mktemp("served")
    shutil.copytree(ROOT / "chapters" / CHAPTER, served / CHAPTER)
    # the chapter with its answers (the source notebook), for a Run All that passes everything
    shutil.copy(source_path(CHAPTER), served / CHAPTER / ANSWERS)
    settings = tmp_path_factory.mktemp("lab-settings")
    # every cell in the page (no virtual scrolling), and no autosave of the scratch copy
    tracker = settings / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    apputils = settings / "@jupyterlab" / "apputils-extension"
    apputils.mkdir(parents=True)
    (apputils / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    docmanager = settings / "@jupyterlab" / "docmanager-extension"
    docmanager.mkdir(parents=True)
    (docmanager / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
    progress = tmp_path_factory.mktemp("progress") / "progress.json"
    env = {**os.environ, "COURSE_PROGRESS_FILE": str(progress), "JUPYTER_PLATFORM_DIRS": "1",
           "JUPYTER_RUNTIME_DIR": str(tmp_path_factory.mktemp("runtime"))}
    for key in ("PYTHONPATH", "COURSE_CHECK_MODE", "COURSE_RECORD_PROGRESS"):
        env.pop(key, None)  # what a learner's shell has: none of the test suite's settings
    port, token = free_port(), "course-browser-test"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "jupyter"), "lab", str(served), "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
         f"--LabApp.user_settings_dir={settings}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited:\n{server.stdout.read()}")
            time.sleep(0.5)
    try:
        yield url, token, env
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield browser
        browser.close()


def open_notebook(browser, lab, name: str, source: Path):
    """A page with the served notebook ``CHAPTER/name`` loaded and its kernel idle."""
    url, token, _ = lab
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(60_000)
    # a workspace of its own: the page shows this notebook only
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{CHAPTER}/{name}?token={token}")
    wait_until_loaded(page, source)
    wait_for_kernel_idle(page)
    return page


@pytest.fixture(scope="module")
def page(browser, lab):
    """The learner notebook, as a learner opens it."""
    return open_notebook(browser, lab, f"{CHAPTER}.ipynb", ROOT / "chapters" / CHAPTER / f"{CHAPTER}.ipynb")


def wait_until_loaded(page, source: Path, timeout: float = 180):
    """Until every cell of the notebook is on the page and its kernel is chosen. On a busy
    machine JupyterLab may ask which kernel to start before the kernel list arrives: accept
    its proposal (the notebook's own Python 3), as a learner would."""
    import nbformat

    expected = len(nbformat.read(source, as_version=4).cells)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        accept_dialogs(page)
        cells = page.locator(f"{NB} .jp-Cell").count()
        ready = page.evaluate("() => !!document.querySelector('.jp-Notebook-ExecutionIndicator')")
        if cells == expected and ready and not page.locator(".jp-Dialog").count():
            return
        time.sleep(0.5)
    page.screenshot(path=str(ARTIFACTS / f"not_loaded_{source.stem}.png"), full_page=True)
    dialogs = page.locator(".jp-Dialog").all_inner_texts()
    raise AssertionError(f"the notebook did not load: {page.locator(f'{NB} .jp-Cell').count()} of {expected} "
                         f"cells, kernel indicator {ready}, dialogs {dialogs}")


def wait_for_kernel_idle(page, timeout: float = 300):
    """Until no cell is queued or running ("[*]:") and the kernel says it is idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        accept_dialogs(page)
        busy = page.evaluate(
            "() => [...document.querySelectorAll('" + NB + " .jp-InputPrompt')]"
            ".some(p => p.textContent.includes('*'))"
        )
        idle = page.evaluate(
            "() => !document.querySelector('.jp-Notebook-ExecutionIndicator[data-status=\"busy\"]')"
        )
        if not busy and idle:
            return
        time.sleep(0.5)
    raise AssertionError(f"the kernel was still busy; dialogs: {DIALOGS}")


def code_cells(page) -> list[dict]:
    """Every code cell: its source's first line, its prompt and its output text."""
    return page.evaluate(
        """() => [...document.querySelectorAll('""" + NB + """ .jp-CodeCell')].map(cell => ({
            first: (cell.querySelector('.cm-content')?.innerText || '').split('\\n')[0],
            prompt: cell.querySelector('.jp-InputPrompt')?.textContent || '',
            output: cell.querySelector('.jp-OutputArea')?.innerText || '',
            error: !!cell.querySelector('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'),
        }))"""
    )


DIALOGS: list[str] = []  # every dialog JupyterLab showed, for the failure messages


def accept_dialogs(page):
    """Accept any dialog JupyterLab shows, as a learner would click its default button. On a
    loaded machine the kernel list can arrive late and JupyterLab then asks which kernel to
    start (its proposal is the notebook's own Python 3); a dialog left open would take every
    click that follows."""
    dialog = page.locator(".jp-Dialog")
    while dialog.count():
        DIALOGS.append(" | ".join(dialog.first.inner_text().split("\n")))
        page.screenshot(path=str(ARTIFACTS / f"dialog_{len(DIALOGS)}.png"))
        accept = dialog.first.locator("button.jp-mod-accept")
        (accept.first if accept.count() else dialog.first.locator("button").last).click()
        time.sleep(0.5)


def run_menu(page, item: str):
    accept_dialogs(page)
    page.click("text=Run >> nth=0")
    page.click(f".lm-Menu-itemLabel:text-is('{item}')")


def prompt(page, index: int) -> str:
    return page.locator(f"{NB} .jp-CodeCell").nth(index).locator(".jp-InputPrompt").inner_text()


def wait_until_ran(page, index: int, before: str, again=None, timeout: float = 300):
    """Until code cell ``index`` has run since its prompt read ``before`` (each run gives it a
    new number), then until the kernel is idle. Waiting for an idle kernel alone could return
    before the request has even reached it. ``again``: what to do once more when the cell has
    not even been queued after 20 s (on a loaded machine a menu may miss a click)."""
    deadline = time.monotonic() + timeout
    asked = time.monotonic()
    now = before
    while time.monotonic() < deadline:
        now = prompt(page, index)
        if now != before and any(ch.isdigit() for ch in now) and "*" not in now:
            wait_for_kernel_idle(page)
            return
        if again is not None and now == before and time.monotonic() - asked > 20:
            again()
            asked = time.monotonic()
        time.sleep(0.3)
    page.screenshot(path=str(ARTIFACTS / f"did_not_run_{index}.png"), full_page=True)
    raise AssertionError(f"code cell {index} did not run (its prompt went from {before!r} to {now!r}); "
                         f"dialogs: {DIALOGS}")


def run_cell(page, index: int):
    """Run code cell ``index`` (Shift+Enter in its editor) and wait until it has run."""
    before = prompt(page, index)
    accept_dialogs(page)
    page.locator(f"{NB} .jp-CodeCell").nth(index).locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    wait_until_ran(page, index, before)


def replace_cell_source(page, index: int, text: str):
    """Select the code cell's editor, replace everything in it with ``text``, run it."""
    before = prompt(page, index)
    editor = page.locator(f"{NB} .jp-CodeCell").nth(index).locator(".cm-content")
    accept_dialogs(page)
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)  # one input event: no auto-indent, no auto-closed brackets
    page.keyboard.press("Shift+Enter")
    wait_until_ran(page, index, before)


def run_checkpoint_cell(page, index: int):
    """Run every cell above the checkpoint cell (Run ▸ Run All Above Selected Cell), then the
    checkpoint cell itself. Each test stands on its own: it does not rely on an earlier test's
    kernel (on a loaded machine JupyterLab may have restarted it in between)."""
    def run_above():
        accept_dialogs(page)
        page.locator(f"{NB} .jp-CodeCell").nth(index).locator(".cm-content").click()
        page.keyboard.press("Escape")
        run_menu(page, "Run All Above Selected Cell")

    before = prompt(page, index - 1)
    run_above()
    wait_until_ran(page, index - 1, before, again=run_above)
    run_cell(page, index)


def index_of(cells: list[dict], prefix: str) -> int:
    return next(i for i, c in enumerate(cells) if c["first"].startswith(prefix))


def all_cells_ran(page) -> bool:
    return page.evaluate(
        "() => [...document.querySelectorAll('" + NB + " .jp-CodeCell .jp-InputPrompt')]"
        ".every(p => /\\d/.test(p.textContent))"
    )


def run_all(page):
    """Run ▸ Run All Cells, until the last cell has run. On a loaded machine the kernel may
    still be starting, or the menu may not open at the first click: choose it again."""
    deadline = time.monotonic() + 400
    while not all_cells_ran(page) and time.monotonic() < deadline:
        page.keyboard.press("Escape")
        run_menu(page, "Run All Cells")
        started = time.monotonic()
        while time.monotonic() - started < 30 and not page.evaluate(
                "() => [...document.querySelectorAll('" + NB + " .jp-InputPrompt')]"
                ".some(p => /[*\\d]/.test(p.textContent))"):
            time.sleep(0.5)
        wait_for_kernel_idle(page)


def show_first_checkpoint(page):
    first = index_of(code_cells(page), "# Checkpoint")
    page.locator(f"{NB} .jp-CodeCell").nth(first).scroll_into_view_if_needed()


def test_run_all_reaches_the_end_with_stubs(page):
    run_all(page)
    show_first_checkpoint(page)
    page.screenshot(path=str(ARTIFACTS / "02_run_all_with_stubs.png"), full_page=True)
    cells = code_cells(page)
    not_run = [c["first"] for c in cells if not any(ch.isdigit() for ch in c["prompt"])]
    assert not not_run, f"cells that did not run: {not_run}; dialogs: {DIALOGS}"
    checks = [c for c in cells if c["first"].startswith("# Checkpoint")]
    assert checks and all(c["output"].startswith("✗") and "not implemented yet" in c["output"] for c in checks), checks
    assert not any("Traceback" in c["output"] for c in cells)


def test_a_wrong_answer_typed_in_the_editor_gets_its_hint(page):
    cells = code_cells(page)
    answer = index_of(cells, "def rms_norm")
    replace_cell_source(page, answer, WRONG_RMS_NORM)
    check = index_of(cells, "# Checkpoint 02.rmsnorm")
    run_checkpoint_cell(page, check)
    output = code_cells(page)[check]["output"]
    page.screenshot(path=str(ARTIFACTS / "02_wrong_answer.png"), full_page=True)
    assert output.startswith("✗ 02.rmsnorm") and "Multiply the normalised x by the learned gain" in " ".join(output.split()), output


def test_a_correct_answer_typed_in_the_editor_passes_and_is_recorded(page, lab):
    from solutions import layers

    cells = code_cells(page)
    answer = index_of(cells, "def rms_norm")
    replace_cell_source(page, answer, inspect.getsource(layers.rms_norm))
    check = index_of(cells, "# Checkpoint 02.rmsnorm")
    run_checkpoint_cell(page, check)
    page.screenshot(path=str(ARTIFACTS / "02_with_answer.png"), full_page=True)
    output = code_cells(page)[check]["output"]
    assert output.startswith("✓ 02.rmsnorm") and "\n" not in output.strip(), output
    _, _, env = lab
    done = subprocess.run([sys.executable, "-m", "autograder", "progress"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "02.rmsnorm" in done.stdout or "1 / 5" in done.stdout, done.stdout + done.stderr


def test_the_learners_kernel_cannot_import_the_answers(page):
    cells = code_cells(page)
    last = len(cells) - 1
    accept_dialogs(page)
    page.locator(f"{NB} .jp-CodeCell").nth(last).locator(".cm-content").click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")  # a new cell below, in command mode
    page.keyboard.press("Enter")
    page.keyboard.insert_text("import importlib.util, os; print('solutions importable:', "
                              "importlib.util.find_spec('solutions') is not None, os.environ.get('COURSE_CHECK_MODE'))")
    before = prompt(page, last + 1)
    page.keyboard.press("Shift+Enter")
    wait_until_ran(page, last + 1, before)
    outputs = [c["output"] for c in code_cells(page)]
    assert any("solutions importable: False None" in o for o in outputs), outputs[-3:]


def test_run_all_with_the_answers_passes_every_checkpoint(browser, lab):
    """The same chapter with its answers written in (the source notebook): Run All shows a green
    ✓ line on every checkpoint and nothing else."""
    page = open_notebook(browser, lab, ANSWERS, source_path(CHAPTER))
    run_all(page)
    show_first_checkpoint(page)
    page.screenshot(path=str(ARTIFACTS / "02_run_all_with_answers.png"), full_page=True)
    cells = code_cells(page)
    assert all(any(ch.isdigit() for ch in c["prompt"]) for c in cells), "a cell did not run"
    checks = [c for c in cells if c["first"].startswith("# Checkpoint")]
    assert checks and all(c["output"].startswith("✓") and "\n" not in c["output"].strip() for c in checks), checks
    assert not any("Traceback" in c["output"] for c in cells)
    page.close()
