"""The raters' web page and the results view, a Flask app over a :class:`~components.human_eval.store.RatingStore`.

- ``GET /r/<token>``: the rater's first unvoted item (so a returning rater continues where they stopped),
  a progress bar, the four choices and an optional comment. Blind: the page never holds a system's
  name (it posts the item's position, not its id) and a rater sees no one's votes, not even their own.
- ``POST /r/<token>``: the vote, committed before the answer (303 back to the page: a reload resends nothing).
- ``GET /results/<token>``: the statistics, behind a token of its own.

Every text is rendered by Jinja with autoescaping and shown with ``white-space: pre-wrap``; the
Content-Security-Policy allows no inline script or style, so untrusted text (instructions, model
answers, comments) can only ever be text. Unknown tokens get a 404 that says no more.
"""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import Callable

from flask import Flask, abort, redirect, render_template, request, url_for
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server, select_address_family

from components.errors import UserError
from components.human_eval.statistics import CHOICES
from components.human_eval.store import RatingStore
from components.human_eval.summary import summarise

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the page's address holds the rater's token
    "Cache-Control": "no-store",
}
CHOICE_LABELS = {"left": "Left is better", "right": "Right is better", "tie": "Equally good", "both_bad": "Both bad"}
SHORTCUTS = {"left": "1 ArrowLeft", "right": "2 ArrowRight", "tie": "3 t", "both_bad": "4 b"}
BUTTON_ORDER = ("left", "tie", "both_bad", "right")
TOKEN_IN_PATH = re.compile(r"/(r|results)/[^\s/?'\"]+")
MAX_COMMENT = 2000  # characters kept of a comment


def create_app(store: RatingStore, on_vote: Callable[[], None] = lambda: None) -> Flask:
    """The app; ``on_vote`` is called after each newly stored vote (the server checks whether the session is complete)."""
    app = Flask(__name__)  # its templates/ and static/ folders, beside this module
    app.jinja_env.trim_blocks = app.jinja_env.lstrip_blocks = True
    results_token = store.setting("results_token")

    def rater_or_404(token: str) -> str:
        rater = store.rater_of(token)
        if rater is None:
            abort(404)
        return rater

    @app.get("/r/<token>")
    def rate(token: str):
        rater = rater_or_404(token)
        done, total = store.progress(rater)
        shown = store.next_item(rater)
        buttons = [(choice, CHOICE_LABELS[choice], SHORTCUTS[choice]) for choice in BUTTON_ORDER]
        return render_template("rate.html", rater=rater, done=done, total=total, shown=shown, buttons=buttons)

    @app.post("/r/<token>")
    def vote(token: str):
        rater = rater_or_404(token)
        choice = request.form.get("choice", "")
        position = request.form.get("position", "")
        item_id = store.item_at(rater, int(position)) if position.isdigit() else None
        if choice not in CHOICES or item_id is None:
            abort(400)
        if store.record_vote(rater, item_id, choice, request.form.get("comment", "").strip()[:MAX_COMMENT]):
            on_vote()
        return redirect(url_for("rate", token=token), code=303)

    @app.get("/results/<token>")
    def results(token: str):
        if not secrets.compare_digest(token, results_token):
            abort(404)
        summary = summarise(store.votes(), store.items(), bootstrap=200)
        return render_template("results.html", summary=summary, progress=store.all_progress())

    @app.after_request
    def secure(response):
        response.headers.update(SECURITY_HEADERS)
        return response

    return app


class RedactingRequestHandler(WSGIRequestHandler):
    """Werkzeug's request log with the tokens cut out: ClearML copies stderr into the task's console log."""

    def log(self, type: str, message: str, *args) -> None:
        super().log(type, "%s", TOKEN_IN_PATH.sub(r"/\1/...", message % args))


def start_server(store: RatingStore, host: str, port: int, on_vote: Callable[[], None]) -> BaseWSGIServer:
    """A threaded server for the app on ``host``:``port`` (0: a free port), not yet serving: call ``serve_forever``.

    The socket is bound here and handed to Werkzeug: Werkzeug's own bind answers a port in use with two lines of
    its own on stderr and ``sys.exit(1)``."""
    listening = socket.socket(select_address_family(host, port), socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Werkzeug binds: a port whose server just stopped is free
        listening.bind((host, port))
        listening.listen()
    except OSError as error:
        listening.close()
        raise UserError(f"Cannot serve on {host}:{port} ({error.strerror}); choose another --port or --host.") from None
    with listening:  # Werkzeug serves on a duplicate of it
        return make_server(host, port, create_app(store, on_vote), threaded=True, request_handler=RedactingRequestHandler, fd=listening.fileno())
