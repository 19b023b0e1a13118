"""Manifest validation: whole-manifest errors raise, single bad entries are reported per movie."""

from __future__ import annotations

import pytest

from lch.manifest import ManifestError, load_manifest


def write(tmp_path, text: str):
    path = tmp_path / "cohort.yaml"
    path.write_text(text)
    return path


def test_valid_manifest_resolves_paths_and_defaults(tmp_path):
    path = write(
        tmp_path,
        """
cohort: pdx-2026-11
movies:
  - id: m481-01
    path: raw/m481_01.tif
    patient: m481
    label: high
    pixel_size_um: 0.65
    frame_interval_s: 60
  - {id: m610-01, path: raw/m610.tif, patient: 610, cell_line: m610-A, label: low}
""",
    )
    manifest = load_manifest(path)
    assert manifest.cohort == "pdx-2026-11"
    assert not manifest.errors
    first, second = manifest.movies
    assert first.line == "m481"  # cell line defaults to the patient
    assert second.patient == "610" and second.line == "m610-A"
    assert manifest.source_path(first) == tmp_path / "raw" / "m481_01.tif"
    stored = manifest.to_dict()["movies"][0]
    assert stored["path"] == str(tmp_path / "raw" / "m481_01.tif")
    assert stored["pixel_size_um"] == 0.65


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cohort: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("movies: []\n", "missing field 'cohort'"),
        ("cohort: c1\n", "missing field 'movies'"),
        ("cohort: c1\nmovies: []\n", "non-empty list"),
        ("cohort: ../escape\nmovies: [{id: a, path: a.tif, patient: p}]\n", "field 'cohort'"),
        ("cohort: a..b\nmovies: [{id: a, path: a.tif, patient: p}]\n", "field 'cohort'"),
        ("cohort: c1\nmovie: []\nmovies: [{id: a, path: a.tif, patient: p}]\n", "unknown"),
    ],
)
def test_unusable_manifest_raises_naming_file_and_field(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_missing_manifest_file(tmp_path):
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(tmp_path / "nope.yaml")


def test_bad_entries_fail_alone_and_duplicates_fail_all_copies(tmp_path):
    path = write(
        tmp_path,
        """
cohort: c1
movies:
  - {id: good, path: g.tif, patient: p1, label: high}
  - {id: nolabelpath, patient: p1}
  - {id: badlabel, path: b.tif, patient: p1, label: medium}
  - {id: dup, path: d1.tif, patient: p2}
  - {id: dup, path: d2.tif, patient: p2}
  - {id: "bad/id", path: x.tif, patient: p2}
  - {id: negpx, path: n.tif, patient: p2, pixel_size_um: -1}
  - just-a-string
  - {id: "a..b", path: y.tif, patient: p2}
""",
    )
    manifest = load_manifest(path)
    assert [m.id for m in manifest.movies] == ["good"]
    errors = {e.movie: e.message for e in manifest.errors}
    assert "movies[1].path" in errors["nolabelpath"]
    assert "movies[2].label" in errors["badlabel"]
    assert "appears 2 times" in errors["dup"]
    assert "movies[5].id" in errors["bad/id"]
    assert "movies[6].pixel_size_um" in errors["negpx"]
    assert "expected a mapping" in errors["movies[7]"]
    assert "movies[8].id" in errors["a..b"] and "'..'" in errors["a..b"]
    assert all("cohort.yaml" in message for message in errors.values())


def test_labels_resolve_like_paths_and_are_optional(tmp_path):
    path = write(
        tmp_path,
        """
cohort: c1
movies:
  - {id: own, path: raw/a.tif, patient: p1, labels: seg/a_labels.tif}
  - {id: plain, path: raw/b.tif, patient: p1}
  - {id: blank, path: raw/c.tif, patient: p1, labels: ""}
  - {id: listed, path: raw/d.tif, patient: p1, labels: [a.tif]}
""",
    )
    manifest = load_manifest(path)
    own, plain = manifest.movies
    assert manifest.labels_path(own) == tmp_path / "seg" / "a_labels.tif"
    assert manifest.labels_path(plain) is None
    stored = {m["id"]: m for m in manifest.to_dict()["movies"]}
    assert stored["own"]["labels"] == str(tmp_path / "seg" / "a_labels.tif")
    assert "labels" not in stored["plain"]
    errors = {e.movie: e.message for e in manifest.errors}
    assert "movies[2].labels" in errors["blank"] and "movies[3].labels" in errors["listed"]
