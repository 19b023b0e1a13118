"""Write serving/config.yaml into the RayService manifest as ``spec.serveConfigV2``.

serving/config.yaml is the one source of truth for the Serve application; the RayService embeds
it with a single change, ``http_options.host: 0.0.0.0`` (a pod is reached on its pod IP, so Serve
must bind every interface inside it; the config's own default is loopback). Only the
``serveConfigV2: |`` block is rewritten, so the rest of the manifest keeps its comments.

    python infra/k8s/render_rayservice.py           # rewrite infra/k8s/base/rayservice.yaml
    python infra/k8s/render_rayservice.py --check   # exit 1 if it is stale (tests do the same)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SERVE_CONFIG = REPO / "serving" / "config.yaml"
MANIFEST = REPO / "infra" / "k8s" / "base" / "rayservice.yaml"
POD_HOST = "0.0.0.0"
_BLOCK = re.compile(r"^(?P<indent> *)serveConfigV2: \|\s*$")


def serve_config(path: Path = SERVE_CONFIG) -> dict:
    """The Serve config as the RayService runs it: ``path`` with the in-pod host."""
    config = yaml.safe_load(path.read_text())
    config.setdefault("http_options", {})["host"] = POD_HOST
    return config


def render(manifest: str, config: dict) -> str:
    """``manifest`` with its ``serveConfigV2: |`` block replaced by ``config`` as YAML."""
    lines = manifest.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _BLOCK.match(line)]
    if len(starts) != 1:
        raise ValueError(f"expected one 'serveConfigV2: |' line, found {len(starts)}")
    start = starts[0]
    indent = " " * (len(_BLOCK.match(lines[start])["indent"]) + 2)
    end = start + 1  # the old block: blank or more-indented lines
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(indent)):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # blank lines after the block belong to the manifest
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    block = [indent + line + "\n" for line in body.splitlines()]
    return "".join(lines[: start + 1] + block + lines[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether it is stale")
    args = parser.parse_args(argv)
    current = MANIFEST.read_text()
    wanted = render(current, serve_config())
    if args.check:
        if wanted != current:
            print(f"{MANIFEST} is stale: run python {Path(__file__).relative_to(REPO)}",
                  file=sys.stderr)
            return 1
        return 0
    MANIFEST.write_text(wanted)
    print(f"wrote {MANIFEST.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
