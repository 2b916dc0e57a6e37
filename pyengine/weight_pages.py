"""Where the weights live while a model runs: the mapped file, or a copy in 2 MiB pages.

A GGUF file is memory-mapped when it is opened; nothing is read until a kernel touches
it. Page-cache pages of a mapped file are usually 4 KiB each, and a matrix-vector product
that streams a few dozen rows at once crosses a 4 KiB boundary every few hundred bytes of
each stream: the hardware prefetchers restart at each one and the TLB misses often. (A
recent kernel may hold a file that was read sequentially in 2 MiB folios and map those
whole -- Linux 6.18 on ext4 did, and then the mapping decoded as fast as the copy -- but
that depends on how the file entered the page cache; the copy does not.) Measured
on a 2-core Zen 4 VM, decoding read 12-17% faster from an anonymous copy in transparent
2 MiB pages than from the mapped file (Qwen2.5-Coder-1.5B 24.4-24.9 -> 27.4-28.8 tok/s;
Gemma 3 270M 89-93 -> 103-107), while a plain streaming read (the bandwidth probe) runs
at the same speed from either: the gain is the kernels' many concurrent streams.

:func:`place_weights` therefore copies the tensors into huge pages when the weights are
read by the CPU on every token (the ``cpu`` backend), the kernel lends huge pages
(transparent_hugepage ``always`` or ``madvise``) and the copy fits in available memory.
The copy is read with ``readinto`` (not through the mapping), so the file's pages never
count in the process's RSS twice. Routed MoE experts (``*_exps`` tensors) stay mapped:
a token reads 6 of 64 of them, and RSS should follow what is touched. (Copied into anonymous
2 MiB pages they decode ~10-15% faster, but fresh huge pages cost ~2.5 s per GiB to fault in
on a machine whose memory the page cache fills, which a short generation never earns back;
copying each expert on first use was measured and reverted, and the file mapped in 2 MiB
page-cache folios was no faster, see benchmarks/README.md. ``copy`` is there for long
sessions.) What of them the page cache already holds is mapped ahead at load
(:func:`map_ahead`), so the first tokens do not stop for page faults; nothing is read from
disk for it. For the ``cpu`` backend a copy also takes the K-quants' load-time forms
(``cpu_backend.repack_copied``: Q4_K -> Q4_K_R and the like, rewritten in place, same size),
which its SIMD kernels unpack without shuffles. Whatever it does,
it says so in one line (``Model.weights_placement``, printed by ``generate -v``).
"""
from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import numpy as np

from .errors import ModelFileError, PyEngineError

HUGE_PAGE = 2 << 20  # bytes in one x86-64 / arm64 transparent huge page
ALIGN = 64  # each copied tensor starts on a cache line (GGUF itself guarantees 32)
MODES = ("auto", "map", "copy")
THP_PATH = Path("/sys/kernel/mm/transparent_hugepage/enabled")
FIT_SHARE = 0.7  # copy only when the copy takes at most this share of available memory


def add_weights_argument(parser) -> None:
    """``--weights`` for the commands that load a model (generate, chat, serve, bench)."""
    parser.add_argument("--weights", default="auto", choices=MODES,
                        help=f"where the weights live: auto = the cpu backend copies them into 2 MiB pages when "
                             f"the kernel lends huge pages and they fit in {FIT_SHARE * 100:.0f}%% of available memory "
                             f"(decoding up to ~17%% faster), else they stay mapped; map = read from the mapped "
                             f"file (least memory, fastest load); copy = copy every tensor, MoE experts included "
                             f"(RSS = file size; a slower load, then MoE models decode ~10-15%% faster: for long "
                             f"sessions). 'generate -v' says which")


def padded(nbytes: int) -> int:
    """Bytes a copied tensor takes: ``nbytes`` rounded up so the next one starts on a cache line."""
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


def policy_line() -> str:
    """What ``auto`` does on this machine, for ``pyengine doctor``."""
    if not huge_pages_usable():
        return f"read from the memory-mapped file (transparent huge pages: {thp_mode() or 'not available'})"
    avail = available_bytes()
    room = f"; {avail / 2**30:.1f} GiB available" if avail else ""
    return (f"copied into 2 MiB pages when they fit in {FIT_SHARE:.0%} of available memory (transparent huge "
            f"pages: {thp_mode()}{room}); --weights map reads the mapped file")


def stays_mapped(name: str) -> bool:
    """Tensors read sparsely (routed experts: a token uses a few of them) keep their mapping."""
    return "_exps." in name


