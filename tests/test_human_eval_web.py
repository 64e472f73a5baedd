"""``components.human_eval.web`` through Flask's test client: what each request gets (the page, a vote stored once,
400 for a vote that names no item or choice, 404 for any other token), the headers on every response, the results
page's figures, and the server's request log without tokens. Raters in a real browser: test_human_eval_browser.py."""

from __future__ import annotations

import html
import logging
import re
import socket
import urllib.parse
import urllib.request

import pytest
from rating_sessions import free_port, serving

from components.errors import UserError
from components.human_eval import web
from components.human_eval.session import PairItem, assign
from components.human_eval.store import RatingStore
from components.human_eval.summary import summarise

ROWS = 4


@pytest.fixture
def store(tmp_path) -> RatingStore:
    items = [
        PairItem(f"{row}:a:b", row, f"Инструкция {row}", f"вход {row}", f"эталон {row}", a, f"ответ {a} {row}", b, f"ответ {b} {row}")
        for row in range(ROWS)
        for a, b in [("a", "b")]
    ]
    return RatingStore.create(tmp_path / "session.sqlite", items, assign(items, ["anna", "boris"], 2, seed=1), {"seed": "1"})


@pytest.fixture
def votes_seen() -> list[int]:
    return []


@pytest.fixture
def client(store, votes_seen):
    return web.create_app(store, on_vote=lambda: votes_seen.append(1)).test_client()


def position_on(page: str) -> str:
    return re.search(r'name="position" value="(\d+)"', page).group(1)


def test_a_rater_sees_the_next_item_votes_once_and_is_sent_back_to_the_page(store, client, votes_seen):
    link = f"/r/{store.tokens()['anna']}"
    page = client.get(link)
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    shown = store.next_item("anna")
    assert position_on(text) == str(shown.position) and html.escape(shown.left_answer) in text and "0 / 4" in text
    buttons = re.findall(r'<button type="submit" name="choice" value="(\w+)" data-keys="([^"]+)">([^<]+) <kbd>', text)
    assert buttons == [
        ("left", "1 ArrowLeft", "Left is better"),
        ("tie", "3 t", "Equally good"),
        ("both_bad", "4 b", "Both bad"),
        ("right", "2 ArrowRight", "Right is better"),
    ]

    voted = client.post(link, data={"position": position_on(text), "choice": "right", "comment": "  " + "ж" * 2500 + "  "})
    assert (voted.status_code, voted.headers["Location"]) == (303, link)
    assert votes_seen == [1]
    [rating] = store.ratings()
    assert (rating["rater"], rating["item"], rating["choice"], rating["comment"]) == ("anna", shown.item_id, "right", "ж" * 2000)
    again = client.post(link, data={"position": position_on(text), "choice": "left"})  # the same item again: not counted
    assert again.status_code == 303 and votes_seen == [1] and [r["choice"] for r in store.ratings()] == ["right"]
    assert "1 / 4" in client.get(link).get_data(as_text=True)


@pytest.mark.parametrize(
    "form",
    [
        {"choice": "left"},
        {"position": "0"},
        {"position": "0", "choice": "middle"},
        {"position": "x", "choice": "left"},
        {"position": "-1", "choice": "left"},
        {"position": str(ROWS), "choice": "left"},
    ],
)
def test_a_vote_without_an_item_of_the_rater_or_a_choice_is_400_and_stores_nothing(store, client, votes_seen, form):
    response = client.post(f"/r/{store.tokens()['anna']}", data=form)
    assert response.status_code == 400 and store.ratings() == [] and votes_seen == []


def test_any_other_token_is_404_and_every_response_carries_the_security_headers(store, client):
    rater, results = store.tokens()["anna"], store.setting("results_token")
    responses = {
        "unknown rater": client.get("/r/nobody"),
        "unknown voter": client.post("/r/nobody", data={"position": "0", "choice": "left"}),
        "a rater's token for the results": client.get(f"/results/{rater}"),
        "results": client.get(f"/results/{results}"),
        "page": client.get(f"/r/{rater}"),
        "bad vote": client.post(f"/r/{rater}"),
        "vote": client.post(f"/r/{rater}", data={"position": "0", "choice": "tie"}),
        "script": client.get("/static/rate.js"),
    }
    assert {name: r.status_code for name, r in responses.items()} == {
        "unknown rater": 404,
        "unknown voter": 404,
        "a rater's token for the results": 404,
        "results": 200,
        "page": 200,
        "bad vote": 400,
        "vote": 303,
        "script": 200,
    }
    for response in responses.values():
        assert {name: response.headers.get(name) for name in web.SECURITY_HEADERS} == {
            "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        }
        response.close()


def test_the_results_page_shows_the_sessions_statistics_and_each_raters_progress(store, client):
    for rater, choices in {"anna": ["left", "left", "tie"], "boris": ["right"]}.items():
        for choice in choices:
            client.post(f"/r/{store.tokens()[rater]}", data={"position": str(store.next_item(rater).position), "choice": choice})
    text = html.unescape(client.get(f"/results/{store.setting('results_token')}").get_data(as_text=True))
    assert "4 votes on a, b" in text
    assert re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td><td>(\d+)</td></tr>", text) == [("anna", "3", "4"), ("boris", "1", "4")]
    [outcome] = summarise(store.votes(), store.items()).outcomes
    row = re.search(r"<tr><td>a</td><td>b</td><td>(\d+)</td><td>([\d.]+) ", text)
    assert row.groups() == (str(outcome.wins.total), f"{outcome.wins.rate:.2f}")


def test_the_server_serves_the_app_on_the_port_asked_for_and_logs_no_token(store, caplog):
    port, votes = free_port(), []
    tokens = [store.tokens()["anna"], store.setting("results_token")]
    with caplog.at_level(logging.INFO, logger="werkzeug"), serving(store, port, lambda: votes.append(1)) as base:
        assert base == f"http://127.0.0.1:{port}"
        vote = urllib.parse.urlencode({"position": store.next_item("anna").position, "choice": "tie"}).encode()
        for path, data in ((f"/r/{tokens[0]}", vote), (f"/results/{tokens[1]}?x=1", None)):
            with urllib.request.urlopen(base + path, data=data, timeout=20) as response:
                assert response.status == 200
    assert votes == [1] and [r["choice"] for r in store.ratings()] == ["tie"]
    lines = [re.sub(r"\x1b\[[\d;]*m", "", record.getMessage()) for record in caplog.records if record.name == "werkzeug"]  # colours off
    requests = ['"POST /r/... HTTP/1.1" 303 -', '"GET /r/... HTTP/1.1" 200 -', '"GET /results/...?x=1 HTTP/1.1" 200 -']
    assert [re.fullmatch(r"127\.0\.0\.1 - - \[[^]]+\] (.*)", line).group(1) for line in lines] == requests


def test_a_stalled_connection_does_not_hold_up_other_raters(store):
    with serving(store, 0, lambda: None) as base, socket.create_connection(base.removeprefix("http://").split(":")) as stalled:
        stalled.sendall(b"GET /r/")  # a request that never ends
        with urllib.request.urlopen(f"{base}/r/{store.tokens()['anna']}", timeout=5) as response:
            assert response.status == 200


def test_a_port_in_use_is_one_sentence(store):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as refused:
            web.start_server(store, "127.0.0.1", port, on_vote=lambda: None)
    assert str(refused.value) == f"Cannot serve on 127.0.0.1:{port} (Address already in use); choose another --port or --host."
