"""The config dataclasses as the one table of options (edgecv.options), iterated as timm's tests iterate its
registry: every field has a command-line option generated from it (or says why it is API-only), every option of
the command is a field or one of the command's own; each field's value round-trips through the command line, a
``--config`` YAML file and a resumed run's saved config; each range and choice is refused by the Python API and
the command alike; the choices are their owners' lists."""

from __future__ import annotations

from dataclasses import fields, replace

import click
import pytest
import yaml

from edgecv.cli import cli
from edgecv.compress.config import CompressConfig, resolve_config
from edgecv.errors import UserError
from edgecv.options import Option, check_fields, spec_of
from edgecv.serve.config import ServeConfig
from edgecv.training.config import COMMAND_DEFAULTS, TrainConfig

# command -> (its config dataclass, the options it declares by hand: not a field of the config)
COMMANDS = {
    "compress": (CompressConfig, {"config_path", "stages", "resume", "as_json", "quiet"}),
    "train": (TrainConfig, {"data", "arch", "img_size", "skip_bad", "allow_duplicates", "decode_cache", "resume",
                            "pretrained", "init_weights", "freeze", "backbone_lr_scale", "trust_pickle", "out",
                            "as_json", "quiet"}),
    "serve": (ServeConfig, {"bundle", "artifact", "bench_json", "host", "port", "max_body_mb", "max_decode_mb",
                            "threads", "api_key_env", "use_ray", "replicas", "address", "quiet"}),
}
ARGUMENTS = {"serve": ["bundle"]}  # a command's required arguments
CASES = [(cmd, f.name) for cmd, (cls, _) in COMMANDS.items() for f in fields(cls)]


def _field(cls, name):
    return next(f for f in fields(cls) if f.name == name)


def _param(command: str, o: Option, name: str) -> click.Option | None:
    flag = o.flag(name)
    return next((p for p in cli.commands[command].params if isinstance(p, click.Option) and flag in p.opts), None)


def _other_value(f, o: Option):
    """A valid value of the field other than its default."""
    if o.choices is not None:
        return next(c for c in reversed(o.choices()) if c != str(f.default))
    if o.kind is bool:
        return not f.default
    if o.kind in (int, float):
        lo = 0 if o.lo is None else o.lo
        for v in (lo + 3, lo + 1, (lo + o.hi) / 2 if o.hi is not None else lo + 2, lo + 0.25):
            v = o.kind(v)
            if v != f.default and (o.hi is None or v <= o.hi) and (v > lo or not o.lo_open):
                return v
    if f.name == "teacher_cache":
        return "views=3"
    return "a,b" if o.kind == (str, list) else f"{f.name}-x"


def _bad_values(o: Option) -> list:
    """Values its option refuses."""
    if o.choices is not None:
        return ["bogus"]
    bad = []
    if o.lo is not None:
        bad.append(o.kind(o.lo) if o.lo_open else o.kind(o.lo - 1))
    if o.hi is not None:
        bad.append(o.kind(o.hi + 1))
    if o.kind in (int, float):
        bad.append("many")
    return bad


def _argv(o: Option, name: str, value) -> list[str]:
    if o.kind is bool:
        on, _, off = (o.decl or o.flag(name)).partition("/")
        return [on if value else off]
    return [o.flag(name), str(value)]


def _parse(command: str, argv: list[str]) -> dict:
    """The config options' values from ``argv`` as click hands them to the command (no run); not its own."""
    params = cli.commands[command].make_context(command, ARGUMENTS.get(command, []) + list(argv)).params
    return {k: v for k, v in params.items() if k not in COMMANDS[command][1]}


@pytest.mark.parametrize("command,name", CASES)
def test_every_field_is_an_option_or_api_only_with_a_reason(command, name):
    cls, _ = COMMANDS[command]
    o = spec_of(_field(cls, name))
    assert o is not None, f"{cls.__name__}.{name} has no edgecv.options.option()"
    if o.api_only:
        assert len(o.api_only) > 10, f"{name}: API-only needs its reason"
    else:
        param = _param(command, o, name)
        assert param is not None, f"edgecv {command} has no {o.flag(name)} for {cls.__name__}.{name}"
        assert param.help == (o.help or None)
        if o.choices is not None:
            assert tuple(param.type.choices) == o.choices()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_the_command_is_a_field_or_its_own(command):
    cls, own = COMMANDS[command]
    flags = {o.flag(f.name) for f in fields(cls) if (o := spec_of(f)) and not o.api_only}
    for p in cli.commands[command].params:
        assert p.name in own or set(p.opts) & flags, f"edgecv {command} {p.opts}: neither a field nor listed"


