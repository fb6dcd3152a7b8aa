"""The OpenAI-compatible image API (``nested-diffusion api``): ``batching`` (model calls shared by concurrent
runs) and ``service`` (request checks, admission, deadlines, events) need no web framework; ``app`` (FastAPI) and
``server`` (uvicorn) need the ``[api]`` extra. The library never imports this package, and importing it imports
neither FastAPI nor uvicorn."""
