"""gunicorn's configuration for the Procfile's web line (`-c python:awaken_project.gunicorn_conf`).

Logging only: gunicorn's own lines and uvicorn's access lines take the project's format
(awaken_project/logconfig.py) instead of gunicorn's. A bad variable stops the master here, with the
same one line per variable as the settings print; otherwise every worker would exit at boot and gunicorn
would start another, forever.
"""

from __future__ import annotations

import os
import sys

from awaken_project.environment import ConfigurationErrors, load
from awaken_project.logconfig import logging_config

try:
    _env = load(os.environ).env
except ConfigurationErrors as exc:
    for line in exc.lines:
        sys.stderr.write(f"awaken-mailbox configuration error: {line}\n")
    raise SystemExit(2) from None

logconfig_dict = logging_config(level=_env.LOG_LEVEL, fmt=_env.LOG_FORMAT)
# A client's X-Forwarded-For / X-Forwarded-Proto is believed only from the proxies the deployment
# declares (AWAKEN_API_NUM_PROXIES > 0: then from loopback, gunicorn's and uvicorn's default). uvicorn
# trusts loopback peers by default, so with no proxy declared a client on the same host, or a
# same-host proxy passing the header through, chose its own address for the throttles and the admin
# login limit. FORWARDED_ALLOW_IPS, when set, names the proxies, as gunicorn documents.
if "FORWARDED_ALLOW_IPS" not in os.environ:
    forwarded_allow_ips = "127.0.0.1,::1" if _env.AWAKEN_API_NUM_PROXIES > 0 else ""
# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl): a second
# server (another `make run`, a test's) would take it over. Nothing here uses gunicornc.
control_socket_disable = True
