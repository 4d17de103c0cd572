"""The infos cache of `tools/create_data.py infos`: exact, keyed on what it was built from, never a pickle."""

from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from unikd.data import infos as infos_module
from unikd.data.infos import build_infos, infos_path, load_nuscenes, load_or_build_infos, write_infos

VERSION = "v1.0-mini"


def copy_tables(synthetic_root: Path, root: Path) -> Path:
    """A copy of the fixture's tables and maps (mtimes kept): what the devkit reads, no points or images."""
    for folder in (VERSION, "maps"):
        shutil.copytree(synthetic_root / folder, root / folder)
    return root


@pytest.fixture(scope="module")
def built_val_infos(synthetic_root: Path) -> list[dict]:
    """mini_val infos with 3 sweeps, built through the devkit."""
    return build_infos(load_nuscenes(synthetic_root, VERSION), "mini_val", max_sweeps=3)


@pytest.fixture(scope="module")
def cached_root(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's tables with the infos cached with 3 sweeps."""
    root = copy_tables(synthetic_root, tmp_path_factory.mktemp("cached") / "nuscenes")
    write_infos(root, VERSION, max_sweeps=3)
    return root


@pytest.fixture
def tables_root(synthetic_root: Path, tmp_path: Path) -> Path:
    """The fixture's tables, for a test to change."""
    return copy_tables(synthetic_root, tmp_path / "nuscenes")


def assert_same_infos(actual: list[dict], expected: list[dict]) -> None:
    """Equal values of equal types; float64 matrices bit for bit (NaN velocities included)."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.keys() == want.keys()
        for name, value in want.items():
            if name == "sweeps":
                assert len(got[name]) == len(value)
                for got_sweep, sweep in zip(got[name], value, strict=True):
                    assert got_sweep["path"] == sweep["path"] and got_sweep["time_lag"] == sweep["time_lag"]
                    np.testing.assert_array_equal(got_sweep["sensor2lidar"], sweep["sensor2lidar"])
            elif name == "cams":
                assert got[name].keys() == value.keys()
                for channel, cam in value.items():
                    assert got[name][channel]["path"] == cam["path"]
                    np.testing.assert_array_equal(got[name][channel]["cam2img"], cam["cam2img"])
                    np.testing.assert_array_equal(got[name][channel]["lidar2cam"], cam["lidar2cam"])
            elif isinstance(value, np.ndarray):
                assert got[name].dtype == value.dtype and got[name].shape == value.shape
                np.testing.assert_array_equal(got[name], value)
            else:
                assert type(got[name]) is type(value) and got[name] == value


def test_cache_is_no_pickle_and_reads_back_exactly(
    cached_root: Path, built_val_infos: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    with np.load(infos_path(cached_root, VERSION, "mini_val"), allow_pickle=False) as data:
        assert len(data["token"]) == len(built_val_infos)
    monkeypatch.setattr(infos_module, "load_nuscenes", lambda *args: pytest.fail("built instead of read"))
    assert_same_infos(load_or_build_infos(cached_root, VERSION, "mini_val", max_sweeps=3), built_val_infos)


def test_cache_with_fewer_sweeps_than_asked_is_an_error(cached_root: Path) -> None:
    with pytest.raises(ValueError, match=r"unikd_infos_v1.0-mini_mini_val.npz .*max_sweeps=3, this run asks for 5.*--max-sweeps 5"):
        load_or_build_infos(cached_root, VERSION, "mini_val", max_sweeps=5)


def test_cache_with_more_sweeps_than_asked_serves_the_newest(cached_root: Path) -> None:
    full = load_or_build_infos(cached_root, VERSION, "mini_val", max_sweeps=3)
    cut = load_or_build_infos(cached_root, VERSION, "mini_val", max_sweeps=2)
    assert max(len(info["sweeps"]) for info in full) == 2
    paths = [[sweep["path"] for sweep in info["sweeps"]] for info in cut]
    assert paths == [[sweep["path"] for sweep in info["sweeps"][:1]] for info in full]


def test_cache_of_changed_tables_is_an_error(cached_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(cached_root, tmp_path / "nuscenes"))
    table = root / VERSION / "sample_annotation.json"
    table.write_bytes(table.read_bytes() + b"\n")
    with pytest.raises(ValueError, match=r"mini_val.npz .*other tables \(sample_annotation.json changed"):
        load_or_build_infos(root, VERSION, "mini_val", max_sweeps=3)


class MakesFolderWhenUnpickled:
    """Unpickling runs code of the file's choosing: this one makes a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self):
        return os.mkdir, (str(self.folder),)


def test_old_pickle_is_ignored_with_a_warning(tables_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    pickled = tables_root / f"unikd_infos_{VERSION}_mini_val.pkl"
    pickled.write_bytes(pickle.dumps(MakesFolderWhenUnpickled(marker)))
    with pytest.warns(UserWarning, match=r"ignoring .*mini_val.pkl.*create_data.py infos"):
        infos = load_or_build_infos(tables_root, VERSION, "mini_val", max_sweeps=3)
    assert len(infos) == 16 and not marker.exists()


def test_writers_use_their_own_temporary_file(
    tables_root: Path, built_val_infos: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builds at once must not write to one temporary name (each renames it into place)."""
    monkeypatch.setattr(infos_module, "load_nuscenes", lambda *args: None)
    monkeypatch.setattr(infos_module, "build_infos", lambda nusc, split, max_sweeps: built_val_infos)
    replaced = []
    replace = os.replace

    def recording_replace(source, target) -> None:
        replaced.append((Path(source), Path(target)))
        replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    write_infos(tables_root, VERSION, max_sweeps=3)
    write_infos(tables_root, VERSION, max_sweeps=3)
    target = infos_path(tables_root, VERSION, "mini_val")
    temporaries = [source for source, written in replaced if written == target]
    assert len(temporaries) == 2 and temporaries[0] != temporaries[1]
    assert all(source.parent == target.parent for source in temporaries)
    assert sorted(path.name for path in tables_root.iterdir()) == sorted(
        [VERSION, "maps", target.name, infos_path(tables_root, VERSION, "mini_train").name]
    )


def test_unknown_version_is_a_clear_error(tables_root: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match=r"unknown nuScenes version 'v9'; expected one of"):
        load_or_build_infos(tables_root, "v9", "mini_val")
    with pytest.raises(ValueError, match=r"unknown nuScenes version 'v9'; expected one of"):
        write_infos(tables_root, "v9")
    spec = importlib.util.spec_from_file_location("create_data", Path(__file__).parents[1] / "tools" / "create_data.py")
    create_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(create_data)
    with pytest.raises(SystemExit):
        create_data.main(["infos", "--root", str(tables_root), "--version", "v9"])
    assert "invalid choice: 'v9'" in capsys.readouterr().err
