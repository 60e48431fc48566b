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
        proxy_headers=False,
    )
