"""The chat page at GET / in a real browser: Debian's chromium, headless, driven by selenium through
Debian's chromium-driver (scripts/_system_deps.sh installs both). Upload an image, ask, watch the
answer stream in with its token/latency line; thinking comes back collapsed; Stop ends a
generation (the server sees the client go and frees the slot); New chat starts over; an image
dropped onto the page is sent too."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import pytest

from tests.test_server import Server, _png

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def _first(paths, name):
    found = next((p for p in paths if Path(p).is_file()), None) or shutil.which(name)
    assert found, f"{name} is missing: install Debian's chromium and chromium-driver (scripts/_system_deps.sh)"
    return found


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    folder = Path(store.converted("minicpmv-4.5").text_path).parent
    s = Server(folder, tmp_path_factory.mktemp("page") / "server.log", "--parallel", "2")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900"):
        opts.add_argument(arg)
    opts.binary_location = _first(CHROMIUM, "chromium")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(_first(DRIVER, "chromedriver")), options=opts)
    d.set_script_timeout(30)
    yield d
    d.quit()


def _wait(d, cond, timeout=120, what="condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout, poll_frequency=0.02).until(cond, message=f"waiting for {what}")


def _by(css):
    from selenium.webdriver.common.by import By

    return By.CSS_SELECTOR, css


def _open(d, server):
    d.get(server.url + "/")
    _wait(d, lambda d: d.find_element(*_by("#model")).text == "v45", 60, "the model name")


def _set(d, css, value):
    el = d.find_element(*_by(css))
    el.clear()
    el.send_keys(value)


def _answers(d):
    return d.find_elements(*_by(".msg.assistant"))


def test_upload_ask_and_watch_the_answer_stream(server, browser, tmp_path):
    d = browser
    _open(d, server)
    png = tmp_path / "photo.png"
    png.write_bytes(_png(64, 48, seed=41))
    d.find_element(*_by("#file-input")).send_keys(str(png))
    _wait(d, lambda d: d.find_elements(*_by("#pending img")), 10, "the image preview")
    _set(d, "#max-tokens", "200")
    _set(d, "#temperature", "0")
    d.find_element(*_by("#prompt")).send_keys("What is in this picture?")
    d.find_element(*_by("#send")).click()
    assert d.find_element(*_by(".msg.user img")).get_attribute("src").startswith("data:image/png;base64,")
    # streamed: the answer is seen growing before its stats line (the end) appears
    lengths = set()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        last = _answers(d)[-1]
        if last.find_element(*_by(".stats")).text:
            break
        lengths.add(len(last.find_element(*_by(".answer")).text))
        time.sleep(0.01)
    stats = _answers(d)[-1].find_element(*_by(".stats")).text
    assert len(lengths - {0}) >= 2, f"no partial answers seen: {sorted(lengths)}"
    # "N prompt tokens · M tokens · first token X ms · R tok/s · T ms · reason"
    parts = stats.split(" · ")
    assert parts[0].endswith(" prompt tokens") and parts[1].endswith(" tokens") and "first token" in parts[2], stats
    n_prompt, n_out = int(parts[0].split()[0]), int(parts[1].split()[0])
    assert n_prompt > 64 and 0 < n_out <= 200  # the image's 64 tokens are in the prompt
    assert parts[-1] in ("stop", "length") and parts[-2].endswith(" ms")
    assert _answers(d)[-1].find_element(*_by(".answer")).text.strip()
    assert not d.find_element(*_by("#send")).get_attribute("disabled")
    # the conversation goes on: the second question carries the first turn
    d.find_element(*_by("#prompt")).send_keys("And the colours?")
    d.find_element(*_by("#send")).click()
    _wait(d, lambda d: len(_answers(d)) == 2 and _answers(d)[1].find_element(*_by(".stats")).text, 120, "answer 2")
    # (the answer's text is tokenized again as the assistant turn: the tiny model's byte soup merges
    # into fewer tokens than were generated, so half of them is the bound)
    assert int(_answers(d)[1].find_element(*_by(".stats")).text.split()[0]) > n_prompt + n_out // 2 + 4
    d.find_element(*_by("#new-chat")).click()
    assert not d.find_elements(*_by(".msg"))


def test_thinking_is_shown_collapsed(server, browser):
    d = browser
    _open(d, server)
    _set(d, "#max-tokens", "24")
    d.find_element(*_by("#thinking")).click()
    d.find_element(*_by("#prompt")).send_keys("Think first, then answer.")
    d.find_element(*_by("#send")).click()
    _wait(d, lambda d: _answers(d) and _answers(d)[-1].find_element(*_by(".stats")).text, 120, "the answer")
    box = _answers(d)[-1].find_element(*_by("details.thinking"))
    assert box.is_displayed() and box.get_attribute("open") is None  # there, and collapsed
    hidden = box.find_element(*_by(".reasoning"))
    assert not hidden.is_displayed() and hidden.get_attribute("textContent").strip()
    box.find_element(*_by("summary")).click()
    assert hidden.is_displayed()
    d.find_element(*_by("#thinking")).click()


def _stopped_mid_answer(d, server) -> bool:
    """Ask for a long answer, press Stop once tokens show; True when the page stopped it and the server
    saw the client leave (False: the random model ended its answer before the click landed)."""
    before = server.log_path.read_text().count("client disconnected")
    d.find_element(*_by("#prompt")).send_keys("Write a very long story.")
    d.find_element(*_by("#send")).click()
    _wait(d, lambda d: len(_answers(d)[-1].find_element(*_by(".answer")).text) > 0, 120, "the first tokens")
    d.find_element(*_by("#stop")).click()
    _wait(d, lambda d: _answers(d)[-1].find_element(*_by(".stats")).text, 120, "the stats line")
    stats = _answers(d)[-1].find_element(*_by(".stats")).text
    if not stats.endswith("stopped"):  # the answer was complete before the click
        assert stats.split(" · ")[-1] in ("stop", "length"), stats
        return False
    shown = _answers(d)[-1].find_element(*_by(".answer")).text
    time.sleep(0.5)
    assert _answers(d)[-1].find_element(*_by(".answer")).text == shown  # nothing arrives after Stop
    deadline = time.monotonic() + 20
    while server.log_path.read_text().count("client disconnected") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    return server.log_path.read_text().count("client disconnected") > before


def test_stop_ends_a_generation(server, browser):
    d = browser
    _open(d, server)
    _set(d, "#max-tokens", "3000")
    _set(d, "#temperature", "1")
    # the slot was freed, not left running (a few tries: see _stopped_mid_answer)
    assert any(_stopped_mid_answer(d, server) for _ in range(6))
    n = len(_answers(d))
    _set(d, "#max-tokens", "8")
    d.find_element(*_by("#prompt")).send_keys("Short one.")
    d.find_element(*_by("#send")).click()
    _wait(d, lambda d: len(_answers(d)) == n + 1 and _answers(d)[n].find_element(*_by(".stats")).text, 120,
          "the next answer")
    d.find_element(*_by("#new-chat")).click()


def test_an_image_dropped_on_the_page_is_sent(server, browser):
    d = browser
    _open(d, server)
    b64 = base64.b64encode(_png(40, 40, seed=42)).decode()
    d.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
    """, b64)
    _wait(d, lambda d: d.find_elements(*_by("#pending img")), 10, "the dropped image")
    _set(d, "#max-tokens", "4")
    d.find_element(*_by("#prompt")).send_keys("What is it?")
    d.find_element(*_by("#send")).click()
    _wait(d, lambda d: _answers(d) and _answers(d)[-1].find_element(*_by(".stats")).text, 120, "the answer")
    assert int(_answers(d)[-1].find_element(*_by(".stats")).text.split()[0]) > 64
    severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
