"""Every subcommand's options come from one dataclass (cli_options): the parser has exactly its fields, with their
defaults, and a programming error (TypeError) is not dressed up as a one-line user error."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from posterior_diffusion import cli
from posterior_diffusion.cli_options import add_config_options, config_from_args


def _subcommands():
    for name, entry in cli._commands().items():
        if isinstance(entry, dict):
            yield from ((f"{name} {mode}", options) for mode, (options, _, _) in entry.items())
        else:
            yield name, entry[0]


@pytest.mark.parametrize("name,options", list(_subcommands()), ids=lambda v: v if isinstance(v, str) else "")
def test_each_subcommands_options_are_its_dataclass_fields(name, options):
    parser = cli.build_parser()
    command = parser._subparsers._group_actions[0].choices[name.split()[0]]
    if " " in name:
        command = command._subparsers._group_actions[0].choices[name.split()[1]]
    dests = {a.dest for a in command._actions if a.dest != "help"}
    hints = typing.get_type_hints(options)
    fields = {f.name for f in dataclasses.fields(options) if hints[f.name] is not dict}
    assert dests == fields
    for f in dataclasses.fields(options):
        if f.name in dests and f.default is not dataclasses.MISSING:
            assert command.get_default(f.name) == f.default, (name, f.name)


def test_options_round_trip_into_the_library_config():
    import argparse

    from posterior_diffusion.bench import BenchConfig
    from posterior_diffusion.cli_options import GridOptions

    parser = argparse.ArgumentParser()
    add_config_options(parser, GridOptions)
    args = parser.parse_args(["--images", "a", "--out", "b", "--tasks", "sr4", "denoise", "--size", "32", "--quiet"])
    cfg = config_from_args(BenchConfig, args)
    assert (cfg.images, cfg.out, cfg.tasks, cfg.size) == ("a", "b", ("sr4", "denoise"), 32)
    assert args.quiet and args.sampler_param is None


def test_a_type_error_in_a_command_is_a_bug_not_a_one_line_error(monkeypatch):
    def broken(args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cli, "cmd_list", broken)
    with pytest.raises(TypeError):
        cli.main(["list"])
