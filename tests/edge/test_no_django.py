"""The agent runs on small plant computers: its code paths must not load Django at all.

import-linter forbids the imports statically; this checks what really gets loaded when the
agent's modules and its command line are imported (a transitive import would show up here).
"""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import importlib, pkgutil, sys
import fieldlink.edge, fieldlink.cli.main
for module in pkgutil.walk_packages(fieldlink.edge.__path__, "fieldlink.edge."):
    if module.name.endswith(".opcua"):
        continue  # imported only when an OPC UA source is configured (checked apart)
    importlib.import_module(module.name)
loaded = sorted(m for m in sys.modules if m == "django" or m.startswith("django."))
heavy = sorted(m for m in sys.modules if m.split(".")[0] == "cryptography")
print(",".join(loaded) or "none")
print(",".join(heavy) or "none")
"""


def test_agent_modules_and_cli_load_no_django_and_no_cryptography() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    django, cryptography = done.stdout.split()
    assert django == "none"
    # 16 MB the agent does not need (its TLS is the ssl module's; kit.tls_client avoids it).
    assert cryptography == "none"


def test_edge_help_runs_without_django_settings() -> None:
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "does.not.exist"}
    done = subprocess.run(
        [sys.executable, "-m", "fieldlink.cli", "edge", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "enroll" in done.stdout
