"""``spyoncino`` command line: run | check-config | schema | doctor | models | storage | update |
selftest | setup | hash-password | install-unit.

One module per command family (``run``, ``config``, ``doctor``, ``storage``, ``install``,
``update``, ``selftest``; ``docgen`` writes docs/configuration.md); this module is the parser
and ``main``, the ``spyoncino`` console script and ``python -m spyoncino``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from spyoncino import __version__
from spyoncino.cli.config import cmd_check_config, cmd_schema
from spyoncino.cli.doctor import cmd_doctor, cmd_models
from spyoncino.cli.install import cmd_hash_password, cmd_install_unit, cmd_setup
from spyoncino.cli.run import cmd_run
from spyoncino.cli.selftest import cmd_selftest
from spyoncino.cli.storage import cmd_storage
from spyoncino.cli.update import cmd_update

#: what ``spyoncino --help`` says first
DESCRIPTION = (
    "spyoncino command line: run | check-config | schema | doctor | models | storage | update | "
    "selftest | setup | hash-password | install-unit"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spyoncino", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"spyoncino {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            "-c",
            help="config file (default: /etc/spyoncino/config.yaml or the embedded demo)",
        )
        p.add_argument("--secrets", help="secrets file (tokens, passwords)")
        return p

    p = with_config(sub.add_parser("run", help="run the pipeline"))
    p.add_argument("--forever", action="store_true", help="keep running after file sources end")
    p.set_defaults(func=cmd_run)
    p = with_config(
        sub.add_parser("check-config", help="validate the configuration, exit 2 on errors")
    )
    p.add_argument("--show", action="store_true", help="print the merged config, secrets as ***")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("schema", help="write JSON Schemas of the config file and every payload")
    p.add_argument("--out", default="schema", help="output folder (default ./schema)")
    p.set_defaults(func=cmd_schema)
    p = with_config(
        sub.add_parser("doctor", help="what this box can see: profile, cameras, config")
    )
    p.set_defaults(func=cmd_doctor)
    p = with_config(sub.add_parser("models", help="list bundled and configured detection models"))
    p.set_defaults(func=cmd_models)
    p = with_config(sub.add_parser("storage", help="storage maintenance"))
    p.add_argument(
        "action", choices=["reindex"], help="reindex: rebuild the index from the media folder"
    )
    p.set_defaults(func=cmd_storage)
    p = sub.add_parser("hash-password", help="hash a status page password for the config")
    p.add_argument("password", nargs="?", help="the password (else prompted, or read from a pipe)")
    p.set_defaults(func=cmd_hash_password)
    p = sub.add_parser("setup", help="add a camera and Telegram alerts by answering questions")
    p.add_argument(
        "--config", "-c", default="/etc/spyoncino/config.yaml", help="config file to write"
    )
    p.add_argument("--secrets", help="secrets file (default: secrets.yaml beside the config)")
    p.add_argument("--frame", help="where the test frame goes (default: beside the config)")
    p.add_argument("--telegram-api-url", default="https://api.telegram.org", help="Bot API server")
    p.set_defaults(func=cmd_setup)
    p = sub.add_parser(
        "install-unit",
        help="write the systemd unit and a first config for a board installed with pip",
    )
    p.add_argument("--venv", help="virtualenv the unit runs (default: this one)")
    p.add_argument("--unit-dir", default="/etc/systemd/system", help="where the unit goes")
    p.add_argument("--config-dir", default="/etc/spyoncino", help="where config.yaml goes")
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a role variable"
    )
    p.add_argument(
        "--vars", action="append", default=[], metavar="FILE", help="YAML file of role variables"
    )
    p.add_argument("--print", action="store_true", help="print the unit, write nothing")
    p.set_defaults(func=cmd_install_unit)
    p = sub.add_parser(
        "update", help="over-the-air update: A/B slots, health gate, rollback (docs/updates.md)"
    )
    p.add_argument(
        "action",
        nargs="?",
        default="update",
        choices=["update", "status", "rollback"],
        help="update (default), status, or rollback to the other good slot",
    )
    p.add_argument("--version", dest="version", help="exact version (default: the newest)")
    p.add_argument("--index-url", help="PEP 503 index (default: the box's settings)")
    p.add_argument("--wheel", help="install this wheel file instead (offline)")
    p.add_argument("--find-links", action="append", default=[], metavar="DIR")
    p.add_argument("--check", action="store_true", help="only say whether a newer one exists")
    p.add_argument("--force", action="store_true", help="retry a version marked bad")
    p.add_argument("--pre", action="store_true", help="consider pre-releases")
    p.set_defaults(func=cmd_update)
    p = with_config(
        sub.add_parser("selftest", help="imports, detector inference, storage: can this run?")
    )
    p.set_defaults(func=cmd_selftest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