def test_choices_are_their_owners_lists():
    from edgecv.compress.prune import IMPORTANCES
    from edgecv.compress.softlabels import TEACHER_PRECISIONS
    from edgecv.data.augment import PRESETS
    from edgecv.data.cache import MODES
    from edgecv.quant.scheme import WEIGHT_BITS
    from edgecv.targets import TARGETS
    from edgecv.training.balance import BALANCES
    from edgecv.training.losses import LOSSES

    owners = {"importance": IMPORTANCES, "teacher_precision": TEACHER_PRECISIONS, "augment": ("auto", *PRESETS),
              "decode_cache": MODES, "balance": BALANCES, "loss": LOSSES,
              "int8_weight_bits": ("auto", *map(str, WEIGHT_BITS))}
    for cls in (CompressConfig, TrainConfig, ServeConfig):
        for f in fields(cls):
            o = spec_of(f)
            if o.choices is not None and f.name != "target":
                assert o.choices() == owners[f.name], f"{cls.__name__}.{f.name}"
    target = spec_of(_field(CompressConfig, "target")).choices()
    assert sorted(target) == sorted(TARGETS) and target[0] == "x86"
    train_cache = next(p for p in cli.commands["train"].params if p.name == "decode_cache")
    assert tuple(train_cache.type.choices) == MODES


@pytest.mark.parametrize("command,name", CASES)
def test_a_value_round_trips_through_the_command_line(command, name):
    cls, _ = COMMANDS[command]
    f = _field(cls, name)
    o = spec_of(f)
    if o.api_only:
        pytest.skip(f"API-only: {o.api_only}")
    value = _other_value(f, o)
    params = _parse(command, _argv(o, name, value))
    param = _param(command, o, name)
    got = params[param.name]
    assert (str(got) if o.choices is not None else got) == value
    if command == "compress":
        cfg = resolve_config(params)
        assert getattr(cfg, name) == value and cfg == replace(CompressConfig(), **{name: value})
    else:  # edgecv train: the flags not given keep the command's defaults
        assert all(params[p.name] == p.default for p in cli.commands[command].params
                   if p.name != param.name and p.name in {g.name for g in fields(cls)})


def _sample() -> CompressConfig:
    """A config whose every field differs from its default, valid by the fields' options."""
    cfg = CompressConfig(**{f.name: _other_value(f, spec_of(f)) for f in fields(CompressConfig)})
    cfg.target_macs, cfg.int8_weight_bits = 0.25, 7  # a number; an int as YAML writes it
    check_fields(cfg)
    return cfg


def test_every_field_round_trips_through_a_config_file_and_resume(tmp_path):
    cfg = _sample()
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert resolve_config({}, path) == cfg
    out = tmp_path / "run"  # a resumed run reads OUT/config.yaml as compress.pipeline writes it
    out.mkdir()
    saved = replace(cfg, out=str(out))
    (out / "config.yaml").write_text(yaml.safe_dump(saved.to_dict(), sort_keys=False))
    assert resolve_config({"out": str(out)}, resume=True) == saved
    assert resolve_config({"out": str(out), "epochs_kd": 1}, resume=True) == replace(saved, epochs_kd=1)


BAD = [(cmd, f.name, bad) for cmd, (cls, _) in COMMANDS.items() for f in fields(cls)
       for bad in _bad_values(spec_of(f))]


@pytest.mark.parametrize("command,name,bad", BAD)
def test_a_bad_value_is_refused_by_the_api_and_the_command(command, name, bad):
    cls, _ = COMMANDS[command]
    o = spec_of(_field(cls, name))
    base = cls(**COMMAND_DEFAULTS) if cls is TrainConfig else cls()
    with pytest.raises(UserError, match=o.flag(name).replace("-", r"\-")):
        replace(base, **{name: bad}).validate()
    if o.api_only:
        return
    # the command: click refuses it while parsing (exit 2), or the config's check does (UserError, exit 2)
    with pytest.raises((click.UsageError, UserError)) as e:
        params = _parse(command, _argv(o, name, bad))
        if command != "compress":
            raise AssertionError(f"edgecv {command} took {o.flag(name)} {bad}")
        resolve_config(params).validate()
    assert getattr(e.value, "exit_code", 2) == 2 and o.flag(name) in str(e.value.format_message()
                                                                         if isinstance(e.value, click.UsageError)
                                                                         else e.value)
