"""Every field `lazarus config show` lists is read somewhere in lazarus/ (a field nothing reads is an option
that is parsed and ignored).

The check is a grep over the modules other than config.py, honest but coarse: field `c` of section `b`
counts as read when `.b.c` occurs (`cfg.rl.delta`), or `x.c` where `x` is bound to the section somewhere
(`rl = cfg.rl`, `for spec in cfg.rl.rewards`, `spec = cfg.data.generate_math`), or one of the few
parameter names in ALIASES (functions handed a section: `resolve_reward_specs(specs)` reads `spec.model`).
An unrelated variable of the same name can still be matched; a miss is never excused.
Fields whose reader is being written
elsewhere right now are listed in PENDING with the reason; the test also fails when a pending field has
become read, so the list cannot go stale.
"""

import re
from pathlib import Path

from pydantic import BaseModel

from lazarus.config import Config

PACKAGE = Path(__file__).resolve().parents[3] / "lazarus"

#: dotted key -> why it is not read yet (empty: every field has its reader).
PENDING: dict[str, str] = {}


#: section -> parameter names under which functions outside config.py receive it (grep cannot see the binding).
ALIASES = {"rewards": ["spec"], "tasks": ["task"], "optim": ["cfg"],  # build_optimizer(cfg, ...)
           "env": ["settings"]}  # env/build.py: settings = EnvConfig of the task's env


def fields(section: type[BaseModel], prefix: str = ""):
    """(dotted key, field name) of every leaf field, descending into sections and lists of sections."""
    for name, field in section.model_fields.items():
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        models = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if models:
            yield from fields(models[0], f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", name


def source_text() -> str:
    return "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "config.py")


def is_read(key: str, text: str) -> bool:
    *sections, name = key.split(".")
    if not sections:
        return re.search(rf"\bcfg\.{name}\b|config\.{name}\b", text) is not None
    parent = sections[-1]
    if re.search(rf"\.{parent}\.{name}\b", text):
        return True
    bound = re.findall(rf"\b(\w+) = [\w.]*\.{parent}\b(?!\.)", text)
    bound += re.findall(rf"for (?:\w+, )?(\w+) in (?:enumerate\()?[\w.]*\.{parent}\b", text)
    aliases = set(bound) | set(ALIASES.get(parent, []))
    return any(re.search(rf"\b{alias}\.{name}\b", text) for alias in aliases)


def test_every_config_field_is_read_outside_config_py():
    text = source_text()
    unread = sorted(key for key, name in fields(Config) if key not in PENDING and not is_read(key, text))

    assert unread == [], f"config fields nothing reads (wire them, remove them, or refuse them): {unread}"


def test_pending_fields_exist_and_are_still_unread():
    keys = {key for key, _ in fields(Config)}
    text = source_text()

    assert sorted(set(PENDING) - keys) == []
    now_read = sorted(key for key in PENDING if is_read(key, text))
    assert now_read == [], f"these fields are read now; remove them from PENDING: {now_read}"
