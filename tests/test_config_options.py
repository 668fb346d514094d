"""The config dataclasses as the one table of options (edgecv.options), iterated as timm's tests iterate its
registry, for every command that has one: every field has a command-line option generated from it (or says why it
is API-only), every option of the command is a field or one of the command's own; the command's defaults are the
config's; each field's value round-trips through the command line (and, for compress, a ``--config`` YAML file
and a resumed run's saved config); each range and choice is refused by the Python API and the command alike (one
line, exit 2); the choices are their owners' lists."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path

import click
import pytest
import yaml

from edgecv.bench.config import BenchConfig
from edgecv.bench.gate.config import GateConfig
from edgecv.cli import cli, main
from edgecv.compress.config import CompressConfig, resolve_config
from edgecv.errors import UserError
from edgecv.export.config import ExportOptions
from edgecv.options import Option, check_fields, default_of, spec_of
from edgecv.serve.config import PredictConfig, ServeConfig
from edgecv.training.config import COMMAND_DEFAULTS, EvalConfig, TrainConfig

# command -> (its config dataclass, the options it declares by hand: not a field of the config)
COMMANDS = {
    "compress": (CompressConfig, {"config_path", "stages", "resume", "as_json", "quiet"}),
    "train": (TrainConfig, {"data", "arch", "img_size", "skip_bad", "allow_duplicates", "decode_cache", "resume",
                            "pretrained", "init_weights", "freeze", "backbone_lr_scale", "trust_pickle", "out",
                            "as_json", "quiet"}),
    # serve's --artifact, --bench-json, --threads: PredictConfig's fields (test_serve_opens_its_bundle_with_...)
    "serve": (ServeConfig, {"bundle", "artifact", "bench_json", "host", "port", "max_body_mb", "max_decode_mb",
                            "threads", "api_key_env", "use_ray", "replicas", "address", "quiet"}),
    "export": (ExportOptions, {"source", "verify", "out", "triton_repo", "as_json", "quiet"}),
    "bench": (BenchConfig, {"bundle", "json_out", "markdown", "plot", "quiet"}),
    "gate": (GateConfig, {"baseline", "candidate", "json_out", "quiet"}),
    "predict": (PredictConfig, {"source", "paths", "as_json", "csv_path", "quiet"}),
    "eval": (EvalConfig, {"checkpoint", "per_class", "as_json", "quiet"}),
}
# the commands without a config dataclass, and why
NO_CONFIG = {
    "archs": "lists the registry; its only option is --json",
}
ARGUMENTS = {"serve": ["bundle"], "export": ["src"], "bench": ["bundle"],  # a command's required arguments
             "gate": ["--baseline", "base", "--candidate", "cand"], "predict": ["bundle", "photo.jpg"],
             "eval": ["ck.pt"]}
# a valid value where the field's option does not say one
SAMPLES = {(CompressConfig, "teacher_cache"): "views=3", (ExportOptions, "precisions"): "fp32,int8",
           (BenchConfig, "artifacts"): "onnx-int8,openvino-fp32", (BenchConfig, "threads"): [2, 4],
           (BenchConfig, "batches"): [1, 8]}
CASES = [(cmd, f.name) for cmd, (cls, _) in COMMANDS.items() for f in fields(cls)]


def _field(cls, name):
    return next(f for f in fields(cls) if f.name == name)


def _param(command: str, o: Option, name: str) -> click.Option | None:
    flag = o.flag(name)
    return next((p for p in cli.commands[command].params if isinstance(p, click.Option) and flag in p.opts), None)


def _base(cls):
    """The config as the command's defaults make it."""
    return cls(**COMMAND_DEFAULTS) if cls is TrainConfig else cls()


def _check(cfg) -> None:
    """The config's own check, as its library entry point runs it first (ExportOptions has a field ``validate``)."""
    (cfg.check if isinstance(cfg, ExportOptions) else cfg.validate)()


def _other_value(cls, f, o: Option):
    """A valid value of the field other than its default."""
    if (cls, f.name) in SAMPLES:
        return SAMPLES[cls, f.name]
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
    if o.kind in (int, float) or (isinstance(o.kind, tuple) and str not in o.kind):  # a number, a list of numbers
        bad.append("many")
    return bad


def _argv(o: Option, name: str, value) -> list[str]:
    if o.kind is bool:
        on, _, off = (o.decl or o.flag(name)).partition("/")
        return [on if value else off] if off else [on]  # one flag: it turns the field from its default
    return [o.flag(name), ",".join(map(str, value)) if isinstance(value, list) else str(value)]


