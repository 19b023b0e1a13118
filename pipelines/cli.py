"""The `lch` command line: one subcommand per step of DESIGN.md's flow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lch.cells import DEFAULT_CROP_SIZE
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
    from lch.pipelines.segment import segment_cohort

    if args.address:
        extra = ["--crop-size", str(args.crop_size)] + (["--no-segment"] if args.no_segment else [])
        return submit_ingest_job(args.manifest, args.address, extra_args=extra)
    try:
        summary = convert_cohort(args.manifest, progress=not args.quiet)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format(), flush=True)
    status = 1 if summary.failed else 0
    if not args.no_segment:
        cells = segment_cohort(summary.cohort, crop_size=args.crop_size, progress=not args.quiet)
        print(cells.format())
        status = status or (1 if cells.movies_failed else 0)
    return status


def _cmd_segment(args: argparse.Namespace) -> int:
    from lch.pipelines.segment import segment_cohort

    try:
        summary = segment_cohort(args.cohort, crop_size=args.crop_size, progress=not args.quiet)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 1 if summary.movies_failed else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lch.paths import lch_home
    from lch.pipelines.ingest import convert_cohort
    from lch.pipelines.segment import segment_cohort
    from lch.synth import make_cohort

    home = lch_home()
    source = home / "demo" / "synth-cohort"
    print(f"1/3 generating a synthetic cohort in {source}", flush=True)
    manifest = make_cohort(source, name="demo", seed=args.seed)
    print("2/3 ingesting it (movies → OME-Zarr)", flush=True)
    summary = convert_cohort(manifest, home=home)
    print(summary.format(), flush=True)
    if summary.failed:
        return 1
    print("3/3 segmenting cells (Ray Data → cells.parquet + crops.zarr)", flush=True)
    cells = segment_cohort("demo", home=home)
    print(cells.format(), flush=True)
    return 0


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
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-segment", action="store_true", help="stage A only (no cells/crops)")
    p.add_argument("--crop-size", type=int, default=DEFAULT_CROP_SIZE, help="crop side in px")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("segment", help="segment a cohort's stored movies into cells and crops")
    p.add_argument("cohort")
    p.add_argument("--crop-size", type=int, default=DEFAULT_CROP_SIZE, help="crop side in px")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_segment)

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
