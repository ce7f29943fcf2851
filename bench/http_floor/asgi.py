from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.http_floor.settings")
os.environ.setdefault("HTTP_FLOOR_POOL", "1")
application = get_asgi_application()
