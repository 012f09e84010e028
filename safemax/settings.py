"""Settings declared once: a frozen dataclass per method (and for the ``Unlearner``), each field
with its default, its type, its check and its help. From that one declaration come the
validation (at construction), the command line's options (``add_arguments``), compare's method
specs (``salun:retain_weight=1``, typed by the field: ``from_text``) and the records a
checkpoint or a results file keeps (``record``).

    @dataclass(frozen=True)
    class SalUnSettings(Settings):
        mask_fraction: float = setting(0.5, "share of the weights the saliency mask keeps", check=share)

A wrong name is refused with the valid fields; a wrong value with the field's name and rule.
"""
import dataclasses
import json
import math
import typing


def setting(default, help: str, check=None, cli: bool = True):
    """A field of a ``Settings`` dataclass: ``check(value)`` returns an error (what the value
    must be) or None; ``cli=False`` keeps it off the command line (Python only)."""
    return dataclasses.field(default=default, metadata=dict(help=help, check=check, cli=cli))


# ---------------------------------------------------------------------------------- checks
def positive(v):
    return None if _number(v) and v > 0 and math.isfinite(v) else "> 0 (a finite number)"


def non_negative(v):
    return None if _number(v) and v >= 0 and math.isfinite(v) else ">= 0 (a finite number)"


def finite(v):
    return None if _number(v) and math.isfinite(v) else "a finite number"


def share(v):
    return None if _number(v) and 0 < v <= 1 else "in (0, 1] (a share)"


def share_or_zero(v):
    return None if _number(v) and 0 <= v <= 1 else "in [0, 1] (a share)"


def whole(v):
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "a whole number >= 1"


def one_of(*choices):
    def check(v):
        return None if v in choices else "one of " + ", ".join(repr(c) for c in choices)
    check.choices = list(choices)   # the command line's choices
    return check


def optional(check):
    def inner(v):
        return None if v is None else check(v)
    return inner


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Settings:
    """Base of the settings dataclasses (declare them ``@dataclass(frozen=True)``)."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and _base_type(f) is float:
                object.__setattr__(self, f.name, float(value))   # 1 → 1.0: one record for one setting
                value = float(value)
            problem = check(value) if check else None
            if problem:
                raise ValueError(f"{self.owner()}: {f.name} must be {problem}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Checks across fields (override; raise ValueError)."""

    @classmethod
    def owner(cls) -> str:
        return cls.__name__.removesuffix("Settings") or cls.__name__

    @classmethod
    def names(cls) -> list:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_options(cls, options: dict, what: str = None):
        """The settings from a dict of options; a name that is no field is refused with the
        valid fields."""
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise ValueError(f"{', '.join(unknown)} {'is not a setting' if len(unknown) == 1 else 'are not settings'}"
                             f" of {what or cls.owner()} (its settings: {', '.join(cls.names()) or 'none'})")
        return cls(**options)

    @classmethod
    def from_text(cls, items: dict, what: str = None):
        """The settings from ``{name: text}`` (a spec such as ``retain_weight=1``), each value
        typed by its field: a number where the field is a number, a word where it is a word."""
        unknown = sorted(set(items) - set(cls.names()))
        if unknown:
            cls.from_options(items, what)   # the refusal naming the fields
        fields = {f.name: f for f in dataclasses.fields(cls)}
        return cls.from_options({k: parse(fields[k], v, what or cls.owner()) for k, v in items.items()}, what)

    def record(self) -> dict:
        """Every setting by name: what a checkpoint, ``safemax.json`` or a results file keeps."""
        return dataclasses.asdict(self)

    def changed(self) -> dict:
        """The settings that differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}

    @classmethod
    def add_arguments(cls, parser, only=None, defaults_none: bool = True, prefix: str = "",
                      default_text: dict = None) -> None:
        """One ``--name`` option per field (``cli=True``; ``only``: these fields), typed and
        documented by its field; with ``defaults_none`` an option left out is None, so only what
        was given reaches ``from_options``; ``default_text``: ``{field: what its help calls the
        default}`` where the command's default is not the field's (a model's own)."""
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli", True) or (only is not None and f.name not in only):
                continue
            kind = _base_type(f)
            flag = "--" + prefix + f.name.replace("_", "-")
            text = f"{cls.owner()}: {f.metadata.get('help', '')}"
            if default_text and f.name in default_text:   # the command's own default replaces the field's
                text = text.split(" (Python default")[0]
            if kind is bool:   # a switch: given, it is True
                parser.add_argument(flag, dest=f.name, action="store_const", const=True,
                                    default=None if defaults_none else f.default, help=text)
                continue
            extra = dict(choices=_choices(f)) if kind is str and _choices(f) else {}
            parser.add_argument(flag, dest=f.name, type=kind, default=None if defaults_none else f.default,
                                help=text + _default(f, default_text), **extra)

    @classmethod
    def given(cls, args) -> dict:
        """The fields an argparse namespace gives (not None)."""
        return {n: getattr(args, n) for n in cls.names() if getattr(args, n, None) is not None}


def _default(f, texts: dict = None) -> str:
    if texts and f.name in texts:
        return f" (default: {texts[f.name]})"
    return "" if f.default is None else f" (default {f.default})"


def _base_type(f):
    """``float`` for ``float`` and ``Optional[float]`` (fields are declared with real types)."""
    args = [a for a in typing.get_args(f.type) if a is not type(None)]
    return args[0] if args else f.type


def _choices(f):
    return getattr(f.metadata.get("check"), "choices", None)


def assignments(items, refuse) -> dict:
    """``["key=value", ...]`` (a spec's or a command line's) → ``{key: value text}``; an item
    without ``=`` or without a key is a ``ValueError`` saying ``refuse(item)``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(refuse(item))
        out[key.strip()] = value
    return out


def json_value(text: str):
    """``text`` read as JSON where it is JSON (numbers, true/false, lists), else the text itself:
    the value of an untyped ``key=value`` (a pipeline's call argument, an erase setting)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse(f, text, what: str):
    """``text`` as field ``f``'s type (a value that is not text is returned as it is)."""
    if not isinstance(text, str):
        return text
    kind = _base_type(f)
    if text.lower() == "none" and type(None) in typing.get_args(f.type):
        return None
    if kind is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
    elif kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    else:
        return text
    raise ValueError(f"{what}: {f.name}={text}: not {'a whole number' if kind is int else kind.__name__ if kind is bool else 'a number'}")
