"""`python -m web`: serve the app on WEB_HOST:WEB_PORT (127.0.0.1:8000 by default)."""

from __future__ import annotations

import uvicorn

from common.settings import load_settings_or_exit

if __name__ == "__main__":
    settings = load_settings_or_exit()
    uvicorn.run(
        "web.main:app",
        host=settings.web_host,
        port=settings.web_port,
        ws="websockets-sansio",
        loop="uvloop",  # the C event loop and HTTP parser: about a third less CPU per request
        http="httptools",
        proxy_headers=False,
    )
