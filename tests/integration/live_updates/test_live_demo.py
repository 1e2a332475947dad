"""The /demo/unread page in headless Chromium: a write elsewhere changes its badge within a
second, and a reconnect (the stream process restarted) resumes without a ``reset``."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from werkzeug.serving import make_server

from service import create_app
from service.auth import make_token
from tests.support.auth import JWT_SECRET
from tests.support.group_feed import make_group, post_item
from tests.support.live_updates import StreamServer, run_jobs
from tests.support.servers import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
           "chromium-driver; .ci/run installs them)",
)
U = 7


def test_demo_page_is_off_by_default(client):
    assert client.get("/demo/unread").status_code == 404


def test_demo_badge_is_live_and_resumes(settings, admin_headers):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    port, stream_port = free_port(), free_port()
    own = settings.replace(demo_pages=True, stream_port=stream_port,
                           public_base_url=f"http://127.0.0.1:{port}")
    app = create_app({"SETTINGS": own, "TESTING": True})
    web = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    client = app.test_client()
    group = make_group(client, admin_headers, members=[U])
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    stream = StreamServer(own, port=stream_port).start()
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        token = make_token(JWT_SECRET, U)
        driver.get(f"http://127.0.0.1:{port}/demo/unread#token={token}")
        wait = WebDriverWait(driver, 10)
        wait.until(lambda d: d.execute_script("return window.demo.source && "
                                              "window.demo.source.readyState === 1"))
        assert driver.find_element("id", "badge").text == "0"

        started = time.monotonic()
        post_item(client, admin_headers, group)  # a write elsewhere
        run_jobs(app.extensions["hc"])  # its fan-out job
        WebDriverWait(driver, 1, poll_frequency=0.02).until(
            lambda d: d.find_element("id", "badge").text == "1")
        assert time.monotonic() - started < 1.0

        stream.stop()  # the stream process goes away; a write happens meanwhile
        post_item(client, admin_headers, group)
        run_jobs(app.extensions["hc"])
        stream = StreamServer(own, port=stream_port).start()
        wait.until(lambda d: d.find_element("id", "badge").text == "2")
        assert driver.execute_script("return window.demo.connects") >= 2
        assert driver.execute_script("return window.demo.resets") == 0
    finally:
        driver.quit()
        stream.stop()
        web.shutdown()
        app.extensions["hc"].close()
