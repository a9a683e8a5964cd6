"""The roles' README files and their argument specs cannot drift apart.

Each ``roles/<role>/README.md`` holds, between the markers below, the variables table rendered
from ``roles/<role>/meta/argument_specs.yml``; the rest of the README is written by hand and
must have the sections a site admin looks for (``## Requirements``, ``## Example``).

    python scripts/role-readmes.py           # check (``make lint``): exit 1 when a README is missing,
                                      # lacks a section or its table is stale
    python scripts/role-readmes.py --write   # re-render the tables in place

The check also compares the spec with ``defaults/main.yml``: every default variable is
documented, and a default given in both places is the same value.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Any, Dict, List

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN = "<!-- BEGIN variables: generated from meta/argument_specs.yml by scripts/role-readmes.py --write -->"
END = "<!-- END variables -->"
SECTIONS = ("## Requirements", "## Example", "## Variables")
MARKUP = [
    (re.compile(r"\bL\(([^,()]+),\s*([^()]+)\)"), r"[\1](\2)"),
    (re.compile(r"\bU\(([^()]+)\)"), r"<\1>"),
    (re.compile(r"\bI\(([^()]+)\)"), r"*\1*"),
    (re.compile(r"\b(?:O|V|C|M|RV|E|P)\(([^()]+)\)"), r"`\1`"),
]


def plain(text: Any) -> str:
    if isinstance(text, list):
        text = " ".join(str(t) for t in text)
    out = str(text or "").strip()
    for pattern, repl in MARKUP:
        out = pattern.sub(repl, out)
    return out.replace("|", "\\|").replace("\n", " ")


def show_default(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
    if len(text) > 60:
        return "see `defaults/main.yml`"
    return "`%s`" % text.replace("|", "\\|") if text != "" else '`""`'


def show_type(option: Dict[str, Any]) -> str:
    kind = str(option.get("type", "str"))
    if kind == "list" and option.get("elements"):
        kind = "list of %s" % option["elements"]
    if option.get("choices"):
        kind += " (%s)" % ", ".join("`%s`" % c for c in option["choices"])
    return kind


def rows(options: Dict[str, Any], prefix: str = "") -> List[str]:
    out = []
    for name, option in options.items():
        option = option or {}
        full = prefix + name
        required = "yes" if option.get("required") else ""
        out.append(
            "| `%s` | %s | %s | %s | %s |"
            % (full, show_type(option), required, show_default(option.get("default")), plain(option.get("description")))
        )
        if option.get("options"):
            sep = "[]." if option.get("type") == "list" else "."
            out += rows(option["options"], full + sep)
    return out


def render(specs: Dict[str, Any]) -> str:
    lines = [BEGIN, ""]
    for entry, spec in specs.items():
        spec = spec or {}
        lines.append("### Entry point `%s`: %s" % (entry, plain(spec.get("short_description"))))
        lines.append("")
        options = spec.get("options") or {}
        if not options:
            lines += ["No variables.", ""]
            continue
        lines.append("| variable | type | required | default | description |")
        lines.append("| --- | --- | --- | --- | --- |")
        lines += rows(options)
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def check_defaults(role: pathlib.Path, specs: Dict[str, Any]) -> List[str]:
    problems = []
    path = role / "defaults" / "main.yml"
    if not path.exists():
        return problems
    defaults = yaml.safe_load(path.read_text()) or {}
    documented: Dict[str, Any] = {}
    for spec in specs.values():
        documented.update((spec or {}).get("options") or {})
    for name, value in defaults.items():
        if name not in documented:
            problems.append("%s: %s is not in meta/argument_specs.yml" % (path.relative_to(ROOT), name))
            continue
        spec_default = (documented[name] or {}).get("default")
        if spec_default is None or (isinstance(value, str) and "{{" in value):
            continue
        if spec_default != value:
            problems.append(
                "%s: %s defaults to %r but meta/argument_specs.yml says %r"
                % (path.relative_to(ROOT), name, value, spec_default)
            )
    return problems


def main(argv: List[str]) -> int:
    write = "--write" in argv
    problems: List[str] = []
    roles = sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir())
    for role in roles:
        spec_path = role / "meta" / "argument_specs.yml"
        readme = role / "README.md"
        rel = readme.relative_to(ROOT)
        if not spec_path.exists():
            problems.append("%s: no meta/argument_specs.yml" % role.relative_to(ROOT))
            continue
        specs = (yaml.safe_load(spec_path.read_text()) or {}).get("argument_specs") or {}
        problems += check_defaults(role, specs)
        if not readme.exists():
            problems.append("%s: missing (Galaxy refuses a role without a README)" % rel)
            continue
        text = readme.read_text()
        for section in SECTIONS:
            if not re.search(r"^%s\b" % re.escape(section), text, re.MULTILINE):
                problems.append("%s: no %r section" % (rel, section))
        if BEGIN not in text or END not in text:
            problems.append("%s: no generated variables table (markers %r ... %r)" % (rel, BEGIN, END))
            continue
        head, rest = text.split(BEGIN, 1)
        _old, tail = rest.split(END, 1)
        new = head + render(specs) + tail
        if new != text:
            if write:
                readme.write_text(new)
                print("%s: variables table re-rendered" % rel)
            else:
                problems.append(
                    "%s: variables table is stale; run .venv/bin/python scripts/role-readmes.py --write" % rel
                )
    for line in problems:
        print(line)
    if not problems:
        print("role READMEs: %d roles, every table matches meta/argument_specs.yml" % len(roles))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
