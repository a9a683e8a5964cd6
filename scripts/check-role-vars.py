"""Every role variable is prefixed ``farm_<role>_`` (internal ones ``__farm_<role>_``).

Checks the keys of defaults/ and vars/ files, the options of meta/argument_specs.yml, and
the names set by set_fact and register in tasks/ and handlers/. Exit 1 with one line per
offending name.
"""

from __future__ import annotations

import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


def task_names(tasks: object) -> list[str]:
    names: list[str] = []
    if not isinstance(tasks, list):
        return names
    for task in tasks:
        if not isinstance(task, dict):
            continue
        if isinstance(task.get("register"), str):
            names.append(task["register"])
        for key in ("ansible.builtin.set_fact", "set_fact"):
            if isinstance(task.get(key), dict):
                names.extend(k for k in task[key] if k != "cacheable")
        for key in ("block", "rescue", "always"):
            names.extend(task_names(task.get(key)))
    return names


def main() -> int:
    problems = []
    for role in sorted(p for p in (ROOT / "roles").glob("*") if p.is_dir()):
        prefix = "farm_%s_" % role.name
        names: list[tuple[pathlib.Path, str]] = []
        for sub in ("defaults", "vars"):
            for path in sorted((role / sub).glob("*.yml")):
                data = yaml.safe_load(path.read_text()) or {}
                names.extend((path, key) for key in data)
        specs = role / "meta" / "argument_specs.yml"
        if specs.exists():
            data = yaml.safe_load(specs.read_text()) or {}
            for entry in (data.get("argument_specs") or {}).values():
                names.extend((specs, key) for key in (entry.get("options") or {}))
        for sub in ("tasks", "handlers"):
            for path in sorted((role / sub).glob("*.yml")):
                names.extend((path, name) for name in task_names(yaml.safe_load(path.read_text())))
        for path, name in names:
            if name.startswith("ansible_") or "{{" in name:
                continue
            if not (name.startswith((prefix, "__" + prefix)) or name == prefix[:-1]):
                problems.append(
                    "%s: %s does not start with %s (or __%s)" % (path.relative_to(ROOT), name, prefix, prefix)
                )
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
