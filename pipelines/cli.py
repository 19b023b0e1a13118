"""The `lch` command line: one subcommand per step of DESIGN.md's flow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lch.pipelines.runtime import quiet_environment


def _cmd_synth(args: argparse.Namespace) -> int:
    from lch.synth import make_cohort

    manifest = make_cohort(
        args.out_dir,
        name=args.name,
        patients=args.patients,
        movies_per_patient=args.movies_per_patient,
        frames=args.frames,
        size=tuple(args.size),
        seed=args.seed,
    )
    print(f"synthetic cohort written: {manifest}")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from lch.manifest import ManifestError
    from lch.pipelines.ingest import convert_cohort, submit_ingest_job

    if args.address:
        return submit_ingest_job(args.manifest, args.address, extra_args=[])
    try:
        summary = convert_cohort(args.manifest, progress=not args.quiet)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 1 if summary.failed else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lch.paths import lch_home
    from lch.pipelines.ingest import convert_cohort
    from lch.synth import make_cohort

    home = lch_home()
    source = home / "demo" / "synth-cohort"
    print(f"1/2 generating a synthetic cohort in {source}")
    manifest = make_cohort(source, name="demo", seed=args.seed)
    print("2/2 ingesting it (movies → OME-Zarr)")
    summary = convert_cohort(manifest, home=home)
    print(summary.format())
    return 1 if summary.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lch", description="Live-cell histology on Ray, MLflow and Zarr (see DESIGN.md)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic cohort (TIFF movies + cohort.yaml)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--name", default="synth", help="cohort name (default: synth)")
    p.add_argument("--patients", type=int, default=6)
    p.add_argument("--movies-per-patient", type=int, default=2)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("Y", "X"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("ingest", help="ingest a cohort manifest into OME-Zarr (a Ray job)")
    p.add_argument("manifest", type=Path, help="cohort.yaml")
    p.add_argument(
        "--address",
        help="Ray dashboard address (http://host:8265): submit as a Ray Job to that cluster",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("demo", help="run the whole loop on a generated synthetic cohort")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
