"""OpenAI-compatible HTTP server over ``mmcore.Engine`` (``mmcore serve``)."""

from mmcore.server.api_server import BackgroundServer, ServerConfig, build_app, run_server
from mmcore.server.media_fetch import MediaPolicy

__all__ = ["BackgroundServer", "MediaPolicy", "ServerConfig", "build_app", "run_server"]
