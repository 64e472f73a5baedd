"""An OpenAI-compatible server for the exported model, CTranslate2 by default, transformers as the alternative.

    python -m tools.serve --model-dir runs/export/ctranslate2

``--model-dir`` is one of the export step's folders: its ``ctranslate2`` folder is served with CTranslate2
(``--compute-type int8`` quantizes when loading), its ``model`` folder with transformers; ``--engine``
insists on one. Any OpenAI client then talks to ``http://<host>:<port>/v1`` (docs/serving.md):
``/v1/completions``, ``/v1/chat/completions`` (streaming too), ``/v1/models`` and ``/health``. Requests
that arrive together and decode alike are generated as one batch (``--max-batch-size``, ``--max-wait-ms``);
a full queue (``--max-queue``) answers 429. With the environment variable ``SERVE_API_KEY`` set, the
routes but ``/health`` need ``Authorization: Bearer <that key>`` (not an option: a command line is
visible to every user of the machine).
"""

from __future__ import annotations

import argparse
import os

from cli.options import ArgumentParser
from components.errors import UserError, errors_end_the_process
from components.serving.batching import Batching
from components.serving.engines import ENGINES
from components.serving.openai_api import Limits

API_KEY_VARIABLE = "SERVE_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", required=True, help="the export step's ctranslate2 folder (CTranslate2) or model folder (transformers)")
    parser.add_argument("--engine", choices=ENGINES, default="auto", help="the engine; auto: the one the folder is for")
    parser.add_argument("--model-name", default="rut5-instruct", help="the model's name in the API (the requests' model field)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="CTranslate2's device (transformers takes the GPU when there is one)"
    )
    parser.add_argument(
        "--compute-type", default="default", help="CTranslate2's compute type: default (as converted, float32), int8, int8_float16, ..."
    )
    batching = parser.add_argument_group("dynamic batching and limits")
    batching.add_argument(
        "--max-batch-size", type=int, default=Batching.max_batch_size, help="texts generated together at most; 1 serves one request at a time"
    )
    batching.add_argument(
        "--max-wait-ms",
        type=float,
        default=Batching.max_wait * 1000,
        help="how long a batch waits for requests while fewer wait than the last batch held",
    )
    batching.add_argument("--max-queue", type=int, default=Batching.max_queue, help="requests waiting at most; one more is answered 429")
    batching.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes, help="largest request body (413 above)")
    batching.add_argument("--max-prompt-chars", type=int, default=Limits.max_prompt_chars, help="longest prompt in characters (400 above)")
    batching.add_argument("--max-prompts", type=int, default=Limits.max_prompts, help="prompts in one completions request at most")
    batching.add_argument("--max-tokens", type=int, default=Limits.max_tokens, help="the most new tokens a request may ask for")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with errors_end_the_process():
        for name in ("max_batch_size", "max_queue", "max_body_bytes", "max_prompt_chars", "max_prompts", "max_tokens"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}.")
        from pathlib import Path

        import uvicorn

        from components.serving.engines import load_engine
        from components.serving.openai_api import create_app

        engine = load_engine(Path(args.model_dir), args.engine, device=args.device, compute_type=args.compute_type)
        limits = Limits(args.max_body_bytes, args.max_prompt_chars, args.max_prompts, args.max_tokens)
        api_key = os.environ.get(API_KEY_VARIABLE) or None
        app = create_app(
            engine,
            model_name=args.model_name,
            api_key=api_key,
            limits=limits,
            batching=Batching(args.max_batch_size, args.max_wait_ms / 1000, args.max_queue),
        )
        key = f"the API key from {API_KEY_VARIABLE}" if api_key else f"no API key ({API_KEY_VARIABLE} is not set)"
        print(f"Serving {args.model_dir} as {args.model_name!r} with {engine.name} at http://{args.host}:{args.port}/v1, {key}.", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
