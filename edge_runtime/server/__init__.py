"""An OpenAI-compatible HTTP server over one shared MiniCPMV (FastAPI + uvicorn; the `server` extra)."""

from .app import ServerConfig, create_app
from .sources import MediaPolicy

__all__ = ["ServerConfig", "MediaPolicy", "create_app"]
