"""CLI options derived from a stage's config model, so each default and help text is written once.

Each stage (`ldm-envs check`, `ldm-autorl run`, `ldm-model train`, `ldm-eval evaluate`) has one
pydantic config model whose fields hold the defaults and, as `Field(description=...)`, the help
texts. `config_options` turns the fields a command exposes into its typer options and calls the
command with the model built from what was given, so the command line, the suite file (which
embeds the same models) and what MLflow and checkpoints record cannot drift apart:

    @app.command()
    @config_options(TrainConfig, "steps", field_option("mlflow", "--track/--no-track"))
    def train(config: TrainConfig, progress: bool = True) -> None: ...

A field that needs another spelling, another CLI type, or a conversion (`--grad-clip 0` for no
clipping) says so with `field_option`. Flags that are not part of the stage's config
(`--progress`, `--fresh`) stay plain parameters of the command.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Annotated, Any, TypeVar, get_type_hints

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

__all__ = [
    "ATTRIBUTE",
    "ConfigOptions",
    "FieldOption",
    "config_options",
    "field_default",
    "field_help",
    "field_option",
]

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute a decorated command carries its `ConfigOptions` in (typer copies it onto the
#: click callback, where `tests/test_cli_defaults.py` reads it).
ATTRIBUTE = "ldm_config_options"


@dataclass(frozen=True)
class FieldOption:
    """How one field of a config model is a CLI option.

    Attributes:
        field: the model's field (also the command's parameter name).
        decls: the option's spellings (default `--field-name`).
        type: the option's type where the field's is not one typer reads (a tuple, a union of
            a str and a model, a Literal).
        parse: option value -> field value (`0` -> None, a file name -> a model).
        option: more `typer.Option` arguments (`show_default=False`, ...).
    """

    field: str
    decls: tuple[str, ...] = ()
    type: Any = None
    parse: Callable[[Any], Any] | None = None
    option: Mapping[str, Any] = dataclass_field(default_factory=dict)


def field_option(
    name: str,
    *decls: str,
    type: Any = None,
    parse: Callable[[Any], Any] | None = None,
    **option: Any,
) -> FieldOption:
    """A `FieldOption` (see its attributes)."""
    return FieldOption(name, tuple(decls), type, parse, dict(option))


def field_default(model: type[BaseModel], name: str) -> Any:
    """The default of `model.name` (`inspect.Parameter.empty` when the field is required)."""
    info = model.model_fields[name]
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return inspect.Parameter.empty if info.default is PydanticUndefined else info.default


def field_help(model: type[BaseModel], name: str) -> str | None:
    """The help text of `model.name`: its description."""
    return model.model_fields[name].description


@dataclass(frozen=True)
class ConfigOptions:
    """The model a command builds and the fields it exposes, in order."""

    model: type[BaseModel]
    options: tuple[FieldOption, ...]
    into: str

    def parameters(self) -> list[inspect.Parameter]:
        """The fields as keyword parameters annotated with their `typer.Option`."""
        params = []
        for opt in self.options:
            info = self.model.model_fields[opt.field]
            kind = opt.type if opt.type is not None else info.annotation
            help_text = opt.option.get("help", info.description)
            extra = {k: v for k, v in opt.option.items() if k != "help"}
            option = typer.Option(*opt.decls, help=help_text, **extra)
            annotation = Annotated[kind, option]  # type: ignore[valid-type]  # built at runtime
            params.append(
                inspect.Parameter(
                    opt.field,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=field_default(self.model, opt.field),
                    annotation=annotation,
                )
            )
        return params

    def build(self, values: dict[str, Any]) -> BaseModel:
        """The model from the command's values; the fields' values are taken out of `values`."""
        fields = {}
        for opt in self.options:
            value = values.pop(opt.field)
            fields[opt.field] = opt.parse(value) if opt.parse is not None else value
        return self.model(**fields)


def config_options(
    model: type[BaseModel],
    *options: str | FieldOption,
    into: str = "config",
    check: Callable[[Mapping[str, Any]], None] | None = None,
) -> Callable[[F], F]:
    """Decorate a command so that `model`'s fields are its options and `into` gets the model.

    The options take the place of the `into` parameter in the command's signature (so in its
    `--help`), each with the field's default and description. `check` sees every value the
    command got (by parameter name) before the model is built: the checks that must name the
    option (`--device: ...`) rather than the field, or that depend on a plain parameter.
    """
    spec = ConfigOptions(
        model,
        tuple(o if isinstance(o, FieldOption) else FieldOption(o) for o in options),
        into,
    )

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        hints = get_type_hints(func, include_extras=True)
        if into not in signature.parameters:
            raise TypeError(f"{func.__qualname__} has no parameter {into!r} for {model.__name__}")
        params: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            if param.name == into:
                params += spec.parameters()
            else:
                # keyword-only, so the options' defaults may come before a required argument
                params.append(
                    param.replace(
                        kind=inspect.Parameter.KEYWORD_ONLY,
                        annotation=hints.get(param.name, param.annotation),
                    )
                )
        names = [p.name for p in params]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise TypeError(f"{func.__qualname__}: parameter(s) {twice} are also config fields")

        @functools.wraps(func)
        def command(**values: Any) -> Any:
            if check is not None:
                check(values)
            values[into] = spec.build(values)
            return func(**values)

        del command.__wrapped__  # typer reads our signature, not the function's
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        setattr(command, ATTRIBUTE, spec)
        return command  # type: ignore[return-value]

    return decorate
