"""Shell completion scripts for bash, zsh and fish, generated from the argument parser.

A script contains the commands, options and option values of the parser
that made it, so a command added later is completed once the script is made
again. TARGET arguments are completed when the user presses Tab: the script
runs ``runregistry __complete targets`` with the registry options already on
the command line, which prints the live pids and session ids.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

if TYPE_CHECKING:
    from .._record import Record

# The completion of a value: nothing, file names, directory names, the live
# runs, a command line of its own, or a fixed list of choices.
Kind = Literal["none", "files", "dirs", "target", "command", "choices"]

# Choices that every shell takes as one plain word, with no quoting.
_PLAIN_WORD: Final = re.compile(r"[\w.,:/@+=-]+")


class Option(NamedTuple):
    """An option as the scripts complete it."""

    flags: tuple[str, ...]
    help: str
    metavar: str
    takes_value: bool
    repeatable: bool
    kind: Kind
    choices: tuple[str, ...]


class Positional(NamedTuple):
    """A positional argument as the scripts complete it."""

    metavar: str
    help: str
    kind: Kind
    choices: tuple[str, ...]
    optional: bool
    # Whether it takes every remaining word (nargs "*", "+" or REMAINDER).
    many: bool


class Command(NamedTuple):
    """A command: its name first, then its aliases, with its options and positionals."""

    names: tuple[str, ...]
    help: str
    options: tuple[Option, ...]
    positionals: tuple[Positional, ...]


class Interface(NamedTuple):
    """Everything a completion script needs to know about the command line."""

    options: tuple[Option, ...]
    # Global options that select the registry, passed on to ``__complete``.
    registry_options: tuple[Option, ...]
    commands: tuple[Command, ...]


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    """Return the completion script for *shell* (bash, zsh or fish) of *parser*'s commands."""
    interface = describe(parser)
    if shell == "bash":
        return bash_script(interface)
    if shell == "zsh":
        return zsh_script(interface)
    if shell == "fish":
        return fish_script(interface)
    raise ValueError(f"no completion script for shell {shell!r}: choose bash, zsh or fish")


def target_candidates(records: Sequence[Record]) -> list[tuple[str, str]]:
    """Return (value, description) pairs: each run's pid, then each run's session id.

    A session id with whitespace or control characters is left out, because a
    shell cannot offer it as one word.
    """
    from ._output import printable

    candidates = []
    for record in records:
        agent = printable(record.agent) or "run"
        candidates.append((str(record.pid), f"{agent} {printable(record.session_id)}"))
    for record in records:
        if _PLAIN_WORD.fullmatch(record.session_id):
            agent = printable(record.agent) or "run"
            candidates.append((record.session_id, f"{agent} pid {record.pid}"))
    return candidates


def describe(parser: argparse.ArgumentParser) -> Interface:
    """Read the global options and the visible commands of *parser*.

    argparse has no public way to list what a parser accepts, so this reads
    its private ``_actions`` and ``_choices_actions``.
    """
    options = []
    registry_options = []
    commands: tuple[Command, ...] = ()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands = _commands(action)
            continue
        option = _option(action, parser.prog)
        if option is None:
            continue
        options.append(option)
        if _selects_registry(action):
            registry_options.append(option)
    return Interface(tuple(options), tuple(registry_options), commands)


def bash_script(interface: Interface) -> str:
    """Return the bash completion script for *interface*."""
    value_kinds = []
    for names, option in _all_options(interface):
        if option.takes_value:
            patterns = "|".join(f'"{name} {flag}"' for name in names for flag in option.flags)
            value_kinds.append(f"        {patterns}) echo {_bash_kind(option)} ;;")

    option_lists = [f'        "") echo "{_flag_words(interface.options)}" ;;']
    positional_kinds = []
    for command in interface.commands:
        pattern = "|".join(command.names)
        option_lists.append(f'        {pattern}) echo "{_flag_words(command.options)}" ;;')
        positional_kinds.append(f"        {pattern})")
        positional_kinds.extend(_bash_positionals(command.positionals))
        positional_kinds.append("            ;;")

    passed = "|".join(flag for option in interface.registry_options for flag in option.flags)
    command_names = " ".join(name for command in interface.commands for name in command.names)
    return _fill(
        "runregistry.bash",
        VALUE_KINDS="\n".join(value_kinds),
        OPTIONS="\n".join(option_lists),
        POSITIONALS="\n".join(positional_kinds),
        PASSED=passed or "--dir",
        COMMANDS=command_names,
    )


