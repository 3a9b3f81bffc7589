"""The ``ioband`` command: a thin argparse dispatcher, one small function per subcommand.

Add a subcommand: write ``add_<name>(subparsers)`` that creates its parser and sets
``func=<function(args) -> exit status>``, and append it to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace

from ioband import TARGET_VERSION, __version__
from ioband.blkiofs import add_blkiofs
from ioband.control.cli import add_daemon
from ioband.control.commands import add_control_commands
from ioband.control.top import add_top
from ioband.errors import IobandError

PROG = "ioband"
DEMO_SCENARIO = "partitions-40-20-10"
DEMO_DURATION = 10.0  # virtual seconds
DEMO_DURATION_ENV = "IOBAND_DEMO_DURATION"  # overrides DEMO_DURATION (tests use a short one)

EXIT_OK = 0
EXIT_FAILURE = 1  # the environment failed us (cannot write the output file, ...)
EXIT_USAGE = 2  # bad input: arguments, scenario, a refused table line or message


def fail(command: str, message: str, status: int = EXIT_USAGE) -> int:
    print(f"{PROG} {command}: {message}", file=sys.stderr)
    return status


def error_text(exc: IobandError) -> str:
    """A scenario error is self-explanatory; an engine refusal carries its errno name."""
    from ioband.sim import ScenarioError

    return str(exc) if isinstance(exc, ScenarioError) else exc.describe()


def seconds(text: str) -> float:
    """argparse type: a positive duration such as ``10``, ``2.5`` or ``500ms``."""
    from ioband.sim.units import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0 (got {text!r})")
    return value


# ---------------------------------------------------------------------------------------------
# ioband sim


def add_sim(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sim",
        help="run a scenario in the discrete-event simulator",
        description="Simulate a scenario (a TOML file or a built-in name) in virtual time and "
        "print per-workload results and the devices' dmsetup table/status lines.",
    )
    p.add_argument(
        "scenario", nargs="?", metavar="FILE|NAME", help="scenario file or built-in name"
    )
    p.add_argument("--list", action="store_true", help="list the built-in scenarios and exit")
    p.add_argument(
        "--describe-models", action="store_true", help="list the disk models and their keys"
    )
    p.add_argument(
        "--json", metavar="OUT", help="also write the results as JSON to OUT ('-': stdout only)"
    )
    p.add_argument("--duration", type=seconds, metavar="S", help="override simulation.duration")
    p.add_argument("--seed", type=int, metavar="N", help="override simulation.seed")
    p.add_argument(
        "--scheduler", choices=("ioband", "none", "sfq"), help="override simulation.scheduler"
    )
    p.add_argument(
        "--no-efficiency",
        action="store_true",
        help="skip the second run without control (no efficiency in the metrics)",
    )
    p.add_argument(
        "--status-format", choices=("legacy", "diskstats"), help="override simulation.status_format"
    )
    p.add_argument("--timing", action="store_true", help="report the wall-clock speed on stderr")
    p.set_defaults(func=cmd_sim)


def cmd_sim(args: argparse.Namespace) -> int:
    from ioband.sim import catalog, open_scenario
    from ioband.sim.disk import describe_models
    from ioband.sim.report import make_console, render
    from ioband.sim.simulator import analyse

    if args.describe_models:
        print("\n".join(describe_models()))
        return EXIT_OK
    if args.list:
        entries = catalog.describe()
        width = max((len(n) for n, _ in entries), default=0)
        for name, description in entries:
            print(f"{name:<{width}}  {description}")
        return EXIT_OK
    if args.scenario is None:
        return fail("sim", "give a scenario file or built-in name (see `ioband sim --list`)")
    if args.seed is not None and args.seed < 0:
        return fail("sim", f"--seed must not be negative (got {args.seed})")
    try:
        scenario = open_scenario(args.scenario).with_overrides(
            duration=args.duration,
            seed=args.seed,
            status_format=args.status_format,
            scheduler=args.scheduler,
        )
        if args.no_efficiency:
            scenario = replace(scenario, efficiency=False)
        result = analyse(scenario)
    except IobandError as exc:
        return fail("sim", error_text(exc))
    if args.timing:
        rate = result.requests / result.wall_time if result.wall_time > 0 else 0.0
        print(
            f"{PROG} sim: {result.requests:,} requests, {result.events:,} events in "
            f"{result.wall_time:.2f} s wall ({rate:,.0f} requests/s)",
            file=sys.stderr,
        )
    document = json.dumps(result.to_dict(), indent=2) + "\n"
    if args.json == "-":
        sys.stdout.write(document)
        return EXIT_OK
    render(result, make_console(sys.stdout))
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(document)
        except OSError as exc:
            return fail("sim", f"cannot write {args.json}: {exc.strerror or exc}", EXIT_FAILURE)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# ioband demo


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="three real NBD clients share a device by weight 40/20/10 (about 30 s)",
        description="Start the daemon on a temporary backing file, drive its NBD export with "
        "three client processes whose weights are 40/20/10, first with the scheduler bypassed "
        "and then with it on, show the shares move from the store's own split to the weights, "
        "print both splits against the weights, write a plot, and clean up. With --sim, run "
        f"dm-ioband's published benchmark ({DEMO_SCENARIO!r}) in the simulator instead.",
    )
    p.add_argument("--seconds", type=seconds, default=20.0, metavar="S",
                   help="how long the clients run (default 20: the first half without "
                   "control, the second with)")  # fmt: skip
    p.add_argument("--plot", default="ioband-demo.png", metavar="PNG",
                   help="the plot's path (default ./ioband-demo.png; '' for none)")  # fmt: skip
    p.add_argument("--sim", action="store_true", help="the simulated benchmark instead")
    p.set_defaults(func=cmd_demo)


def demo_duration() -> float:
    text = os.environ.get(DEMO_DURATION_ENV)
    if not text:
        return DEMO_DURATION
    try:
        return seconds(text)
    except argparse.ArgumentTypeError as exc:
        raise IobandError(f"{DEMO_DURATION_ENV}: {exc}") from None


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        if args.sim:
            return run_demo(demo_duration())
        from pathlib import Path

        from ioband.demo import run_demo as run_nbd_demo

        return run_nbd_demo(args.seconds, Path(args.plot) if args.plot else None)
    except IobandError as exc:
        return fail("demo", error_text(exc))


def run_demo(duration: float = DEMO_DURATION) -> int:
    from ioband.sim import load_builtin, run
    from ioband.sim.report import make_console, render, share_lines

    scenario = load_builtin(DEMO_SCENARIO).with_overrides(duration=duration)
    console = make_console(sys.stdout)
    console.print(
        f"ioband demo: {len(scenario.devices)} ioband devices share one simulated disk "
        f"({duration:g} virtual seconds)",
        markup=False,
    )
    result = run(scenario)
    render(result, console, shares=False)
    console.print("")
    console.print("achieved I/O share vs weight share (all devices backlogged):", markup=False)
    for line in share_lines(result):
        console.print("  " + line, markup=False)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# ioband experiment


def add_experiment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="run the experiment suite (JSON, PNG plots, tables)",
        description="Run a named experiment or 'all' in the simulator; write NAME.json, "
        "NAME.timing.json and PNG plots to --out, and for 'all' the results page <OUT>.md "
        "(--out docs/results writes docs/results.md). Exit status 1 if a check fails.",
    )
    p.add_argument("name", nargs="?", metavar="NAME|all", help="experiment name, or all")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--out", default="ioband-results", metavar="DIR", help="output directory")
    p.add_argument("--quick", action="store_true", help="shortened runs (a smoke test)")
    p.add_argument("--seed", type=int, default=1, metavar="N", help="seed of every scenario")
    p.add_argument("--markdown", metavar="FILE", help="write the results page to FILE")
    p.set_defaults(func=cmd_experiment)


def cmd_experiment(args: argparse.Namespace) -> int:
    from ioband.experiments.runner import cli

    return cli(args)


# ---------------------------------------------------------------------------------------------
# ioband completion


def add_completion(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or tcsh)",
        description="Print the completion script of SHELL, generated from ioband's own argument "
        "definitions (shtab). bash: ioband completion bash > "
        "/usr/share/bash-completion/completions/ioband (or source it from ~/.bashrc).",
    )
    p.add_argument("shell", metavar="SHELL", choices=("bash", "zsh", "tcsh"))
    p.set_defaults(func=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell), end="")
    return 0


# ---------------------------------------------------------------------------------------------
# Dispatcher

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_sim,
    add_demo,
    add_experiment,
    add_daemon,
    add_control_commands,
    add_top,
    add_blkiofs,
    add_completion,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Proportional I/O bandwidth control in user space "
        "(dm-ioband rebuilt in Python).",
    )
    target = ".".join(map(str, TARGET_VERSION))
    parser.add_argument(
        "--version", action="version", version=f"{PROG} {__version__} (dm-ioband target v{target})"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def dash_hint(argv: list[str]) -> str | None:
    """argparse reads a message word such as ``-1:20`` as an option; say how to pass it."""
    if not argv or argv[0] != "message" or "--" in argv:
        return None
    dashed = [w for w in argv[1:] if w[:1] == "-" and w[1:2] in tuple("0123456789:=,")]
    if not dashed:
        return None
    options, words, rest = [], [], iter(argv[1:])
    for word in rest:
        if word in ("--socket", "--json") or word.startswith("--socket="):
            options.append(word)
            if word == "--socket":
                options.append(next(rest, ""))
        else:
            words.append(word)
    command = " ".join([PROG, "message", *options, "--", *words])
    return (f"{PROG}: hint: {dashed[0]!r} begins with '-' and was read as an option: put '--'"
            f" before the device name: {command}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        hint = dash_hint(argv) if exit_.code == 2 else None
        if hint:
            print(hint, file=sys.stderr)
        raise
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`ioband sim x | head`): exit quietly, without a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
