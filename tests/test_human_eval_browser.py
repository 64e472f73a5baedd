"""The raters' page in a real browser (headless Chromium): keyboard voting through a server killed mid-session,
two raters at once, and untrusted text that stays text."""

from __future__ import annotations

import sqlite3
import threading
import urllib.request

import pandas as pd
import pytest
from browser import headless_chromium
from rating_sessions import SYSTEMS, free_port, rating_commands, serving, system_of, write_evaluations  # noqa: F401 (rating_commands is a fixture)
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from components.human_eval.session import assign, items_from_evaluations
from components.human_eval.store import RatingStore

KEYS = {"left": ("1", Keys.ARROW_LEFT), "right": ("2", Keys.ARROW_RIGHT), "tie": ("3", "t"), "both_bad": ("4", "b")}
WAIT_S = 20


@pytest.fixture
def browser():
    driver = headless_chromium()
    yield driver
    driver.quit()


def count_shown(driver) -> str:
    """The count's text, or "" while the page is being replaced: Chromium may then answer for the old page's element with
    "Node with given id does not belong to the document", which selenium raises as a plain WebDriverException."""
    try:
        return driver.find_element(By.ID, "count").text
    except WebDriverException as replaced:
        if "does not belong to the document" not in str(replaced):
            raise
        return ""


def wait_for_count(driver, expected: str) -> None:
    # The element goes stale as the page is replaced after a vote: read it again.
    WebDriverWait(driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)).until(
        lambda d: count_shown(d) == expected, f"the page never showed {expected}"
    )


def vote_with_key(driver, key: str, done: int, total: int) -> tuple[str, str]:
    """Press ``key`` on the item shown after ``done`` votes; (left answer, right answer) it showed."""
    wait_for_count(driver, f"{done} / {total}")
    shown = driver.find_element(By.ID, "left").text, driver.find_element(By.ID, "right").text
    driver.find_element(By.TAG_NAME, "body").send_keys(key)
    wait_for_count(driver, f"{done + 1} / {total}")
    return shown


