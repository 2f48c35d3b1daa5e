"""Notebook 08 in a real browser: ``make browser-check`` (or ``python -m sbldm.report.browser_check``).

What the in-process tests of ``sbldm.report.steer`` cannot show: that JupyterLab renders
the ipywidgets panel, that its buttons reach the kernel and that the figure comes back.
The check starts JupyterLab on localhost with a one-off token, opens
``notebooks/08_steer_a_tumour.ipynb`` in Chromium (Debian's ``/usr/bin/chromium``, driven
by Playwright, headless), runs every cell on the notebook's "Python (sbldm)" kernel,
presses **generate**, screenshots the panel, moves the ``x`` slider with the keyboard,
presses **generate** again and screenshots it. It fails, naming the step, if the panel
never appears, the slider does not move or the figure does not change.

Output (``--out``, default ``results/small/figures``): ``browser_steer_before.png``,
``browser_steer_after.png`` and ``browser_check.json`` (versions, slider values, the
status line the panel printed, seconds per step).

Needs the ``browser`` extra (Playwright's Python driver; no browser download) and Debian's
``chromium`` package; ``make browser-check`` installs both. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from sbldm.paths import REPO_ROOT

NOTEBOOK = "notebooks/08_steer_a_tumour.ipynb"
CHROMIUM = "/usr/bin/chromium"
# flags a closed network needs: no background connections, updates or sync
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class CheckFailed(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(port: int, token: str, log_path: Path) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1:``port`` serving the repository, waited for until it answers."""
    log = open(log_path, "w")
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={REPO_ROOT}", "--ServerApp.open_browser=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    for _ in range(120):
        if proc.poll() is not None:
            raise CheckFailed(f"JupyterLab exited ({proc.returncode}); see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise CheckFailed(f"JupyterLab did not answer on port {port} within 60 s; see {log_path}")


def _step(record: dict, name: str, t0: float) -> None:
    record["steps"].append({"step": name, "seconds": round(time.perf_counter() - t0, 1)})
    print(f"  {name} ({time.perf_counter() - t0:.1f} s)", flush=True)


def drive(page, base: str, token: str, out: Path, record: dict, timeout_s: float) -> None:
    """The clicks and key presses of a reader, with a screenshot before and after."""
    t0 = time.perf_counter()
    ms = int(timeout_s * 1000)
    page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=ms)
    kernel = page.locator(".jp-Toolbar-kernelName").first
    kernel.wait_for(timeout=ms)
    deadline = time.perf_counter() + timeout_s      # "No Kernel" until the session has started
    while "sbldm" not in (shown := kernel.inner_text().strip()) and time.perf_counter() < deadline:
        page.wait_for_timeout(250)
    record["kernel_shown"] = shown
    if "sbldm" not in record["kernel_shown"]:
        raise CheckFailed(f"the notebook opened with kernel {record['kernel_shown']!r}, not 'Python (sbldm)'")
    _step(record, "notebook opened", t0)

    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
    generate = page.locator("button.jupyter-button", has_text="generate").last
    try:
        generate.wait_for(state="visible", timeout=ms)
    except Exception as e:
        raise CheckFailed("the steering panel never appeared after 'Run All Cells'") from e
    _step(record, "all cells ran, panel shown", t0)

    panel = page.locator(".widget-hbox", has=generate).first     # the outer box (the button row is one too)
    status = page.locator(".widget-html").last

    def press_generate(label: str) -> str:
        old = panel.locator("img").last.get_attribute("src") if panel.locator("img").count() else None
        generate.click()
        page.wait_for_function(
            """([sel, old]) => { const imgs = document.querySelectorAll(sel);
                 const img = imgs[imgs.length - 1]; return img && img.src && img.src !== old; }""",
            arg=[".widget-output img", old], timeout=ms)
        page.wait_for_timeout(500)
        record[f"status_{label}"] = status.inner_text().strip()
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=str(out / f"browser_steer_{label}.png"))
        _step(record, f"generated ({label}), screenshot taken", t0)
        return panel.locator("img").last.get_attribute("src")

    first = press_generate("before")
    slider = panel.locator(".widget-slider").filter(
        has=page.locator("label", has_text=re.compile(r"^\s*x\s*$"))).first
    readout = slider.locator(".widget-readout")
    record["x_before"] = readout.inner_text().strip()
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for _ in range(8):
        handle.press("ArrowRight")
    record["x_after"] = readout.inner_text().strip()
    if record["x_after"] == record["x_before"]:
        raise CheckFailed(f"the x slider did not move from {record['x_before']} under the keyboard")
    _step(record, f"x slider moved {record['x_before']} -> {record['x_after']}", t0)
    second = press_generate("after")
    if second == first:
        raise CheckFailed("the figure did not change after moving the slider and pressing generate")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sbldm.report.browser_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO_ROOT / "results" / "small" / "figures"), help="where the screenshots go")
    ap.add_argument("--chromium", default=CHROMIUM, help="the Chromium executable (default: Debian's)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds each step may take")
    args = ap.parse_args(argv)
    if not Path(args.chromium).is_file():
        print(f"error: no Chromium at {args.chromium}; `make browser-check` installs Debian's chromium package",
              file=sys.stderr)
        return 2
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("error: Playwright is missing; install the extra: pip install -e '.[browser]'", file=sys.stderr)
        return 2
    from sbldm.io import atomic_write_json
    from sbldm.provenance import library_versions

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port, token = _free_port(), secrets.token_hex(16)
    log_path = Path(tempfile.gettempdir()) / "sbldm_browser_check_jupyterlab.log"
    version = subprocess.run([args.chromium, "--version"], capture_output=True, text=True).stdout.strip()
    record = {"notebook": NOTEBOOK, "chromium": version, "versions": library_versions(), "steps": [],
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"JupyterLab on 127.0.0.1:{port}, {version} ...", flush=True)
    lab = start_lab(port, token, log_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            try:
                drive(page, f"http://127.0.0.1:{port}", token, out, record, args.timeout)
                record["result"] = "passed"
            except Exception as e:     # noqa: BLE001  (any failure is reported with a screenshot)
                record["result"] = f"failed: {e}"
                page.screenshot(path=str(out / "browser_steer_failure.png"), full_page=True)
                raise
            finally:
                atomic_write_json(out / "browser_check.json", record)
                browser.close()
    except Exception as e:   # noqa: BLE001
        print(f"error: browser check failed: {e} (screenshot browser_steer_failure.png, log {log_path})",
              file=sys.stderr)
        return 1
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=20)
        except subprocess.TimeoutExpired:
            lab.kill()
    print(f"passed; screenshots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
