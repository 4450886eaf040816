"""Write the API's OpenAPI document without starting a server: ``python -m api.openapi [OUT]``.

The dashboard's typed client is generated from it (``frontend/scripts/gen-client.mjs``). In the
source tree the generator runs this module itself; the Docker build runs it in a Python stage
and hands the file to the Node stage (``FEDLORA_OPENAPI``), whose image has no Python.

Importing the app creates the embedded data directory (the Celery app does, for its broker
file), so unless ``FEDLORA_DATA_DIR`` is set it points at a throwaway directory first: nothing
is written to the working directory, which the Docker stage's user cannot write to.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of ``create_app()``."""
    from api.main import create_app

    app = create_app()
    document = app.openapi()
    app.state.engine.dispose()
    return document


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="fedlora-openapi-") as data_dir:
        os.environ.setdefault("FEDLORA_DATA_DIR", data_dir)
        text = json.dumps(openapi_document(), indent=1) + "\n"
    if args:
        Path(args[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
