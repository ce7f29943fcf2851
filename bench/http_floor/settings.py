"""Settings of the HTTP floor app: the project's database and broker, nothing else of the project."""

from __future__ import annotations

import os

from awaken_project.envurls import database_from_url

SECRET_KEY = "http-floor-bench"  # a bench server on loopback
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "rest_framework.authtoken",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "bench.http_floor.urls"
DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
# As the project's web process: under ASGI (a thread per request) a pool of warm connections, under a
# threaded WSGI worker (threads that live) persistent connections.
if os.environ.get("HTTP_FLOOR_POOL"):
    DATABASES["default"]["OPTIONS"]["pool"] = {"min_size": 2, "max_size": 8, "timeout": 10}  # 8 clients
else:
    DATABASES["default"]["CONN_MAX_AGE"] = 600
USE_TZ = True
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": None,
}
BROKER_URL = os.environ["REDIS_URL"]