def thp_mode() -> str:
    """The kernel's transparent-huge-page setting ('always', 'madvise', 'never'), '' where unknown."""
    try:
        text = THP_PATH.read_text()
    except OSError:
        return ""
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return ""


def huge_pages_usable() -> bool:
    """Whether an anonymous buffer can ask for transparent huge pages here (Linux, THP always/madvise)."""
    return sys.platform == "linux" and hasattr(mmap, "MADV_HUGEPAGE") and thp_mode() in ("always", "madvise")


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (free plus reclaimable memory); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def huge_bytes(addr: int, size: int) -> int | None:
    """Bytes of ``[addr, addr + size)`` backed by anonymous huge pages (/proc/self/smaps); None where unknown."""
    try:
        with open("/proc/self/smaps") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    total, inside = 0, False
    for line in lines:
        head = line.split(None, 1)[0]
        if "-" in head and not head.endswith(":"):  # a mapping's first line: "start-end perms ..."
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo < addr + size and hi > addr
        elif inside and head == "AnonHugePages:":
            total += int(line.split()[1]) * 1024
    return total


def _fmt(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


PAGE = mmap.PAGESIZE
MADV_POPULATE_READ = 22  # Linux >= 5.14: fault a range in as if read (page cache pages, no copy)


def resident_runs(vec: np.ndarray) -> list[tuple[int, int]]:
    """``[(first, end), ...]`` page runs whose mincore byte has bit 0 set (page in memory)."""
    on = (np.asarray(vec, dtype=np.uint8) & 1).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], on, [0]))))
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


def map_ahead(arrays) -> int | None:
    """Map into this process the pages of ``arrays`` (views of a mapped file) that the page
    cache already holds, before the first token needs them; returns the bytes mapped, or
    None where the system cannot (not Linux, or a kernel without MADV_POPULATE_READ).

    A decode step that meets a mapped page for the first time takes a page fault for it
    (with fault-around, one per 16 pages): on the DeepSeek-V2-Lite shape, whose routed
    experts (9.5 GiB) stay mapped, the first 100 random tokens ran at 11.8 tok/s and later
    ones at 21.5 (2 threads, file in the page cache). Mapping the cached pages ahead took
    1.1 s for the 10 GB file. Pages not in the page cache are left alone: nothing is read
    from disk and no memory is taken, so with a cold file RSS still follows the experts a
    run touches (what llama.cpp's MAP_POPULATE does instead is read the whole file)."""
    if sys.platform != "linux":
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    for a in arrays:
        if a.nbytes == 0:
            continue
        lo = a.ctypes.data // PAGE * PAGE
        n_pages = (a.ctypes.data + a.nbytes - lo + PAGE - 1) // PAGE
        vec = np.zeros(n_pages, np.uint8)
        if libc.mincore(lo, n_pages * PAGE, vec.ctypes.data) != 0:
            return None if done == 0 else done
        for first, end in resident_runs(vec):
            if libc.madvise(lo + first * PAGE, (end - first) * PAGE, MADV_POPULATE_READ) != 0:
                return None if done == 0 else done  # EINVAL: a kernel before 5.14
            done += (end - first) * PAGE
    return done


def _map_ahead_line(gf, names) -> str:
    """``map_ahead`` on the tensors ``names`` of ``gf``, as a clause of the placement line."""
    got = map_ahead([gf.tensors[n].raw for n in names])
    if got is None:
        return ""
    return f"; {_fmt(got)} of them mapped ahead from the page cache" if got else "; none in the page cache yet"