def _parse(command: str, argv: list[str]) -> dict:
    """Every option's value from ``argv`` as click hands it to the command (no run), by its click name."""
    return cli.commands[command].make_context(command, ARGUMENTS.get(command, []) + list(argv)).params


def _from_cli(command: str, argv: list[str]):
    """The config the command builds from ``argv``: each field's option read back by its flag."""
    cls, _ = COMMANDS[command]
    params = _parse(command, argv)
    values = {f.name: params[_param(command, o, f.name).name] for f in fields(cls)
              if (o := spec_of(f)) is not None and not o.api_only}
    return resolve_config(values) if command == "compress" else cls(**values)


@pytest.mark.parametrize("command,name", CASES)
def test_a_default_quoted_in_the_help_is_the_fields(command, name):
    """A help text's ``[default: X]`` repeats the field's default by hand; where X is the value itself (a number,
    a name, on/off) it must be the field's, so a changed default cannot leave its help behind. Descriptions of a
    default resolved later ("the teacher's", "auto") are not values and are not compared."""
    f = _field(COMMANDS[command][0], name)
    spec = spec_of(f)
    m = re.search(r"\[default: ([^\];]+)\]", spec.help or "") if spec else None
    d = default_of(f)
    if m is None or d is None:
        return
    quoted = m.group(1).split(",")[0].strip()  # "64, halved for a small dataset ...": the value, then a rule
    if isinstance(d, bool):
        assert quoted == ("on" if d else "off"), (quoted, d)
    elif isinstance(d, int | float):
        assert float(quoted) == float(d), (quoted, d)
    elif isinstance(d, str):
        assert quoted == d, (quoted, d)


def test_every_command_is_iterated():
    assert set(cli.commands) == set(COMMANDS) | set(NO_CONFIG)
    assert not set(COMMANDS) & set(NO_CONFIG)


def test_serve_opens_its_bundle_with_predicts_flags():
    """serve's --artifact, --bench-json and --threads are PredictConfig's (one declaration for both commands)."""
    for name in ("artifact", "bench_json", "threads"):
        o = spec_of(_field(PredictConfig, name))
        serve, predict = _param("serve", o, name), _param("predict", o, name)
        assert serve.to_info_dict() == predict.to_info_dict()


def test_where_to_add_an_option_names_every_config_module():
    """docs/architecture.md's "An option of a command" bullet lists exactly the modules of the configs above."""
    import sys

    from tests.conftest import REPO

    text = (REPO / "docs" / "architecture.md").read_text()
    m = re.search(r"- \*\*An option of a command\*\* \(files: (.*?)\):", text, re.S)
    assert m, "docs/architecture.md: no 'An option of a command' bullet with its files"
    modules = {str(Path(sys.modules[cls.__module__].__file__).relative_to(REPO)) for cls, _ in COMMANDS.values()}
    assert set(re.findall(r"`([^`]+)`", m.group(1))) == modules


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
        if o.free_text:  # a text flag whose help lists the choices
            assert all(c in param.help for c in o.choices())
        elif o.choices is not None:
            assert tuple(param.type.choices) == o.choices()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_the_command_is_a_field_or_its_own(command):
    cls, own = COMMANDS[command]
    flags = {o.flag(f.name) for f in fields(cls) if (o := spec_of(f)) and not o.api_only}
    for p in cli.commands[command].params:
        assert p.name in own or set(p.opts) & flags, f"edgecv {command} {p.opts}: neither a field nor listed"


@pytest.mark.parametrize("command", COMMANDS)
def test_the_command_defaults_are_the_configs(command):
    """No flag given: the command builds the config the API builds (a default such as "2s" or "1" included)."""
    cls, _ = COMMANDS[command]
    assert _from_cli(command, []) == _base(cls)


