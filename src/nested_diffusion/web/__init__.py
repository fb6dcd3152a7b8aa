"""Interfaces on top of the library: the front-end-independent anytime stream (``stream``, ``backends``,
``render``) and the Gradio demo (``app``, needs the ``[demo]`` extra). The library never imports this package;
importing it does not import gradio."""
from .backends import BundledBackend, JobRequest, Limits, PipelineBackend, load_backend
from .stream import Job, JobBoard, WebUpdate, stream_updates

__all__ = ["BundledBackend", "PipelineBackend", "JobRequest", "Limits", "load_backend", "Job", "JobBoard",
           "WebUpdate", "stream_updates"]
