"""Typed settings: what each layer reads, declared as a frozen dataclass.

``data``, ``optim`` and ``engine`` each declare the settings they take; ``Settings.of(source)``
fills one from any object whose attributes carry the same names (the config layer's parsed
values, another settings object, a SimpleNamespace in a test). The lower layers never see the
YAML or the flags, only these."""
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Settings:
    @classmethod
    def of(cls, source):
        if isinstance(source, cls):
            return source
        return cls(**{f.name: getattr(source, f.name) for f in fields(cls)})
