"""HTTP helpers shared by the simulator and the gateway."""

from __future__ import annotations

from aiohttp import web

ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed", 413: "RequestEntityTooLarge",
               429: "RateLimitError", 500: "InternalServerError", 503: "ServiceUnavailableError"}


def error(status: int, message: str, param: str | None = None) -> web.Response:
    """An OpenAI/vLLM-shaped JSON error response."""
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "APIError"), "param": param,
                      "code": status}}
    return web.json_response(body, status=status)
