"""Command line: run | check-config | config | rules | scan | demo.

Exit 0 ok, 1 runtime failure, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dbwatch import __version__

if TYPE_CHECKING:
    from dbwatch.config import Config

__all__ = ["main"]

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
# Top-level modules of the `daemon` extra: an app image with only `dbwatch[hook]` lacks them.
DAEMON_MODULES = frozenset(
    {"aiohttp", "asyncpg", "bcrypt", "h11", "msgspec", "prometheus_client", "psycopg", "structlog", "yaml"}
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dbwatch",
        description="Sidecar monitor for async Python web apps on PostgreSQL.",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 bad usage or config.",
    )
    p.add_argument("--version", action="version", version=f"dbwatch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the daemon", description="Run the daemon: probes, /metrics, /healthz, /readyz."
    )
    run.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML config file")
    run.add_argument("--listen", metavar="HOST:PORT", help="override the config's listen address")
    run.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="TLS and basic auth for the HTTP endpoints, in the Prometheus exporter-toolkit web config format",
    )

    chk = sub.add_parser(
        "check-config",
        help="validate a config file",
        description="Validate a config file and print the effective config with secrets redacted.",
    )
    chk.add_argument("config", metavar="FILE", help="YAML config file")
    chk.add_argument("--web.config.file", dest="web_config_file", metavar="FILE", help="also validate a web config")

    rules = sub.add_parser(
        "rules",
        help="generate SLO recording and alerting rules",
        description="Generate Prometheus recording rules and multi-window, multi-burn-rate alerts from the config's "
        "slos:, as a rule file and as a prometheus-operator PrometheusRule. Without --out, print the rule file.",
    )
    rules.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML config file with slos:")
    rules.add_argument(
        "--out", metavar="DIR", help="write dbwatch-slo.rules.yml and dbwatch-slo.prometheusrule.yaml there"
    )
    rules.add_argument(
        "--check", action="store_true", help="with --out: change nothing, exit 1 if the files there are out of date"
    )
    rules.add_argument(
        "--include",
        action="append",
        default=[],
        type=Path,
        metavar="RULEFILE",
        help="with --out: also write this hand-written rule file there (repeatable), e.g. config/dbwatch.rules.yml",
    )
    rules.add_argument(
        "--max-for",
        metavar="DURATION",
        help="cut every alert's for: to at most DURATION (e.g. 1s) in what is written, so an end-to-end test fires "
        "alerts in seconds; the shipped files are never changed. For tests only",
    )
    rules.add_argument(
        "--runbook-url",
        metavar="URL",
        help="absolute URL of the runbook page: every alert written (generated and --include) gets "
        "runbook_url: URL#<alertname in lower case> (default: dbwatch's README on GitHub, whose '#### <Alert>' "
        "sections are the runbook; point it at your copy or wiki)",
    )

    cfg = sub.add_parser(
        "config",
        help="the config file's JSON Schema and reference",
        description="Print the JSON Schema of the config file (or of the web config file), for editors and CI; or "
        "write README's generated config reference.",
    )
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="WHAT", required=True)
    schema = cfg_sub.add_parser("schema", help="print the JSON Schema (draft 2020-12)")
    schema.add_argument("--web", action="store_true", help="the --web.config.file format instead")
    ref = cfg_sub.add_parser("reference", help="write the generated config reference into a README")
    ref.add_argument("readme", metavar="FILE", help="a Markdown file with the reference markers (README.md)")
    ref.add_argument("--check", action="store_true", help="change nothing; exit 1 if it is out of date")

    demo = sub.add_parser(
        "demo",
        help="run against a throwaway local PostgreSQL",
        description="Start a throwaway PostgreSQL cluster, run dbwatch against it and print live figures. "
        "Ctrl-C or SIGTERM stops it and removes the cluster.",
    )
    demo.add_argument(
        "--listen", metavar="HOST:PORT", default="127.0.0.1:9839", help="where to serve (default %(default)s)"
    )
    demo.add_argument(
        "--duration", type=float, default=0, metavar="SECONDS", help="stop after this long (0: until Ctrl-C)"
    )
    demo.add_argument(
        "--interval", type=float, default=5.0, metavar="SECONDS", help="probe interval (default %(default)s)"
    )
    demo.add_argument(
        "--driver",
        choices=("asyncpg", "psycopg"),
        default="asyncpg",
        help="the demo app's async driver: asyncpg, or psycopg 3 (SQLAlchemy 2.1's default; default %(default)s)",
    )
    scan = sub.add_parser(
        "scan",
        help="report the tracebacks in log files (offline)",
        description="Read log files once and report every logged traceback: category, classes, chain and the "
        "deepest line of application code. Plain, JSON/structlog, CRI and docker json-file logs; a progress bar on "
        "stderr for large files when stderr is a terminal.",
        epilog="Exit codes: 0 ok, 1 a file could not be read or is not a regular file (a FIFO or device is refused:"
        " its read may never end), 2 bad usage.",
    )
    scan.add_argument("files", nargs="+", metavar="FILE", help="log files to read (regular files; - for stdin)")
    scan.add_argument(
        "--format", default="auto", choices=("auto", "plain", "json", "cri", "docker"), help="default %(default)s"
    )
    scan.add_argument(
        "--app-root", action="append", default=[], metavar="PATH", help="a directory of application code (repeatable)"
    )
    scan.add_argument(
        "--app-package",
        action="append",
        default=[],
        metavar="NAME",
        help="a top-level package of application code, found even in site-packages (repeatable)",
    )
    scan.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the text report")
    return p


def _load(path: str, listen: str | None = None) -> Config:
    from dbwatch.config import load, parse_listen

    config = load(path)
    if listen:
        from msgspec.structs import replace

        config = replace(config, listen=parse_listen(listen, "--listen"))
    return config


def _config_command(args: argparse.Namespace) -> int:
    import json

    from dbwatch import config, reference, webconfig

    web = getattr(args, "web", False)
    schema = webconfig.json_schema() if web else config.json_schema()
    if args.config_command == "schema":
        sys.stdout.write(json.dumps(schema, indent=2) + "\n")
        return EXIT_OK
    if reference.update(Path(args.readme), schema, check=args.check):
        return EXIT_OK
    if args.check:
        sys.stderr.write(
            f"dbwatch: the config reference in {args.readme} is out of date; run: "
            f"dbwatch config reference {args.readme}\n"
        )
        return EXIT_FAIL
    sys.stdout.write(f"wrote: {args.readme}\n")
    return EXIT_OK


def _rules(args: argparse.Namespace) -> int:
    from dbwatch import rules
    from dbwatch.config import ConfigError, parse_duration

    path, out, check, includes, max_for_text = args.config, args.out, args.check, args.include, args.max_for
    runbook_url = rules.runbook_base(args.runbook_url) if args.runbook_url else rules.DEFAULT_RUNBOOK_URL
    config = _load(path)
    if not config.slos:
        raise ConfigError(f"{path}: no slos: to generate rules from")
    max_for: float | None = None
    if max_for_text is not None:
        try:
            max_for = parse_duration(max_for_text)
        except ValueError:
            raise ConfigError("--max-for: expected a duration like 1s or 500ms") from None
        if max_for <= 0:
            raise ConfigError("--max-for: must be > 0")
    if out is None:
        if check:
            raise ConfigError("--check needs --out DIR")
        if includes:
            raise ConfigError("--include needs --out DIR")
        groups = rules.slo_groups(config, runbook_url)
        doc = {"groups": rules.cap_for(groups, max_for) if max_for else groups}
        sys.stdout.write(rules.render(doc, path, runbook_url))
        return EXIT_OK
    stale = rules.write(
        config, path, Path(out), check=check, max_for=max_for, includes=tuple(includes), runbook_url=runbook_url
    )
    for p in stale:
        sys.stdout.write(f"{'out of date' if check else 'wrote'}: {p}\n")
    if check and stale:
        sys.stderr.write(f"dbwatch: rules in {out} are out of date; run: dbwatch rules --config {path} --out {out}\n")
        return EXIT_FAIL
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dbwatch` console script."""
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help(sys.stderr)
        return EXIT_CONFIG
    if args.command == "scan":  # the offline report needs neither the config nor the daemon: it starts fast
        from dbwatch.logs.scan import run as run_scan

        try:
            return run_scan(args.files, args.format, args.app_root, args.app_package, args.json)
        except KeyboardInterrupt:
            return EXIT_OK
    try:
        return _command(args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in DAEMON_MODULES:
            raise
        sys.stderr.write(
            f"dbwatch {args.command}: the daemon's dependencies are not installed ({exc.name} is missing); "
            "install them with: pip install 'dbwatch[daemon]'\n"
        )
        return EXIT_FAIL


def _command(args: argparse.Namespace) -> int:
    """Every command but `scan`: they load a config and need the `daemon` extra."""
    import asyncio

    import yaml

    from dbwatch import logsetup
    from dbwatch.config import ConfigError, parse_listen

    try:
        if args.command == "check-config":
            config = _load(args.config)
            if args.web_config_file:
                from dbwatch import webconfig

                webconfig.load(args.web_config_file)
                sys.stdout.write("web config ok\n")
            sys.stdout.write(yaml.safe_dump(config.redacted(), sort_keys=False))
            sys.stdout.write("config ok\n")
            return EXIT_OK
        if args.command == "run":
            config = _load(args.config, args.listen)
            from dbwatch import webconfig

            web_config = webconfig.load(args.web_config_file) if args.web_config_file else None
            logsetup.configure(config.log.level, config.log.format, config.secrets())
            from dbwatch.daemon import serve

            asyncio.run(serve(config, web_config=web_config))
            return EXIT_OK
        if args.command == "config":
            return _config_command(args)
        if args.command == "rules":
            return _rules(args)
        if args.command == "demo":
            from dbwatch.demo import run_demo

            return run_demo(parse_listen(args.listen, "--listen"), args.duration, args.interval, args.driver)
    except ConfigError as exc:
        sys.stderr.write(f"dbwatch: config error: {exc}\n")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except OSError as exc:
        sys.stderr.write(f"dbwatch: {type(exc).__name__}: {exc.strerror or exc}\n")
        return EXIT_FAIL
    return EXIT_CONFIG
