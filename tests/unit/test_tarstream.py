"""The fast tar reader gives exactly what tarfile's stream mode gives: members, and errors, on damage too."""

from __future__ import annotations

import gzip
import io
import random
import tarfile

import pytest

from raylpclip.data.tarstream import group_samples, readable_members, regular_members


def _tarfile(data: bytes):
    """tarfile's answer: the regular members read before it stopped, and the error it raised, if any."""
    members = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
            for info in tar:
                if info.isreg():
                    members.append((info.name, tar.extractfile(info).read()))
    except tarfile.TarError as exc:
        return members, type(exc)
    return members, None


def _fast(data: bytes):
    members = []
    try:
        members.extend(regular_members(io.BytesIO(data)))
    except tarfile.TarError as exc:
        return members, type(exc)
    return members, None


def _archive(fmt: int, *, long_names: bool = False, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for i, size in enumerate([0, 1, 511, 512, 513, 1500]):
            name = f"shard/{'x' * 120 if long_names else ''}{i:09d}.{'jpg' if i % 2 else 'txt'}"
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(rng.getrandbits(8) for _ in range(size))))
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "folder"
        tar.addfile(link)
        info = tarfile.TarInfo("ünïcode/000000099.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    return buf.getvalue()


ARCHIVES = {
    "ustar": _archive(tarfile.USTAR_FORMAT),
    "gnu": _archive(tarfile.GNU_FORMAT),
    "gnu-longnames": _archive(tarfile.GNU_FORMAT, long_names=True),
    "pax-longnames": _archive(tarfile.PAX_FORMAT, long_names=True),
}


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_whole_archives_give_tarfiles_members(name):
    expected = _tarfile(ARCHIVES[name])
    assert expected[1] is None and len(expected[0]) == 7
    assert _fast(ARCHIVES[name]) == expected


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_truncated_anywhere_stops_or_raises_as_tarfile(name):
    data = ARCHIVES[name]
    for end in range(0, len(data), 37):
        assert _fast(data[:end]) == _tarfile(data[:end]), f"truncated at {end}"


@pytest.mark.parametrize("name", ["ustar", "pax-longnames"])
def test_damaged_bytes_stop_or_raise_as_tarfile(name):
    rng = random.Random(1)
    data = ARCHIVES[name]
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.getrandbits(8)
        assert _fast(bytes(damaged)) == _tarfile(bytes(damaged))


def test_compressed_and_non_tar_input_go_through_tarfile():
    data = ARCHIVES["ustar"]
    assert _fast(gzip.compress(data)) == _tarfile(gzip.compress(data)) == _tarfile(data)
    for junk in (b"", b"not a tar at all" * 100, bytes(512) + data):
        assert _fast(junk) == _tarfile(junk)
    assert _fast(b"not a tar at all" * 100)[1] is tarfile.ReadError


def test_group_samples_follows_webdataset_keys():
    members = [("a/0001.jpg", b"i1"), ("a/0001.txt", b"t1"), ("a/0001.seg.PNG", b"s1"), ("README", b"x"),
               ("a/0002.jpg", b"i2"), ("b/0002.txt", b"t2")]
    assert list(group_samples(iter(members))) == [
        {"__key__": "a/0001", "jpg": b"i1", "txt": b"t1", "seg.png": b"s1"},
        {"__key__": "a/0002", "jpg": b"i2"},  # same stem in another directory is another sample
        {"__key__": "b/0002", "txt": b"t2"},
    ]


def test_readable_members_keep_what_precedes_damage_and_report_it():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, size in (("0.jpg", 700), ("0.txt", 5), ("1.jpg", 2000)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"x" * size))
    data = buf.getvalue()
    cut = data.index(b"1.jpg") + 512 + 100  # inside 1.jpg's data
    damage = []
    members = list(readable_members(io.BytesIO(data[:cut]), "s.tar", on_damage=damage.append))
    assert [name for name, _ in members] == ["0.jpg", "0.txt"]
    assert len(damage) == 1 and isinstance(damage[0], tarfile.ReadError)
    assert list(readable_members(io.BytesIO(data), "s.tar", on_damage=damage.append))[-1][0] == "1.jpg"
    assert len(damage) == 1
