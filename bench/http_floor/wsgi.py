from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

# its own settings, always: the bench runs it with the project's DJANGO_SETTINGS_MODULE in the
# environment (the Procfile line's collectstatic needs them), which setdefault kept, so the "floor"
# served the project's settings without its pool
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.http_floor.settings"
application = get_wsgi_application()
