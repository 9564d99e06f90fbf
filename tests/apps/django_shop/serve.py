"""A small Django project, settings in code, served by a threaded WSGI server on 127.0.0.1
and a free port, until SIGINT or SIGTERM (tests/test_trace_frameworks.py).

    python serve.py DB PORT_FILE deferred|immediate

The port is written to PORT_FILE once the server listens. `immediate` sets Django's
OPTIONS={"transaction_mode": "IMMEDIATE"} (Django 5.1+)."""

import os
import signal
import sys
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
from django.conf import settings

db, port_file, mode = sys.argv[1:4]
settings.configure(
    DEBUG=False,
    SECRET_KEY="tests only",
    ALLOWED_HOSTS=["127.0.0.1"],
    INSTALLED_APPS=["shop"],
    MIDDLEWARE=[],
    ROOT_URLCONF="shop.urls",
    USE_TZ=True,
    # A request that fails is logged on stderr (Django does so only with DEBUG on).
    LOGGING={
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"stderr": {"class": "logging.StreamHandler"}},
        "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
    },
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": db,
            "OPTIONS": {"transaction_mode": "IMMEDIATE"} if mode == "immediate" else {},
        }
    },
)
django.setup()

from django.core.management import call_command  # noqa: E402 - needs the settings
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection  # noqa: E402
from shop.models import Counter  # noqa: E402

call_command("migrate", run_syncdb=True, verbosity=0)
Counter.objects.get_or_create(name="hits")
connection.close()


class ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per request, as runserver does; server_close() waits for them."""


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


server = make_server(
    "127.0.0.1",
    0,
    get_wsgi_application(),
    server_class=ThreadingServer,
    handler_class=QuietHandler,
)


def stop(signum, frame):
    # shutdown() waits for serve_forever() to return: it must not run on the thread serving.
    threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
with open(port_file + ".tmp", "w") as out:
    out.write(str(server.server_port))
os.replace(port_file + ".tmp", port_file)
server.serve_forever()
server.server_close()
print("server: stopped", flush=True)
