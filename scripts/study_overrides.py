"""Turn a params overlay (a partial params file, e.g. params-study.yaml) into `dvc exp run -S` overrides.

    python scripts/study_overrides.py params-study.yaml | xargs -0 dvc exp run --temp -f -n study   # make study

The overlay names only what it changes, nested as in params.yaml; a mapping merges key by key, a list or a
scalar replaces the value. Before printing anything the merged params are validated (msgfm.config), so a
typo in the overlay stops here with the key named, not an hour into the run. Output: NUL-separated
arguments `-S key=value`, one pair per changed leaf, values in Hydra's override grammar (which `dvc exp run
--set-param` parses), so DVC records the experiment's params as usual.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from msgfm.config import Params, ParamsError


def merge(base: dict[str, Any], overlay: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`base` with `overlay` applied (mappings merged, anything else replaced); an unknown key is an error."""
    out = dict(base)
    for key, value in overlay.items():
        name = f"{prefix}{key}"
        if key not in base:
            raise ParamsError(f"{name}: not a key of params.yaml (an overlay changes values, it adds no keys)")
        both_maps = isinstance(value, dict) and isinstance(base[key], dict)
        out[key] = merge(base[key], value, f"{name}.") if both_maps else value
    return out


def hydra_value(value: Any) -> str:
    """`value` in Hydra's override grammar: strings quoted, mappings with bare keys, YAML's null and booleans."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    raise ParamsError(f"{value!r}: a {type(value).__name__} cannot be a params value (quote dates)")


def overrides(overlay: dict[str, Any], prefix: str = "") -> list[str]:
    """`key=value` for every leaf the overlay sets (a list is one leaf), dotted as DVC names params."""
    out = []
    for key, value in overlay.items():
        if isinstance(value, dict):
            out += overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={hydra_value(value)}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Validate params.yaml with the overlay applied, then print the overrides (NUL-separated `-S` pairs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overlay", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    try:
        overlay = yaml.safe_load(args.overlay.read_text()) or {}
        if not isinstance(overlay, dict):
            raise ParamsError(f"{args.overlay}: expected a mapping of params sections")
        Params.model_validate(merge(yaml.safe_load(args.params.read_text()), overlay))
        items = overrides(overlay)
    except (OSError, yaml.YAMLError, ParamsError, ValueError) as e:
        print(f"{args.overlay}: {e}", file=sys.stderr)
        return 1
    sys.stdout.write("".join(f"-S\0{item}\0" for item in items))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
