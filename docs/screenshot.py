"""The README's screenshot of the rating page: a session over an evaluate step's predictions, three votes in.

    python docs/screenshot.py --predictions runs/tiny/evaluate/predictions.tsv --output docs/rating_page.png

Needs the dev requirements (selenium) and the system's headless Chromium, as the browser tests do.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from browser import headless_chromium  # noqa: E402  (tests/browser.py)
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from components.human_eval.session import assign, items_from_evaluation, sample_items  # noqa: E402
from components.human_eval.store import RatingStore  # noqa: E402
from components.human_eval.web import start_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", required=True, help="an evaluate step's predictions.tsv (with base_prediction)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "rating_page.png"))
    args = parser.parse_args()
    items = sample_items(items_from_evaluation(Path(args.predictions)), 10, seed=0)
    store = RatingStore.create(Path(tempfile.mkdtemp()) / "session.sqlite", items, assign(items, ["anna"], 1, seed=0), {})
    server = start_server(store, "127.0.0.1", 0, on_vote=lambda: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = headless_chromium(width=1100, height=760)
    try:
        driver.get(f"http://127.0.0.1:{server.server_port}/r/{store.tokens()['anna']}")
        for done, key in enumerate("13b"):
            driver.find_element(By.TAG_NAME, "body").send_keys(key)
            WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
                lambda d: d.find_element(By.ID, "count").text == f"{done + 1} / 10"
            )
        driver.save_screenshot(args.output)
    finally:
        driver.quit()
        server.shutdown()
    print(f"Wrote {args.output}.")


if __name__ == "__main__":
    main()
