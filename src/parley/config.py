"""Configuration from flags, environment and a TOML file, in that order of precedence.

Each command declares its `Option`s once; from that one list come the argparse
flags (``--ui-port``), the environment variables (``PARLEY_UI_PORT``) and the
TOML keys (``ui_port`` in the command's table, e.g. ``[terminal]``). The TOML
file is ``--config FILE``, else ``$PARLEY_CONFIG``, else ``parley.toml`` in the
data directory if there is one.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.core.errors import ErrorCode, LocalError


@dataclass(frozen=True)
class Option:
    name: str  # flag name without dashes, e.g. "ui-port"
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    flag: bool = False  # a boolean switch: --name / --no-name
    many: bool = False  # may be given several times (a list)

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "PARLEY_" + self.key.upper()


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Add `options` as flags. A command and its subcommands may take the same options
    (``parley server --data D principal add`` and ``parley server principal add --data
    D``): none has a default in the parsed arguments (`resolve` supplies it), so a
    subcommand's parser never overwrites what was given before its name."""
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="TOML file with settings (default: parley.toml in the data dir)")
    for opt in options:
        opt = Option(opt.name, opt.help.replace("%", "%%"), opt.default, opt.type, opt.flag,
                     opt.many)  # argparse formats help with %
        env_note = f" [env {opt.env}]"
        default_note = f" (default: {opt.default})" if opt.default not in (None, [], False) else ""
        if opt.flag:
            parser.add_argument(f"--{opt.name}", dest=opt.key, default=argparse.SUPPRESS,
                                action=argparse.BooleanOptionalAction,
                                help=opt.help + default_note + env_note)
        elif opt.many:
            parser.add_argument(f"--{opt.name}", dest=opt.key, default=argparse.SUPPRESS,
                                action="append", type=opt.type,
                                help=opt.help + env_note + " (repeatable)")
        else:
            parser.add_argument(f"--{opt.name}", dest=opt.key, default=argparse.SUPPRESS,
                                type=opt.type, help=opt.help + default_note + env_note)


def _from_text(opt: Option, text: str) -> Any:
    if opt.flag:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise LocalError(f"{opt.env}={text!r} is not a boolean", code=ErrorCode.BAD_CONFIG,
                         hint="use true or false")
    if opt.many:
        return [opt.type(part) for part in text.split(",") if part.strip()]
    try:
        return opt.type(text)
    except ValueError as exc:
        raise LocalError(f"{opt.env}={text!r}: {exc}", code=ErrorCode.BAD_CONFIG) from None


def resolve(args: argparse.Namespace, options: Sequence[Option], section: str,
            data_dir: Path | None = None) -> dict[str, Any]:
    """Merge flags > environment > TOML [section] > defaults."""
    table: dict[str, Any] = {}
    path = getattr(args, "config", None) or (
        Path(os.environ["PARLEY_CONFIG"]) if os.environ.get("PARLEY_CONFIG") else None)
    if path is None and data_dir is not None and (data_dir / "parley.toml").is_file():
        path = data_dir / "parley.toml"
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise LocalError(f"cannot read the config file {path}: {exc}",
                             code=ErrorCode.BAD_CONFIG) from None
        table = doc.get(section, {}) if isinstance(doc.get(section, {}), dict) else {}
        known = {o.key for o in options}
        unknown = set(table) - known
        if unknown:
            raise LocalError(f"{path}: unknown setting(s) in [{section}]: "
                             f"{', '.join(sorted(unknown))}", code=ErrorCode.BAD_CONFIG,
                             hint=f"known: {', '.join(sorted(known))}")
    out: dict[str, Any] = {}
    for opt in options:
        value = getattr(args, opt.key, None)
        if value is None and os.environ.get(opt.env) is not None:
            value = _from_text(opt, os.environ[opt.env])
        if value is None and opt.key in table:
            raw = table[opt.key]
            value = [opt.type(str(v)) for v in raw] if opt.many and isinstance(raw, list) else \
                raw if isinstance(raw, bool) else opt.type(str(raw))
        if value is None:
            value = list(opt.default) if opt.many and opt.default else opt.default
        out[opt.key] = value
    return out


def default_home() -> Path:
    return Path(os.environ.get("PARLEY_HOME", Path.home() / ".parley"))
