"""Run a tools/ script inside a cached virtual environment that has its packages.

    import toolenv
    toolenv.ensure("venv-tools", ["pillow", "numpy"], probe="PIL")

If `probe` imports here, nothing happens. Otherwise the venv
${SUPERVISION_CACHE:-~/.cache/supervision}/<name> is made (once) with the packages from
the package registry, and the running script is re-executed inside it with the same
arguments.
"""

import os
import subprocess
import sys


def cache_dir():
    return os.environ.get("SUPERVISION_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "supervision"
    )


def ensure(name, packages, probe):
    try:
        __import__(probe)
        return
    except ImportError:
        pass
    venv = os.path.join(cache_dir(), name)
    py = os.path.join(venv, "bin", "python")
    flag = "_SV_IN_" + name.upper().replace("-", "_").replace(".", "_")
    if os.environ.get(flag) == "1":
        sys.exit(f"{probe} is still missing inside {venv}")
    ready = os.path.join(venv, ".ready")
    if not os.path.exists(ready):
        print(f"preparing {venv} ({', '.join(packages)})", file=sys.stderr)
        os.makedirs(cache_dir(), exist_ok=True)
        if not os.path.exists(py):
            subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", *packages])
        open(ready, "w").close()
    env = dict(os.environ, **{flag: "1"})
    script = os.path.abspath(sys.argv[0])
    os.execve(py, [py, script] + sys.argv[1:], env)
