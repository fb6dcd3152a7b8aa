"""``nested-diffusion api``: an OpenAI-compatible image API (optional extra ``[api]``: FastAPI + uvicorn)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .argtypes import check_device, check_listen, int_at_least, positive_float, tcp_port
from .serve import add_limit_args, add_model_args

KEY_ENV = "NESTED_DIFFUSION_API_KEY"


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("api", help="serve the OpenAI Images API; partial images are finished images",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=(
                           "Serve POST /v1/images/generations and GET /v1/models as the openai client speaks "
                           "them (stream=true gives image_generation.partial_image events: finished inner runs), "
                           "with deadlines (deadline_ms: the last finished image by then), batching of "
                           "concurrent requests into shared model calls and a bounded queue. Needs: pip install "
                           "'nested-diffusion[api]'."))
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind; anything but a loopback address needs --api-key")
    s.add_argument("--port", type=tcp_port("--port"), default=8000, help="TCP port (1–65535)")
    s.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' (default: ${KEY_ENV} if set, else no key; "
                        f"required when --host is not a loopback address)")
    add_model_args(s)
    s.add_argument("--threads", type=int_at_least("--threads", 1), default=None, help="torch CPU threads")
    s.add_argument("--workers", type=int_at_least("--workers", 1), default=1,
                   help="uvicorn worker processes on the same port (each loads the model; they share nothing)")
    add_limit_args(s, "--max-n", "images per request")
    s.add_argument("--max-active", type=int_at_least("--max-active", 1), default=16,
                   help="requests computed at once (bundled: batched into shared model calls)")
    s.add_argument("--queue-size", type=int_at_least("--queue-size", 0), default=32,
                   help="requests that may wait for a seat; beyond that: 429 with Retry-After")
    s.add_argument("--max-rows", type=int_at_least("--max-rows", 1), default=64,
                   help="rows per shared model call (a guided image is 2 rows)")
    s.add_argument("--batch-window-ms", type=positive_float("--batch-window-ms"), default=20.0,
                   help="longest wait for the other running requests' calls before a model call starts")
    s.add_argument("--max-body-bytes", type=int_at_least("--max-body-bytes", 256), default=64 * 1024,
                   help="largest request body accepted (413 beyond)")
    return s


def settings_of(args) -> dict:
    keys = ("pipeline", "model_path", "calibration", "device", "dtype", "threads", "max_n", "max_outer_steps",
            "max_inner_steps", "max_nfe", "max_size", "max_deadline", "max_active", "queue_size", "max_rows",
            "batch_window_ms", "max_body_bytes")
    return {k: getattr(args, k) for k in keys}


def run(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print("error: api needs FastAPI and uvicorn; install the api extra: pip install 'nested-diffusion[api]' "
              "(in a checkout: bash scripts/setup.sh api)", file=sys.stderr)
        return 2
    from ..api.server import build_service, check_bind

    api_key = args.api_key or os.environ.get(KEY_ENV) or None
    settings = settings_of(args)
    try:
        check_bind(args.host, api_key)
        check_listen(args.host, args.port)            # before the model is loaded: a bad host or a taken port
        check_device(args.device)
        if args.workers == 1:
            from ..api.app import create_app
            app = create_app(build_service(settings), api_key, args.max_body_bytes)
    except (ValueError, TypeError, FileNotFoundError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"serving {args.pipeline} on http://{args.host}:{args.port}/v1 (Ctrl+C to stop)", flush=True)
    try:
        if args.workers == 1:
            uvicorn.run(app, host=args.host, port=args.port, log_level="warning", server_header=False)
        else:
            os.environ["NESTED_DIFFUSION_API"] = json.dumps(settings)
            if api_key:
                os.environ[KEY_ENV] = api_key
            uvicorn.run("nested_diffusion.api.app:app_from_env", factory=True, workers=args.workers,
                        host=args.host, port=args.port, log_level="warning", server_header=False)
    except KeyboardInterrupt:
        pass
    except (OSError, SystemExit) as e:  # the port was taken between the check and the start
        print(f"error: --host/--port: cannot listen on {args.host}:{args.port} ({e})", file=sys.stderr)
        return 2
    return 0
