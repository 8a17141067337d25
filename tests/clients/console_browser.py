"""Drives the web console in headless Chromium through its WebDriver
(chromedriver), for tests/tests/console.rs.

    console_browser.py OPERATOR_LINK VIEWER_LINK SCREENSHOT_DIR [TOUCHED]

Signs in with the operator's one-time link, waits on the incident queue
and prints READY; the test then logs in at a decoy (and, as root, reads a
planted honeyfile) and writes one line to stdin. The new incident must
appear in the queue without a reload within 2 s. Then: the incident page (its attack path drawn, the attacker's markup
shown as text and never run), acknowledging it, and, signed in as a
viewer, no controls and forged POSTs refused. With TOUCHED (`yes`), a
lure was read by a process whose command line is markup: the event stream
shows it as text and it never runs. Prints OK at the end; any
failure raises (non-zero exit) with what was seen.
"""

import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        # The console's certificate is signed by the controller's own CA,
        # which this throw-away profile does not know.
        "--ignore-certificate-errors",
        "--window-size=1280,800",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait_for(what, check, within):
    deadline = time.monotonic() + within
    while True:
        try:
            value = check()
        except StaleElementReferenceException:
            # The page was replaced between finding and reading.
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        time.sleep(0.05)


def main_text(driver):
    """The text of the page's <main>, read in one script: a click that
    submits a form replaces the page, and an element found by one
    WebDriver call is stale by the next."""
    return driver.execute_script(
        "const m = document.querySelector('main'); return m ? m.innerText : ''"
    )


def rows(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#queue tbody tr")


def fetch_status(driver, path, body):
    """The status of a POST made from the page's own origin (what a forged
    request from a script on the page would get)."""
    return driver.execute_async_script(
        """
        const [path, body, done] = arguments;
        fetch(path, {method: 'POST', body: body, credentials: 'same-origin',
                     redirect: 'manual',
                     headers: {'Content-Type': 'application/x-www-form-urlencoded'}})
          .then(r => done(r.status), e => done(String(e)));
        """,
        path,
        body,
    )


def main():
    operator_link, viewer_link, shots = sys.argv[1], sys.argv[2], sys.argv[3]
    touched = len(sys.argv) > 4 and sys.argv[4] == "yes"
    base = operator_link.split("/signin")[0]
    driver = browser()
    try:
        driver.get(operator_link)
        assert driver.title.startswith("Incidents"), driver.title
        before = len(rows(driver))
        driver.execute_script("window.marker = 1")
        print("READY", flush=True)
        sys.stdin.readline()
        tripped = time.monotonic()
        wait_for("the new incident in the queue", lambda: len(rows(driver)) > before, 5)
        appeared = time.monotonic() - tripped
        print(f"appeared after {appeared:.2f}s", flush=True)
        assert appeared <= 2.0, f"the incident took {appeared:.2f}s to appear"
        if touched:
            # The honeyfile's incident too.
            wait_for("the lure's incident", lambda: len(rows(driver)) >= before + 2, 5)
        assert driver.execute_script("return window.marker === 1"), "the page was reloaded"
        # The decoy login's incident (a lure read may have opened another).
        # Looked up in one script: the live queue may replace its rows
        # between two WebDriver calls.
        href = wait_for(
            "the decoy login's incident",
            lambda: driver.execute_script(
                "return [...document.querySelectorAll('#queue tbody a')]"
                ".filter(a => a.textContent.includes('decoy files01'))"
                ".map(a => a.href)[0] || null"
            ),
            5,
        )
        driver.get(href)
        wait_for("the incident page", lambda: driver.find_elements(By.CSS_SELECTOR, "svg.path"), 5)
        hops = driver.find_elements(By.CSS_SELECTOR, "svg.path g.hop")
        assert len(hops) >= 2, f"{len(hops)} hops drawn"
        text = main_text(driver)
        assert "<script>window.pwned=1</script>" in text, text
        assert driver.execute_script("return window.pwned === undefined"), "a script ran"
        driver.save_screenshot(f"{shots}/incident.png")
        driver.find_element(By.XPATH, "//button[text()='Acknowledge']").click()
        wait_for(
            "the acknowledgement",
            lambda: "Acknowledged by admin/" in main_text(driver),
            5,
        )
        incident_path = driver.execute_script("return location.pathname")
        driver.get(base + "/audit")
        log = main_text(driver)
        acks = [l for l in log.splitlines() if "incident.ack" in l]
        assert any("admin/olga" in l and "via console" in l for l in acks), log
        driver.get(base + "/incidents")
        driver.save_screenshot(f"{shots}/queue.png")
        driver.get(base + "/fleet")
        text = main_text(driver)
        assert "role=decoy" in text and "files01" in text, text
        driver.save_screenshot(f"{shots}/fleet.png")
        if touched:
            driver.get(base + "/events?kind=touch")
            text = main_text(driver)
            assert "<script>window.pwned=3</script>" in text, text
            assert driver.execute_script("return window.pwned === undefined"), "a script ran"

        driver.delete_all_cookies()
        driver.get(viewer_link)
        driver.get(base + incident_path)
        buttons = [b.text for b in driver.find_elements(By.TAG_NAME, "button")]
        assert buttons == ["Sign out"], buttons
        csrf = driver.find_element(By.NAME, "csrf").get_attribute("value")
        forged = fetch_status(driver, incident_path + "/resolve", f"csrf={csrf}&note=x")
        assert forged == 403, forged
        no_token = fetch_status(driver, incident_path + "/resolve", "note=x")
        assert no_token == 403, no_token
        print("OK", flush=True)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
