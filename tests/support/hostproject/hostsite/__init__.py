"""A minimal host project for tests/test_packaging.py: what `django-admin startproject` writes, plus the
two apps (installed from the wheel) in INSTALLED_APPS, their URLs included, and a database. Nothing else
of awaken-mailbox: no AWAKEN_* setting, no Celery app, no REST_FRAMEWORK block."""