def test_a_rater_votes_with_the_keyboard_through_a_server_kill_and_each_vote_is_stored_once(tmp_path, browser, clearml_home, rating_commands):
    paths = write_evaluations(tmp_path)
    session, output = tmp_path / "session.sqlite", tmp_path / "out"
    arguments = [
        "--local",
        "--predictions",
        ",".join(str(p.parent) for p in paths.values()),
        "--raters",
        "anna",
        "--overlap",
        "1",
        "--items",
        "10",
        "--seed",
        "5",
        "--session",
        str(session),
        "--port",
        str(free_port()),
        "--output-dir",
        str(output),
    ]
    planned = ["left", "right", "tie", "both_bad", "right", "left", "tie", "both_bad", "left", "right"]
    command = rating_commands(clearml_home, arguments)
    browser.get(command.links["anna"])
    shown = []
    for position, choice in enumerate(planned):
        if position == 4:  # four votes acknowledged: the server dies without warning, and is started again
            command.kill()
            command = rating_commands(clearml_home, arguments)
            assert "Continuing the session" in "".join(command.output)
            browser.get(command.links["anna"])
            assert browser.find_element(By.ID, "progress").get_attribute("value") == "4"
        if position == 6:  # a double press: the page sends one vote
            wait_for_count(browser, "6 / 10")
            shown.append((browser.find_element(By.ID, "left").text, browser.find_element(By.ID, "right").text))
            ActionChains(browser).send_keys(KEYS[choice][0]).send_keys(KEYS[choice][0]).perform()  # both before the page goes
            wait_for_count(browser, "7 / 10")
            # A resent request (here the first vote's, with another choice) changes nothing and still gets its answer.
            resent = urllib.request.urlopen(command.links["anna"], data=b"position=0&choice=right", timeout=WAIT_S)
            assert resent.status == 200 and resent.url == command.links["anna"]  # 303 followed back to the page
            continue
        shown.append(vote_with_key(browser, KEYS[choice][position % 2], position, len(planned)))
    assert browser.find_element(By.TAG_NAME, "h1").text == "All 10 items rated. Thank you!"
    assert command.wait() == 0, "".join(command.output)  # every vote in: the command reports and ends by itself

    with sqlite3.connect(session) as database:  # the store itself, not the command's report
        stored = database.execute(
            "SELECT a.position, v.choice, a.left_system FROM votes v JOIN assignments a "
            "ON a.rater = v.rater AND a.item_id = v.item_id ORDER BY a.position"
        ).fetchall()
    assert [(position, choice) for position, choice, _ in stored] == list(enumerate(planned))
    assert [left for *_, left in stored] == [system_of(left) for left, _ in shown]
    ratings = pd.read_csv(output / "ratings.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert len(ratings) == 10 and ratings["item"].is_unique
    expected_preferred = [
        system_of({"left": left, "right": right}[choice]) if choice in ("left", "right") else choice for (left, right), choice in zip(shown, planned)
    ]
    assert ratings.sort_values("position", key=lambda p: p.astype(int))["preferred"].tolist() == expected_preferred


def session_of(tmp_path, raters: list[str], overlap: int, **evaluations) -> RatingStore:
    items = items_from_evaluations(write_evaluations(tmp_path / "evaluations", **evaluations))
    return RatingStore.create(tmp_path / "session.sqlite", items, assign(items, raters, overlap, seed=1), {"seed": "1"})


def test_two_raters_vote_at_the_same_time_and_every_vote_counts(tmp_path):
    store = session_of(tmp_path, ["anna", "boris"], overlap=2, rows=8)
    plans = {"anna": ["left", "tie", "right", "both_bad"] * 2, "boris": ["right", "right", "left", "tie"] * 2}
    start = threading.Barrier(2)
    failures = []

    def rate(rater: str, base: str) -> None:
        driver = headless_chromium()
        try:
            driver.get(f"{base}/r/{store.tokens()[rater]}")
            start.wait(timeout=WAIT_S)
            for position, choice in enumerate(plans[rater]):
                vote_with_key(driver, KEYS[choice][0], position, len(plans[rater]))
        except Exception as error:  # reported by the test, not lost in the thread
            failures.append(f"{rater}: {error!r}")
        finally:
            driver.quit()

    with serving(store) as base:
        threads = [threading.Thread(target=rate, args=(rater, base)) for rater in plans]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not failures
    with sqlite3.connect(store.path) as database:
        stored = database.execute(
            "SELECT v.rater, a.position, v.choice FROM votes v JOIN assignments a "
            "ON a.rater = v.rater AND a.item_id = v.item_id ORDER BY v.rater, a.position"
        ).fetchall()
    assert stored == [(rater, position, choice) for rater, plan in sorted(plans.items()) for position, choice in enumerate(plan)]


HOSTILE = ["<script>window.hacked = 'script'</script>", "<img src=x onerror=\"window.hacked = 'img'\">"]


def test_untrusted_text_is_shown_as_text_and_no_system_name_reaches_the_page(tmp_path, browser):
    answers = {"system-one": [HOSTILE[0], HOSTILE[1]], "system-two": [HOSTILE[1], "<b>жирный</b>\n  вторая строка"]}
    store = session_of(tmp_path, ["anna"], overlap=1, rows=2, answers=answers, instructions=["<i>курсив</i> & «кавычки»", HOSTILE[0]])
    with serving(store) as base:
        browser.get(f"{base}/r/{store.tokens()['anna']}")
        for done in range(2):
            wait_for_count(browser, f"{done} / 2")
            item = store.next_item("anna")
            for element, text in (("instruction", item.instruction), ("left", item.left_answer), ("right", item.right_answer)):
                assert browser.find_element(By.ID, element).text == text.replace("\n  ", "\n  ")
            assert browser.find_elements(By.TAG_NAME, "img") == [] and browser.find_elements(By.CSS_SELECTOR, "main b, main i") == []
            assert browser.execute_script("return window.hacked") is None
            assert not any(system in browser.page_source for system in SYSTEMS)  # blind: not even in the form
            browser.find_element(By.TAG_NAME, "body").send_keys("3")
            wait_for_count(browser, f"{done + 1} / 2")
