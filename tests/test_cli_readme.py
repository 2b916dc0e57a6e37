"""The README's Python example runs as written (on the smallest registry model, so the
test stays quick; the README itself names the default model)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import real_model_path

README = Path(__file__).resolve().parents[1] / "README.md"
SMALLEST = "smollm2-135m"


def python_example() -> str:
    text = README.read_text(encoding="utf-8")
    head = text.index("From Python:")
    m = re.search(r"```python\n(.*?)```", text[head:], re.S)
    assert m, "no ```python block after 'From Python:' in README.md"
    return m.group(1)


def test_readme_starts_with_cloning():
    text = README.read_text(encoding="utf-8")
    first = re.search(r"```bash\n(.*?)\n", text).group(1)
    assert first.startswith("git clone ") and first.endswith("&& cd pyengine"), first


def test_readme_python_example_runs(tmp_path):
    from pyengine.registry import DEFAULT_MODEL

    code = python_example()
    loads = re.findall(r'pyengine\.load\("([^"]+)"\)', code)
    assert loads == [DEFAULT_MODEL], loads
    real_model_path(SMALLEST)  # fetched (or found in the cache) before the example runs
    code = code.replace(f'pyengine.load("{DEFAULT_MODEL}")', f'pyengine.load("{SMALLEST}")')
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, encoding="utf-8",
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) >= 3, proc.stdout
    rel_err = float(lines[-1])  # the kernel against the reference, as the comment claims
    assert 0 <= rel_err <= 1e-2, rel_err