def place_weights(gf, mode: str = "auto", backend_name: str = "cpu", progress: bool = False) -> str:
    """Copy ``gf``'s tensors into 2 MiB pages or leave them mapped (see the module text).

    ``mode``: ``"auto"`` decides as described above; ``"map"`` leaves every tensor mapped;
    ``"copy"`` copies every tensor, routed experts included, whatever the backend (huge pages
    where the kernel lends them), and fails in one line when the copy would not fit.
    Replaces ``QTensor.raw`` in place; returns the one-line description of what was done.
    """
    if mode not in MODES:
        raise PyEngineError(f"weights placement {mode!r} is not one of {', '.join(MODES)}")
    if mode == "map":
        return "memory-mapped from the file (--weights map)"
    names = [n for n in gf.tensors if mode == "copy" or not stays_mapped(n)]
    todo = sum(padded(gf.tensors[n].n_bytes) for n in names)
    copied = set(names)
    kept = sum(t.n_bytes for n, t in gf.tensors.items() if n not in copied)
    tail = f"; {_fmt(kept)} of routed experts stay mapped" if kept else ""
    mapped = [n for n in gf.tensors if n not in copied]
    if mode == "auto":
        if backend_name != "cpu":
            return f"memory-mapped from the file (the {backend_name} backend keeps its own form of them)"
        if not huge_pages_usable():
            return (f"memory-mapped from the file (transparent huge pages: "
                    f"{thp_mode() or 'not available on this system'}){_map_ahead_line(gf, list(gf.tensors))}")
        if not todo:
            return f"memory-mapped from the file (only routed experts, which stay mapped){_map_ahead_line(gf, mapped)}"
    avail = available_bytes()
    if avail is not None and todo > FIT_SHARE * avail:
        msg = (f"copying {_fmt(todo)} of weights would take over {FIT_SHARE:.0%} of the "
               f"{_fmt(avail)} of available memory")
        if mode == "copy":
            raise PyEngineError(f"{msg}; use --weights map (or auto)")
        return f"memory-mapped from the file ({msg}){_map_ahead_line(gf, list(gf.tensors))}"
    arena = anonymous_buffer(todo, huge=huge_pages_usable())
    _copy_into(gf, names, arena, progress)
    got = huge_bytes(arena.ctypes.data, arena.nbytes) if todo else 0
    share = f", {got / max(todo, 1):.0%} of it in 2 MiB pages" if got is not None else ""
    forms = ""
    if backend_name == "cpu":  # a copy can take the form the kernels read faster (same bytes)
        from .backends.cpu_backend import repack_copied

        done = repack_copied(gf.tensors, names)
        forms = "".join(f"; {n} matrices rearranged as {f}" for f, n in done.items())
    if kept and backend_name == "cpu":  # the routed experts left mapped (auto)
        tail += _map_ahead_line(gf, mapped)
    return f"{_fmt(todo)} copied into memory{share}{forms}{tail}"


def anonymous_buffer(nbytes: int, huge: bool) -> np.ndarray:
    """An anonymous, 2 MiB-aligned uint8 buffer of ``nbytes`` (madvised for huge pages)."""
    size = max(nbytes, 1) + HUGE_PAGE
    if hasattr(mmap, "MAP_ANONYMOUS"):
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    else:  # Windows: fileno -1 is anonymous memory already
        m = mmap.mmap(-1, size)
    buf = np.frombuffer(m, dtype=np.uint8)  # (nbytes + 2 MiB,) the view keeps the mapping alive
    skip = (-buf.ctypes.data) % HUGE_PAGE
    if huge:  # whole 2 MiB pages from the aligned start, within the mapping
        m.madvise(mmap.MADV_HUGEPAGE, skip, min(nbytes + (-nbytes) % HUGE_PAGE, len(m) - skip))
    return buf[skip:skip + nbytes]  # (nbytes,)


def _copy_into(gf, names: list[str], arena: np.ndarray, progress: bool) -> None:
    """Read each tensor's bytes from the file (not through the mapping) into ``arena``, back to back.

    Two readers share the work: faulting in fresh huge pages and copying from the page cache
    both scale with cores (1.04 GiB: ~1.3 s with one reader)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    base = gf._mmap.ctypes.data  # the mapping starts at file offset 0
    jobs, at = [], 0  # (name, file offset, destination) of every tensor
    for name in names:
        t = gf.tensors[name]
        jobs.append((name, t.raw.ctypes.data - base, arena[at:at + t.n_bytes]))
        at += padded(t.n_bytes)
    lock = threading.Lock()
    chunk = 16 << 20

    def read(part, bar):
        with open(gf.path, "rb", buffering=0) as f:  # one file object per reader: its own position
            for name, offset, dst in part:
                view, done = memoryview(dst), 0
                f.seek(offset)
                while done < dst.nbytes:  # chunks: progress on multi-GB files; short reads retried
                    k = f.readinto(view[done:done + chunk])
                    if not k:
                        raise ModelFileError(f"{gf.path}: file shrank while reading tensor {name!r} "
                                             f"(changed on disk?)")
                    done += k
                    with lock:
                        bar.update(k)

    n_readers = max(1, min(2, os.cpu_count() or 1))
    with tqdm(total=sum(d.nbytes for _, _, d in jobs), unit="B", unit_scale=True, unit_divisor=1024,
              desc="weights into 2 MiB pages", disable=not progress, leave=False, delay=1.0) as bar, \
            ThreadPoolExecutor(n_readers) as pool:
        for fut in [pool.submit(read, jobs[i::n_readers], bar) for i in range(n_readers)]:
            fut.result()
    for name, _, dst in jobs:
        gf.tensors[name].raw = dst
        gf.tensors[name].cache.clear()
