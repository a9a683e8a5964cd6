"""The commands the README and the docs show still work, as written, from the repository root.

Runs with the ansible configuration a person who cloned the repository gets (the root
``ansible.cfg``; every ANSIBLE_* variable of the caller is dropped), after ``make link``:

- ``ansible-doc`` renders every module and inventory plugin of ``plugins/`` and every role (``ansible-doc``
  exits 0 even when it cannot find a plugin, so the output is checked);
- every ``ansible-playbook`` command in a fenced code block of README.md, docs/*.md and
  roles/*/README.md runs with ``--syntax-check`` added. A site inventory that the repository
  does not hold (``-i inventory``) is replaced by the demo's inventory; a playbook, an
  ``-e @file`` or an inventory under ``playbooks/`` must exist as written;
- every playbook under ``playbooks/`` passes ``--syntax-check``.

Exit 1 with one line per failure.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Dict, Iterator, List, Tuple

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
DEMO_INVENTORY = "playbooks/inventory/localhost.yml"
FENCE = re.compile(r"^```(\w*)\s*$")


def clean_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["PATH"] = "%s%s%s" % (BIN, os.pathsep, env.get("PATH", ""))
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


def documented_commands() -> Iterator[Tuple[str, str]]:
    """(where, command line) of every ansible-playbook command in a fenced code block."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted(ROOT.glob("roles/*/README.md"))]
    for path in files:
        lines = path.read_text().splitlines()
        in_block = False
        pending = ""
        start = 0
        for number, line in enumerate(lines, start=1):
            if FENCE.match(line.strip()):
                in_block = not in_block
                pending = ""
                continue
            if not in_block:
                continue
            text = line.split(" #", 1)[0].rstrip() if not pending else line.rstrip()
            text = re.sub(r"^\s*\$\s+", "", text) if not pending else text
            if not pending:
                start = number
            if text.endswith("\\"):
                pending += text[:-1] + " "
                continue
            command = (pending + text).strip()
            pending = ""
            if re.match(r"^([A-Z_]+=\S+\s+)*(\.venv/bin/)?ansible-playbook\s", command):
                yield "%s:%d" % (path.relative_to(ROOT), start), command


def check_command(where: str, command: str) -> List[str]:
    try:
        argv = shlex.split(re.sub(r"<[^<>]*>", "placeholder", command))  # <list uuid> and the like
    except ValueError as exc:
        return ["%s: cannot parse %r: %s" % (where, command, exc)]
    env = clean_env()
    while argv and re.match(r"^[A-Z_]+=", argv[0]):
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    problems = []
    out: List[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-i", "--inventory") and i + 1 < len(argv):
            inventory = argv[i + 1]
            if not (ROOT / inventory).exists():
                if inventory.startswith("playbooks/"):
                    problems.append("%s: inventory %s does not exist" % (where, inventory))
                inventory = DEMO_INVENTORY  # the site's own inventory: any valid one will do
            out += [arg, inventory]
            i += 2
            continue
        if arg in ("-e", "--extra-vars") and i + 1 < len(argv) and argv[i + 1].startswith("@"):
            varfile = argv[i + 1][1:]
            if varfile.startswith("playbooks/") and not (ROOT / varfile).exists():
                problems.append("%s: %s does not exist" % (where, argv[i + 1]))
            if not (ROOT / varfile).exists():
                i += 2  # a site's own variables file
                continue
        if arg.endswith(".yml") and "/" in arg and not arg.startswith("@") and not (ROOT / arg).exists():
            problems.append("%s: playbook %s does not exist" % (where, arg))
        out.append(arg)
        i += 1
    if not any(a in ("-i", "--inventory") for a in argv):
        problems.append("%s: no -i: the play would match no host (only the implicit localhost)" % where)
    if out and out[0] == "ansible-playbook":
        out[0] = str(BIN / "ansible-playbook")
    if "--check" in out:
        out.remove("--check")
    if problems:
        return problems
    proc = subprocess.run(out + ["--syntax-check"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or "[ERROR]" in proc.stderr:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return ["%s: `%s --syntax-check` failed: %s" % (where, command, " / ".join(tail))]
    return []


def check_plugin_docs() -> Tuple[int, List[str]]:
    problems = []
    count = 0
    for kind, folder in (("module", "modules"), ("inventory", "inventory"), ("role", "roles")):
        if kind == "role":
            names = sorted("batchvirt.farm." + p.name for p in (ROOT / "roles").iterdir() if p.is_dir())
        else:
            names = sorted(
                "batchvirt.farm." + p.stem for p in (ROOT / "plugins" / folder).glob("*.py") if p.stem != "__init__"
            )
        if not names:
            continue
        count += len(names)
        proc = subprocess.run(
            [str(BIN / "ansible-doc"), "-t", kind, *names],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or "[WARNING]" in proc.stderr or "[ERROR]" in proc.stderr:
            problems.append("ansible-doc -t %s: %s" % (kind, proc.stderr.strip().splitlines()[:3]))
        for name in names:
            header = r"^> %s:? \*?%s\b" % (kind.upper(), re.escape(name))
            if not re.search(header, proc.stdout, re.MULTILINE):
                problems.append("ansible-doc -t %s %s renders nothing from the repository root" % (kind, name))
    return count, problems


def main() -> int:
    if not (ROOT / "build/collections/ansible_collections/batchvirt/farm").exists():
        print("run `make link` first: ansible.cfg finds the collection under build/collections")
        return 1
    count, problems = check_plugin_docs()
    commands = list(documented_commands())
    for where, command in commands:
        problems += check_command(where, command)
    playbooks = sorted(p for p in (ROOT / "playbooks").glob("*.yml"))
    for playbook in playbooks:
        problems += check_command(
            str(playbook.relative_to(ROOT)),
            "ansible-playbook -i %s %s" % (DEMO_INVENTORY, playbook.relative_to(ROOT)),
        )
    for line in problems:
        print(line)
    print(
        "docs commands: %d plugins and roles rendered by ansible-doc, %d documented ansible-playbook commands and "
        "%d playbooks pass --syntax-check from the repository root; %d problems"
        % (count, len(commands), len(playbooks), len(problems))
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
