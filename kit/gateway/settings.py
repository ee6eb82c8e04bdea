"""The gateway's settings: metric scraping and health, upstream timeouts and retries, client connections.

``kit gateway`` builds one flag per field (the descriptions are its ``--help``); docs/explanation/scheduling.md
explains each and compares it with upstream.
"""

from __future__ import annotations

from pydantic import Field

from kit.config import StrictModel
from kit.http import ServerLimits


class GatewaySettings(StrictModel):
    refresh_interval: float = Field(0.05, gt=0, description="seconds between metric scrapes of each endpoint")
    scrape_timeout: float = Field(1.0, gt=0, description="seconds a metrics scrape may take before it counts as failed")
    health_check: bool = Field(
        True, description="take endpoints whose scrapes fail out of rotation (kit-only; with --no-health-check "
                          "every endpoint stays in rotation and its metrics go stale, as upstream without readiness)")
    unhealthy_after: float = Field(
        2.0, gt=0, description="seconds without a good scrape before an endpoint that stopped answering leaves "
                               "rotation (one refusing connections or answering errors leaves at once)")
    connect_timeout: float = Field(2.0, gt=0, description="seconds to open a connection to an endpoint")
    first_byte_timeout: float = Field(
        300.0, gt=0, description="seconds to wait for the first byte of an endpoint's answer before trying another "
                                 "(a non-streamed answer arrives whole, so this bounds its generation time)")
    max_attempts: int = Field(3, ge=1, description="endpoints tried per request before answering 503")
    max_body: int = Field(16 * 2**20, ge=1024, description="largest request body in bytes (larger: 413)")
    idle_timeout: float = Field(
        60.0, gt=0, description="seconds before an idle client connection is closed (and one whose client reads "
                                "nothing of its answers for that long)")
    request_timeout: float = Field(
        60.0, gt=0, description="seconds a client has to send a whole request, head and body, counted from its "
                                "first byte (later: 408, and the connection closes)")
    inter_token_timeout: float = Field(
        60.0, gt=0, description="seconds a streamed answer may go without a new piece from its endpoint once its "
                                "first piece arrived (then the client's stream ends with an error event)")
    max_connections: int = Field(
        0, ge=0, description="client connections served at once (more: the longest-idle one is closed, or the new "
                             "one gets 503); 0 = half the open-file limit")

    def server_limits(self) -> ServerLimits:
        return ServerLimits(idle_timeout=self.idle_timeout, max_connections=self.max_connections,
                            request_timeout=self.request_timeout)
