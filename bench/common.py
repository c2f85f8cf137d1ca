"""Helpers shared by the measurement drivers in bench/ (Python standard library only): the training
config they all write, filled from bench/train/config.yaml.tmpl, and reading the `key=value` lines
that `ferrotune train`, `ferrotune model grad-step`, `ferrotune engine-check` and
bench/train/reference.py print."""
import datetime
import math
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "bench" / "train" / "config.yaml.tmpl"


def train_config(path, **fields):
    """Write the template to `path` with `fields` in it: a value replaces the template's (or is
    appended), None leaves the key out, True/False become YAML booleans. Returns `path`."""
    config = {}
    for line in TEMPLATE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split(":", 1)
            config[key] = value.strip()
    config.update(fields)
    missing = [key for key, value in config.items() if value == ""]
    if missing:
        raise ValueError(f"train_config: no value for {', '.join(missing)}")
    yaml = lambda v: str(v).lower() if isinstance(v, bool) else str(v)
    Path(path).write_text("".join(f"{k}: {yaml(v)}\n" for k, v in config.items() if v is not None))
    return path


def get(text, key):
    """The value of the last `key=value` line in `text`, or "" when there is none."""
    values = [line.split("=")[1] for line in text.splitlines() if line.startswith(key + "=")]
    return values[-1] if values else ""


def final_loss(text):
    """The loss of `ferrotune train`'s "… final loss X" line, or ""."""
    found = re.findall(r"final loss ([0-9.]+)", text)
    return found[-1] if found else ""


def ratio(a, b):
    """a / b with two decimals, or "-" when either is missing or the quotient is not a number."""
    try:
        r = float(a) / float(b)
    except (ValueError, ZeroDivisionError):
        return "-"
    return f"{r:.2f}" if math.isfinite(r) else "-"


def env(name, default):
    """The environment variable `name`, or `default` when it is unset or empty (bash's ${NAME:-default})."""
    return os.environ.get(name) or default


def cores():
    """The CPU cores this process may run on (what `nproc` says)."""
    return len(os.sched_getaffinity(0))


def utc(fmt):
    """The time now in UTC, formatted with `fmt` (e.g. "%F", "%T")."""
    return datetime.datetime.now(datetime.timezone.utc).strftime(fmt)
