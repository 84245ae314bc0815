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


def _as_tarfile_or_louder(fast, slow):
    """The same members as tarfile; its error, or a ReadError where it stopped quietly (tarstream's docstring)."""
    return fast[0] == slow[0] and (fast[1] == slow[1] or (slow[1] is None and fast[1] is tarfile.ReadError))


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_truncated_anywhere_stops_or_raises_as_tarfile(name):
    data = ARCHIVES[name]
    for end in range(0, len(data), 37):
        assert _as_tarfile_or_louder(_fast(data[:end]), _tarfile(data[:end])), f"truncated at {end}"


@pytest.mark.parametrize("name", ["ustar", "pax-longnames"])
def test_damaged_bytes_stop_or_raise_as_tarfile(name):
    rng = random.Random(1)
    data = ARCHIVES[name]
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.getrandbits(8)
        assert _as_tarfile_or_louder(_fast(bytes(damaged)), _tarfile(bytes(damaged)))


def _plain_archive(sizes=(700, 5, 2000)) -> tuple[bytes, list[int]]:
    """A ustar archive of regular files, and the byte offset of each header."""
    buf, offsets = io.BytesIO(), []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, size in enumerate(sizes):
            offsets.append(buf.tell())
            info = tarfile.TarInfo(f"{i // 2:04d}.{'jpg' if i % 2 == 0 else 'txt'}")
            info.size = size
            tar.addfile(info, io.BytesIO(b"x" * size))
        offsets.append(buf.tell())  # where the end-of-archive marker starts
    return buf.getvalue(), offsets


def test_a_cut_at_or_inside_a_header_is_damage_where_tarfile_stops_quietly():
    data, offsets = _plain_archive()
    for n, header in enumerate(offsets[1:], start=1):  # the members before are all there, the rest lost
        for end in (header, header + 100):
            assert _tarfile(data[:end]) == (_fast(data[:end])[0], None)  # tarfile: as if the archive ended
            members, error = _fast(data[:end])
            assert len(members) == n and error is tarfile.ReadError, end
    assert _fast(data[:offsets[-1] + 512]) == _tarfile(data)  # the first zero block ends an archive


def test_a_flipped_bit_in_a_later_header_is_damage_naming_its_offset():
    data, offsets = _plain_archive()
    damaged = bytearray(data)
    damaged[offsets[2] + 3] ^= 0x10  # in the name of the third member: its checksum no longer holds
    assert len(_tarfile(bytes(damaged))[0]) == 2 and _tarfile(bytes(damaged))[1] is None
    with pytest.raises(tarfile.ReadError, match=f"no valid tar header at byte {offsets[2]}"):
        list(regular_members(io.BytesIO(bytes(damaged))))
    damaged = bytearray(data)
    damaged[offsets[-1] + 7] ^= 1  # garbage where the end-of-archive marker should be
    with pytest.raises(tarfile.ReadError, match=f"byte {offsets[-1]}"):
        list(regular_members(io.BytesIO(bytes(damaged))))


def test_names_that_are_not_utf8_or_reserved_give_text_keys_and_no_reader_fields():
    members = [("caf\udce9.jpg", b"i"), ("caf\udce9.txt", b"t"), ("0002.__key__", b"evil"), ("0002.jpg", b"j")]
    assert list(group_samples(iter(members))) == [
        {"__key__": "caf\\xe9", "jpg": b"i", "txt": b"t"},
        {"__key__": "0002", "jpg": b"j"},
    ]


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