def zsh_script(interface: Interface) -> str:
    """Return the zsh completion script for *interface*."""
    global_specs = [_zsh_option_spec(option) for option in interface.options]
    commands = [
        _zsh_quote(f"{name}:{command.help or 'alias of ' + command.names[0]}")
        for command in interface.commands
        for name in command.names
    ]
    cases = []
    for command in interface.commands:
        specs = [_zsh_option_spec(option) for option in command.options]
        specs.extend(_zsh_positional_specs(command.positionals))
        cases.append(f"    ({'|'.join(command.names)})")
        cases.append("      _arguments -s -S \\\n        " + " \\\n        ".join(specs))
        cases.append("      ;;")

    passed = []
    for option in interface.registry_options:
        flag = option.flags[-1]
        value = f" ${{(Q)opt_args[{flag}]}}" if option.takes_value else ""
        passed.append(f"    (( ${{+opt_args[{flag}]}} )) && _runregistry_global+=({flag}{value})")
    return _fill(
        "_runregistry.zsh",
        GLOBAL_SPECS=" \\\n    ".join(global_specs),
        COMMANDS="\n    ".join(commands),
        CASES="\n".join(cases),
        PASSED="\n".join(passed),
    )


def fish_script(interface: Interface) -> str:
    """Return the fish completion script for *interface*."""
    value_options = [_fish_value_case("''", interface.options)]
    rules = [_fish_option_rule("__runregistry_using ''", option) for option in interface.options]
    for command in interface.commands:
        names = " ".join(command.names)
        value_options.append(_fish_value_case(names, command.options))
        for name in command.names:
            help_text = command.help or f"alias of {command.names[0]}"
            rules.append(
                f"complete -c runregistry -n \"__runregistry_using ''\" -a {name} "
                f"-d {_fish_quote(help_text)}"
            )
        condition = f"__runregistry_using {names}"
        rules.extend(_fish_option_rule(condition, option) for option in command.options)
        rules.extend(_fish_positional_rules(condition, command.positionals))

    passed = " ".join(flag for option in interface.registry_options for flag in option.flags)
    return _fill(
        "runregistry.fish",
        VALUE_OPTIONS="\n".join(value_options),
        PASSED=passed or "--dir",
        RULES="\n".join(rules),
    )


def _commands(action: argparse._SubParsersAction[argparse.ArgumentParser]) -> tuple[Command, ...]:
    """Group the subparsers by parser (a name and its aliases); hidden ones are left out."""
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    names: dict[int, list[str]] = {}
    parsers: dict[int, argparse.ArgumentParser] = {}
    for name, subparser in action.choices.items():
        names.setdefault(id(subparser), []).append(name)
        parsers[id(subparser)] = subparser

    commands = []
    for key, subparser in parsers.items():
        primary = names[key][0]
        # A command registered without help, such as __complete, is not for people.
        if primary not in helps or primary.startswith("_"):
            continue
        commands.append(_command(tuple(names[key]), helps[primary], subparser))
    return tuple(commands)


def _command(names: tuple[str, ...], help_text: str, parser: argparse.ArgumentParser) -> Command:
    options = []
    positionals = []
    for action in parser._actions:
        if action.option_strings:
            option = _option(action, parser.prog)
            if option is not None:
                options.append(option)
        elif action.help != argparse.SUPPRESS:
            positionals.append(_positional(action, parser.prog))
    return Command(names, _clean(help_text), tuple(options), tuple(positionals))


