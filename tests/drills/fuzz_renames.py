"""Tar members of the fuzzed corpus (shard_fuzz.py) under other names, each with its effect on the sample:
delivered ("good"; "good_nolabel" when its `.json` is lost), or counted ("bad")."""

from __future__ import annotations

from tests.drills.fuzz_payloads import Item

# rename -> (member extension it renames, or "*" for all of the sample's members; new name; verdict)
RENAMES = {
    "jpg_to_xyz": ("jpg", "{key}.xyz", "bad"),
    "jpg_to_png": ("jpg", "{key}.png", "good"),  # another image extension: still the image
    "jpg_to_webp": ("jpg", "{key}.webp", "good"),
    "jpg_to_jpeg": ("jpg", "{key}.jpeg", "good"),
    "jpg_to_upper": ("jpg", "{key}.JPG", "good"),
    "jpg_no_ext": ("jpg", "{key}", "bad"),
    "jpg_other_key": ("jpg", "zz{key}.jpg", "bad"),  # and the sample "zz<key>" of one member: counted too
    "txt_to_text": ("txt", "{key}.text", "good"),
    "txt_to_caption": ("txt", "{key}.caption", "good"),
    "txt_to_upper": ("txt", "{key}.TXT", "good"),
    "txt_to_xyz": ("txt", "{key}.xyz", "bad"),
    "txt_reserved": ("txt", "{key}.__key__", "bad"),  # may not overwrite the reader's own fields
    "txt_other_key": ("txt", "zz{key}.txt", "bad"),
    "json_to_xyz": ("json", "{key}.xyz", "good_nolabel"),
    "json_other_key": ("json", "zz{key}.json", "bad"),  # between its jpg and txt: the sample is cut in two
    "swap_jpg_txt": ("swap", "", "bad"),
    "dot_in_key": ("*", "{key}.v2.{ext}", "bad"),  # key "<key>", extensions "v2.jpg", ...: no image or caption
    "subdir": ("*", "sub/{key}.{ext}", "good"),
    "long_dir": ("*", "d" * 120 + "/{key}.{ext}", "good"),  # past ustar's 100-byte name: its prefix field
    "not_utf8_key": ("*", "{key}\udce9.{ext}", "good"),  # a raw 0xE9 byte in the name
}


def rename(files: list[tuple[str, bytes]], item: Item, how: str) -> tuple[list[tuple[str, bytes]], str, str, set[str]]:
    """(members with `item`'s renamed, verdict, the key it is delivered under, keys of extra samples
    the renames make, which are counted)."""
    ext_of, new, verdict = RENAMES[how]
    out, extra = [], set()
    for name, data in files:
        key, _, ext = name.partition(".")
        if key != item.key:
            out.append((name, data))
        elif ext_of == "swap":
            out.append((f"{key}.{ {'jpg': 'txt', 'txt': 'jpg'}.get(ext, ext)}", data))
        elif ext_of in ("*", ext):
            out.append((new.format(key=key, ext=ext), data))
            if new.startswith("zz"):
                extra.add(f"zz{key}")
        else:
            out.append((name, data))
    delivered = {"subdir": f"sub/{item.key}", "long_dir": "d" * 120 + f"/{item.key}",
                 "not_utf8_key": f"{item.key}\\xe9"}.get(how, item.key)
    return out, verdict, delivered, extra
