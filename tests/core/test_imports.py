"""k80s.core stays pure: it imports no grpc, kopf, kubernetes, aiohttp or pynvml (style.md §3)."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("grpc", "kopf", "kubernetes", "aiohttp", "pynvml")


def test_core_imports_no_shell_libraries() -> None:
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import k80s.core\n"
        "for m in pkgutil.walk_packages(k80s.core.__path__, 'k80s.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = set(json.loads(out))
    assert "k80s" in loaded
    assert not loaded & set(FORBIDDEN), f"k80s.core pulled in {sorted(loaded & set(FORBIDDEN))}"