def _option(action: argparse.Action, prog: str) -> Option | None:
    if action.help == argparse.SUPPRESS or not action.option_strings:
        return None
    takes_value = action.nargs != 0
    kind, choices = _option_kind(action) if takes_value else ("none", ())
    repeatable = isinstance(
        action, (argparse._AppendAction, argparse._AppendConstAction, argparse._CountAction)
    )
    return Option(
        flags=tuple(action.option_strings),
        help=_help(action, prog),
        metavar=_metavar(action),
        takes_value=takes_value,
        repeatable=repeatable,
        kind=kind,
        choices=choices,
    )


def _positional(action: argparse.Action, prog: str) -> Positional:
    metavar = _metavar(action)
    choices = _plain_choices(action)
    kind: Kind = "none"
    if action.dest == "target":
        kind = "target"
    elif choices:
        kind = "choices"
    elif action.nargs == argparse.REMAINDER or "COMMAND" in metavar:
        kind = "command"
    elif "FILE" in metavar:
        kind = "files"
    return Positional(
        metavar=metavar,
        help=_help(action, prog),
        kind=kind,
        choices=choices,
        optional=action.nargs in ("?", "*", argparse.REMAINDER),
        many=action.nargs in ("*", "+", argparse.REMAINDER),
    )


def _option_kind(action: argparse.Action) -> tuple[Kind, tuple[str, ...]]:
    choices = _plain_choices(action)
    if choices:
        return "choices", choices
    metavar = _metavar(action)
    if action.dest == "dir" or "DIR" in metavar:
        return "dirs", ()
    if "FILE" in metavar or metavar == "PATH":
        return "files", ()
    return "none", ()


def _selects_registry(action: argparse.Action) -> bool:
    """Return True when a global option selects the registry, not help, the version or logs."""
    ignored = (argparse._HelpAction, argparse._VersionAction)
    return not isinstance(action, ignored) and action.dest != "verbose"


def _plain_choices(action: argparse.Action) -> tuple[str, ...]:
    if action.choices is None:
        return ()
    return tuple(str(choice) for choice in action.choices if _PLAIN_WORD.fullmatch(str(choice)))


def _metavar(action: argparse.Action) -> str:
    metavar = action.metavar
    if isinstance(metavar, tuple):
        return " ".join(metavar)
    return metavar or action.dest.upper()


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    # Help may use argparse's %(default)s-style references, as --help expands them.
    with suppress(KeyError, TypeError, ValueError):
        text = text % {**vars(action), "prog": prog}
    return _clean(text)


def _clean(text: str) -> str:
    return " ".join(text.split())


def _all_options(interface: Interface) -> Iterable[tuple[tuple[str, ...], Option]]:
    """Yield each option with the names of its command; () names a global option."""
    for option in interface.options:
        yield ("",), option
    for command in interface.commands:
        for option in command.options:
            yield command.names, option


def _flag_words(options: Sequence[Option]) -> str:
    return " ".join(flag for option in options for flag in option.flags)


def _value_flags(options: Sequence[Option]) -> str:
    flags = [flag for option in options if option.takes_value for flag in option.flags]
    return " ".join(flags) if flags else "''"


def _fill(template: str, **parts: str) -> str:
    """Return the script template named *template* with each ``@NAME@`` replaced by its part."""
    from importlib.resources import files

    text = (files("runregistry.cli") / "completion_templates" / template).read_text()
    for name, part in parts.items():
        text = text.replace(f"@{name}@", part)
    return text


# bash


def _bash_kind(option: Option | Positional) -> str:
    if option.kind == "choices":
        return f'"choices {" ".join(option.choices)}"'
    return option.kind


def _bash_positionals(positionals: Sequence[Positional]) -> list[str]:
    lines = []
    for index, positional in enumerate(positionals):
        if positional.kind == "command":
            lines.append(f"            if (($2 == {index})); then echo command; fi")
            lines.append(f"            if (($2 > {index})); then echo files; fi")
        else:
            test = ">=" if positional.many else "=="
            kind = _bash_kind(positional)
            lines.append(f"            if (($2 {test} {index})); then echo {kind}; fi")
    return lines or ["            :"]