def test_choices_are_their_owners_lists():
    from edgecv.bench.gate.measure import METRICS
    from edgecv.bench.gate.stats import ON_INCONCLUSIVE
    from edgecv.compress.distill import RECOVERY_SOURCES
    from edgecv.compress.prune import IMPORTANCES, SCOPES
    from edgecv.compress.softlabels import TEACHER_PRECISIONS
    from edgecv.contracts.rundir import STAGES
    from edgecv.data.augment import PRESETS
    from edgecv.data.cache import MODES
    from edgecv.quant.scheme import WEIGHT_BITS
    from edgecv.targets import DEFAULT_TARGET, TARGET_NAMES, TARGETS
    from edgecv.training.balance import BALANCES
    from edgecv.training.losses import LOSSES

    owners = {"importance": IMPORTANCES, "prune_scope": SCOPES, "teacher_precision": TEACHER_PRECISIONS,
              "augment": ("auto", *PRESETS), "decode_cache": MODES, "balance": BALANCES, "loss": LOSSES,
              "int8_weight_bits": ("auto", *map(str, WEIGHT_BITS)), "metric": tuple(METRICS),
              "on_inconclusive": ON_INCONCLUSIVE, "stage": STAGES, "target": TARGET_NAMES,
              "recovery_kd": ("auto", *RECOVERY_SOURCES), "recovery_augment": ("auto", *PRESETS)}
    for cls, _ in COMMANDS.values():
        for f in fields(cls):
            o = spec_of(f)
            if o.choices is not None and not (cls is CompressConfig and f.name == "target"):
                assert o.choices() == owners[f.name], f"{cls.__name__}.{f.name}"
    target = spec_of(_field(CompressConfig, "target")).choices()  # a profile, not "all": the default first
    assert sorted(target) == sorted(TARGETS) and target[0] == DEFAULT_TARGET
    assert ExportOptions().target == DEFAULT_TARGET
    train_cache = next(p for p in cli.commands["train"].params if p.name == "decode_cache")
    assert tuple(train_cache.type.choices) == MODES


@pytest.mark.parametrize("command,name", CASES)
def test_a_value_round_trips_through_the_command_line(command, name, tmp_path, monkeypatch):
    cls, _ = COMMANDS[command]
    f = _field(cls, name)
    o = spec_of(f)
    if o.api_only:
        pytest.skip(f"API-only: {o.api_only}")
    value = _other_value(cls, f, o)
    if o.exists:  # a path the flag wants to exist
        monkeypatch.chdir(tmp_path)
        Path(value).write_text("{}")
    cfg = _from_cli(command, _argv(o, name, value))
    got = getattr(cfg, name)
    assert (str(got) if o.choices is not None else got) == value
    assert cfg == replace(_base(cls), **{name: got})  # the flags not given keep their defaults


def _sample() -> CompressConfig:
    """A config whose every field differs from its default, valid by the fields' options."""
    cfg = CompressConfig(**{f.name: _other_value(CompressConfig, f, spec_of(f)) for f in fields(CompressConfig)})
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
    with pytest.raises(UserError, match=re.escape(o.flag(name))):
        _check(replace(_base(cls), **{name: bad}))
    if o.api_only:
        return
    # the command: click refuses it while parsing (exit 2), or the config's check that its library entry point
    # runs before any work does (UserError, exit 2)
    with pytest.raises((click.UsageError, UserError)) as e:
        _check(_from_cli(command, _argv(o, name, bad)))
    msg = e.value.format_message() if isinstance(e.value, click.UsageError) else str(e.value)
    assert getattr(e.value, "exit_code", 2) == 2 and o.flag(name) in msg


@pytest.mark.parametrize("argv", [
    ["export", "src", "--out", "bundle", "--target", "tpu"],
    ["export", "src", "--out", "bundle", "--stage", "teacher"],
    ["export", "src", "--out", "bundle", "--opset", "9"],
    ["bench", "bundle", "--rounds", "0"],
    ["bench", "bundle", "--batch", "1,x"],
    ["bench", "bundle", "--min-time", "soon"],
    ["gate", "--baseline", "a", "--candidate", "b", "--on-inconclusive", "maybe"],
    ["gate", "--baseline", "a", "--candidate", "b", "--block-time", "-1s"],
    ["serve", "bundle", "--max-batch", "0"],
    ["predict", "bundle", "photo.jpg", "--topk", "0"],
    ["predict", "bundle", "photo.jpg", "--bench-json", "missing.json"],
    ["eval", "ck.pt", "--batch-size", "0"],
])
def test_a_bad_flag_is_one_line_and_exit_2_before_any_work(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("edgecv: error: ") and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_prune_epochs_default_by_the_students_start_and_the_set_size():
    """``--epochs-prune`` unset: 15 for a student from pretrained weights on >= 1,000 training images, else 9
    (docs/compress.md); a given value stands."""
    from edgecv.compress.config import PRETRAINED_PRUNE_EPOCHS, PRUNE_EPOCHS

    assert (PRUNE_EPOCHS, PRETRAINED_PRUNE_EPOCHS) == (9, 15) and CompressConfig().epochs_prune is None
    assert CompressConfig().resolve_prune_epochs(10_000) == 9  # from scratch
    for start in ({"student_pretrained": True}, {"student_init_weights": "w.pt"}):
        assert CompressConfig(**start).resolve_prune_epochs(1000) == 15
        assert CompressConfig(**start).resolve_prune_epochs(999) == 9  # a small set (hymenoptera: 245 photos)
    assert CompressConfig(student_pretrained=True, epochs_prune=3).resolve_prune_epochs(10_000) == 3
