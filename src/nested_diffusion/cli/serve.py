"""``nested-diffusion serve``: the anytime web demo (Gradio, optional extra ``[demo]``)."""
from __future__ import annotations

import argparse
import sys

from .argtypes import check_device, check_listen, int_at_least, positive_float, tcp_port
from .run_args import add_dtype_arg


def add_model_args(s) -> None:
    """What is served (shared by ``serve`` and ``api``): --pipeline, --model-path, --calibration, --device, --dtype."""
    from ..families import describe_families, family_names
    s.add_argument("--pipeline", choices=family_names(), default="bundled",
                   help=f"the model family: {describe_families()}")
    s.add_argument("--model-path", default=None,
                   help="model folder: a TinyUNet folder (bundled; default: the shipped weights) or a saved "
                        "diffusers pipeline (every other family; required)")
    s.add_argument("--calibration", default=None, metavar="FILE|auto|none",
                   help="expected change: a calibration file made by `nested-diffusion calibrate` (shown for the "
                        "jobs whose configuration it matches), 'auto' (bundled only, the default there: the "
                        "calibrations shipped with the package) or 'none'")
    s.add_argument("--device", default="cpu", help="torch device")
    add_dtype_arg(s)


def add_limit_args(s, batch_flag: str, batch_help: str) -> None:
    """A public server's caps (shared by ``serve`` and ``api``); the defaults are ``web.Limits``'s."""
    from ..web.backends import Limits
    d = Limits()
    s.add_argument(batch_flag, type=int_at_least(batch_flag, 1), default=d.max_batch, help=batch_help)
    s.add_argument("--max-outer-steps", type=int_at_least("--max-outer-steps", 1), default=d.max_outer_steps)
    s.add_argument("--max-inner-steps", type=int_at_least("--max-inner-steps", 1), default=d.max_inner_steps)
    s.add_argument("--max-nfe", type=int_at_least("--max-nfe", 1), default=d.max_nfe, help="model calls per job")
    s.add_argument("--max-size", type=int_at_least("--max-size", 8), default=d.max_size,
                   help="cap on pipeline image height/width (pixels)")
    s.add_argument("--max-deadline", type=positive_float("--max-deadline"), default=d.max_deadline,
                   help="cap on a deadline, in seconds")


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("serve", help="the anytime web demo: watch the image improve, stop when it is good enough",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=(
                           "Serve a Gradio page (offline: no analytics, no share tunnel) streaming every anytime "
                           "update, with Stop (keep the current image), Cancel, a vanilla comparison, a "
                           "progression strip and a GIF. Needs: pip install 'nested-diffusion[demo]'."))
    s.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the page on the network)")
    s.add_argument("--port", type=tcp_port("--port"), default=7860, help="TCP port (1–65535)")
    add_model_args(s)
    s.add_argument("--concurrency", type=int_at_least("--concurrency", 1), default=2,
                   help="jobs computed at once (pipelines run one at a time); the others wait in the queue")
    s.add_argument("--queue-size", type=int_at_least("--queue-size", 1), default=32,
                   help="waiting jobs beyond which new requests are refused")
    add_limit_args(s, "--max-batch", "images per job")
    s.add_argument("--threads", type=int_at_least("--threads", 1), default=None, help="torch CPU threads")
    return s


def run(args) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: serve needs Gradio; install the demo extra: pip install 'nested-diffusion[demo]' "
              "(in a checkout: bash scripts/setup.sh demo)", file=sys.stderr)
        return 2
    import torch

    from ..web.app import build_app, launch_app
    from ..web.backends import Limits, load_backend

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        check_listen(args.host, args.port)            # before the model is loaded: a bad host or a taken port
        check_device(args.device)
        limits = Limits(args.max_batch, args.max_outer_steps, args.max_inner_steps, args.max_nfe, args.max_size,
                        args.max_deadline)
        dtype = None if args.dtype in (None, "auto") else args.dtype   # auto: the family's (pipelines: as saved)
        backend = load_backend(args.pipeline, args.model_path, args.device, calibration=args.calibration,
                               dtype=dtype)
    except (ValueError, TypeError, FileNotFoundError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo = build_app(backend, limits, concurrency=1 if backend.exclusive else args.concurrency,
                     queue_size=args.queue_size)
    print(f"serving {args.pipeline} on http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
    try:
        launch_app(demo, args.host, args.port, block=True, quiet=True)
    except KeyboardInterrupt:
        pass
    except OSError as e:  # the port was taken between the check and the launch
        print(f"error: --host/--port: cannot listen on {args.host}:{args.port} ({e})", file=sys.stderr)
        return 2
    return 0
