"""Import a Lambda handler module the way the Lambda runtime sees it: its folder and the shared modules on sys.path.

(Paths are spelled out here rather than imported from constructs_lib.python_lambda, which would start jsii.)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from tests.assembly import ROOT

LAMBDAS_DIR = ROOT / "constructs_lib" / "lambdas"
SHARED_DIR = LAMBDAS_DIR / "shared"


def load_handler(name: str, module: str = "index") -> ModuleType:
    """`index` gets a unique module name per handler; its helper modules load under their own names, as in Lambda."""
    for folder in (SHARED_DIR, LAMBDAS_DIR / name):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    if module != "index":
        return importlib.import_module(module)
    spec = importlib.util.spec_from_file_location(f"{name}_index", LAMBDAS_DIR / name / "index.py")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded
    spec.loader.exec_module(loaded)
    return loaded
