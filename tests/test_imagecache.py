"""The decoded-image cache: streamed in chunks into a file, continued after a cut, compacted, resized on disk."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from autocls.data import imagecache
from autocls.data.discover import discover
from autocls.data.imagecache import DecodeClock, DecodeInterrupted
from autocls.data.images import build_store, resize_batch


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imagecache, "CHUNK_IMAGES", 4)
    monkeypatch.setenv("AUTOCLS_DECODE_WORKERS", "1")  # chunks decoded in this process: the patch applies


def mapped_file(tensor: torch.Tensor) -> str:
    """The file whose memory map holds ``tensor``'s first byte ('' when it is anonymous memory)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)  # address, perms, offset, dev, inode, then the path if any
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= address < high:
            return fields[5] if len(fields) == 6 else ""
    return ""


def test_a_decode_cut_by_the_deadline_keeps_its_rows_and_the_next_run_continues(
    image_folder: Path, tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = discover(image_folder)
    cache = tmp_path / "cache"
    with pytest.raises(DecodeInterrupted, match=r"4 of 24 images decoded, kept in .*cache for the next run"):
        build_store(data, 16, cache, DecodeClock(deadline=time.monotonic() - 1))
    assert not list(cache.glob("*.u8")) and len(list(cache.glob("*.u8.part"))) == 1

    decoded = []
    real = imagecache._decode_rows
    monkeypatch.setattr(imagecache, "_decode_rows", lambda *a: decoded.append(a[2]) or real(*a))
    kept, store = build_store(data, 16, cache)
    assert decoded == list(range(4, 24, 4))  # the first chunk was not decoded again
    _, plain = build_store(data, 16)
    assert torch.equal(store.images, plain.images) and store.content == plain.content
    assert len(kept) == 24 and not list(cache.glob("*.part")) and not list(cache.glob("*.progress.json"))


def test_unreadable_files_anywhere_leave_no_gap(image_folder: Path, tmp_path: Path, small_chunks: None) -> None:
    for name in ("class_0/a.jpg", "class_1/b.jpg", "class_2/z.jpg"):  # first, middle and last of a chunk
        (image_folder / name).write_bytes(b"junk")
    data = discover(image_folder)
    kept_data, store = build_store(data, 16, tmp_path / "cache")
    plain_data, plain = build_store(data, 16)
    assert kept_data.paths == plain_data.paths and len(kept_data) == len(data) - 3
    assert torch.equal(store.images, plain.images)
    entry = next((tmp_path / "cache").glob("*.u8"))
    assert entry.stat().st_size == store.images.numel()  # cut to the rows kept


def test_a_cached_store_resizes_to_a_memory_mapped_file(image_folder: Path, tmp_path: Path) -> None:
    data = discover(image_folder)
    _, store = build_store(data, 16, tmp_path / "cache")
    small = store.at(8)
    assert mapped_file(small).endswith("-8.u8") and mapped_file(store.images).endswith(".u8")
    assert torch.equal(small, resize_batch(store.images, 8))
    assert len(list((tmp_path / "cache").glob("*-8.u8"))) == 1
    _, again = build_store(data, 16, tmp_path / "cache")
    assert torch.equal(again.at(8), small)  # read back from the file


def test_content_hashes_follow_the_bytes_not_the_path(image_folder: Path, tmp_path: Path) -> None:
    data = discover(image_folder)
    _, store = build_store(data, 16, tmp_path / "cache")
    assert store.content is not None and len(set(store.content)) == len(data)
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in data.paths:
        target = copy / path.relative_to(image_folder)
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(path.read_bytes())  # new mtimes, another root
    _, copied = build_store(discover(copy), 16, tmp_path / "cache")
    assert copied.content == store.content


def test_a_script_without_a_main_guard_decodes_with_worker_processes_once(image_folder: Path, tmp_path: Path) -> None:
    """Spawned decode workers must not import the user's script again: without a ``__main__`` guard
    it would start its work again in every worker."""
    import os
    import subprocess
    import sys

    script = tmp_path / "user_script.py"
    script.write_text(
        "from pathlib import Path\n"
        "from autocls.data.discover import discover\n"
        "from autocls.data.images import build_store\n"
        "print('script ran', flush=True)\n"
        f"kept, store = build_store(discover({str(image_folder)!r}), 16, Path({str(tmp_path / 'cache')!r}))\n"
        "print('decoded', len(kept))\n"
    )
    env = {**os.environ, "AUTOCLS_DECODE_WORKERS": "2"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("script ran") == 1 and "decoded 24" in done.stdout


def test_a_full_disk_is_one_line_before_anything_is_decoded(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are written through a memory map: on a full disk a sparse file would kill the process
    (SIGBUS) mid-decode. The space is reserved first, and its lack is one line."""
    import errno
    import os

    from autocls.runtime.errors import AutoclsError

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(AutoclsError, match=r"not enough disk space for the decoded images in .*cache: they need"):
        build_store(discover(image_folder), 16, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.part"))
