"""Container health check: exit 0 when this container's auditlog process answers /healthz.

The image serves several roles, so the check tries the listener each role has: the API's
``AUDIT_HTTP_PORT`` (default 8080), then a pipeline worker's ``AUDIT_METRICS_PORT`` (default
9464). With ``AUDIT_TLS_CERT`` set every listener speaks TLS only: the check then uses HTTPS
without verifying the certificate (it only asks whether the local process is alive). Under
mutual TLS (``AUDIT_TLS_CLIENT_CA``) the listener refuses a client without a certificate, so
this check fails by design there: use an orchestrator probe that presents one instead.

Standard library only: it runs with the image's interpreter and nothing else.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


def main() -> int:
    tls = bool(os.environ.get("AUDIT_TLS_CERT"))
    scheme = "https" if tls else "http"
    context = ssl._create_unverified_context() if tls else None
    ports = (os.environ.get("AUDIT_HTTP_PORT") or "8080",
             os.environ.get("AUDIT_METRICS_PORT") or "9464")  # fmt: skip
    for port in ports:
        url = f"{scheme}://127.0.0.1:{port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=3, context=context) as response:
                if response.status == 200:
                    return 0
        except OSError:
            continue
    print(f"no /healthz answered on ports {', '.join(ports)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
