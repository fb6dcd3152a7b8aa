"""Building and running the API server from command-line settings (a plain dict, so that ``--workers N``
replicas can rebuild the same server in each process)."""
from __future__ import annotations

import ipaddress
import socket

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the server to this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond this machine without an API key."""
    if not is_loopback(host) and not api_key:
        raise ValueError(f"--host {host}: binding beyond this machine needs --api-key KEY (or the environment "
                         f"variable NESTED_DIFFUSION_API_KEY); clients then send 'Authorization: Bearer KEY'")


def build_service(s: dict):
    """The ``ImageService`` of settings ``s`` (the ``nested-diffusion api`` options, as a dict)."""
    import torch

    from ..web.backends import Limits, load_backend
    from .service import ImageService

    if s.get("threads"):
        torch.set_num_threads(int(s["threads"]))
    limits = Limits(s["max_n"], s["max_outer_steps"], s["max_inner_steps"], s["max_nfe"], s["max_size"],
                    s["max_deadline"])
    dtype = None if s.get("dtype") in (None, "auto") else s["dtype"]   # auto: the family's
    backend = load_backend(s["pipeline"], s.get("model_path"), s.get("device", "cpu"),
                           calibration=s.get("calibration"), dtype=dtype)
    return ImageService(backend, limits, max_active=s["max_active"], max_queue=s["queue_size"],
                        max_rows=s["max_rows"], window_s=s["batch_window_ms"] / 1000.0)
