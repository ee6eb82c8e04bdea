"""The gateway: an OpenAI-compatible reverse proxy that asks the endpoint picker where each request goes."""

from kit.gateway.server import Gateway, endpoints_from_urls, serve, start
from kit.gateway.settings import GatewaySettings

__all__ = ["Gateway", "GatewaySettings", "endpoints_from_urls", "serve", "start"]