# zsh


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_option_spec(option: Option) -> str:
    """Return an ``_arguments`` spec, such as ``'(-q --quiet)'{-q,--quiet}'[print pids]'``."""
    suffixes = [_zsh_flag(flag, option.takes_value) for flag in option.flags]
    description = "[" + re.sub(r"([\\\[\]])", r"\\\1", option.help) + "]"
    value = ""
    if option.takes_value:
        value = f":{_zsh_message(option.metavar)}:{_zsh_action(option)}"
    tail = _zsh_quote(description + value)

    if option.repeatable:
        head = "'*'"
    elif len(option.flags) > 1:
        head = _zsh_quote("(" + " ".join(option.flags) + ")")
    else:
        head = ""
    if len(suffixes) > 1:
        return head + "{" + ",".join(suffixes) + "}" + tail
    return head + _zsh_quote(suffixes[0]) + tail


def _zsh_flag(flag: str, takes_value: bool) -> str:
    # "-X+" takes its value attached or as the next word, "--opt=" after "=" or as the next word.
    if not takes_value:
        return flag
    return flag + ("=" if flag.startswith("--") else "+")


def _zsh_message(text: str) -> str:
    return re.sub(r"([\\:])", r"\\\1", text) or "value"


def _zsh_action(option: Option | Positional) -> str:
    actions = {
        "files": "_files",
        "dirs": "_files -/",
        "target": "_runregistry_targets",
        "command": "_normal",
        "choices": "(" + " ".join(option.choices) + ")",
    }
    # A single space: show the message, offer nothing.
    return actions.get(option.kind, " ")


def _zsh_positional_specs(positionals: Sequence[Positional]) -> list[str]:
    specs = []
    for index, positional in enumerate(positionals, start=1):
        message = _zsh_message(positional.metavar)
        if positional.kind == "command":
            # "*::" hands the remaining words to _normal as a command line of their own.
            specs.append(_zsh_quote(f"*::{message}:_normal"))
        elif positional.many:
            specs.append(_zsh_quote(f"*:{message}:{_zsh_action(positional)}"))
        else:
            colons = "::" if positional.optional else ":"
            specs.append(_zsh_quote(f"{index}{colons}{message}:{_zsh_action(positional)}"))
    return specs


# fish


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_value_case(names: str, options: Sequence[Option]) -> str:
    """Return the ``switch`` case that prints the options of commands *names* that take a value."""
    return f"        case {names}\n            printf '%s\\n' {_value_flags(options)}"


def _fish_option_rule(condition: str, option: Option) -> str:
    parts = [f"complete -c runregistry -n {_fish_quote(condition)}"]
    for flag in option.flags:
        if flag.startswith("--"):
            parts.append(f"-l {flag[2:]}")
        elif len(flag) == 2:
            parts.append(f"-s {flag[1]}")
        else:
            parts.append(f"-o {flag[1:]}")
    if option.takes_value:
        parts.append(_fish_value(option))
    if option.help:
        parts.append(f"-d {_fish_quote(option.help)}")
    return " ".join(parts)


def _fish_value(option: Option) -> str:
    if option.kind == "choices":
        return f"-x -a {_fish_quote(' '.join(option.choices))}"
    if option.kind == "files":
        return "-r -F"
    if option.kind == "dirs":
        return "-x -a '(__fish_complete_directories (commandline -ct) \"\")'"
    return "-x"


def _fish_positional_rules(condition: str, positionals: Sequence[Positional]) -> list[str]:
    rules = []
    for index, positional in enumerate(positionals):
        test = "-ge" if positional.many else "-eq"
        where = _fish_quote(f"{condition}; and __runregistry_argument {test} {index}")
        candidates = {
            "target": "-a '(__runregistry_targets)'",
            "choices": f"-a {_fish_quote(' '.join(positional.choices))}",
            "files": "-F",
            "dirs": "-a '(__fish_complete_directories (commandline -ct) \"\")'",
            "command": "-a '(__fish_complete_command (commandline -ct))' -F",
        }.get(positional.kind)
        if candidates is not None:
            rules.append(f"complete -c runregistry -n {where} {candidates}")
    return rules
