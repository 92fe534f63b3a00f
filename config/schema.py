"""The JSON Schema of the environments file, generated from the model (`config/environments.schema.json`).

    python -m config.schema            # rewrite config/environments.schema.json
    python -m config.schema --check    # exit 1 when the committed schema is stale

Editors that read JSON Schema for TOML (Taplo, Even Better TOML, JetBrains) find it through the `#:schema` line at the
top of each environments file, and check and complete the file as it is typed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from config.model import AppConfig

SCHEMA_PATH = Path(__file__).resolve().parent / "environments.schema.json"


def render() -> str:
    schema = AppConfig.model_json_schema()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Coder platform environments (config/environments.toml)",
        **{k: v for k, v in schema.items() if k != "title"},
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m config.schema", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed schema differs from the model")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not SCHEMA_PATH.exists() or SCHEMA_PATH.read_text() != text:
            print(f"{SCHEMA_PATH} is stale: run `python -m config.schema`", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
