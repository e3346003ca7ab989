#!/usr/bin/env python3
"""TOML checks for openwrt-feed/tests/run.sh (Python 3.11+, tomllib).

  tomlcheck.py equal GOT WANT          parsed GOT == parsed WANT (prints a diff)
  tomlcheck.py documented GOT DOC_MD [TABLE.KEY...]
                                       every key docs/configuration.md lists
                                       for a table is present in GOT (for
                                       [[peer]]: in at least one peer), but
                                       the TABLE.KEYs given (not for routers)
  tomlcheck.py get FILE KEY.PATH       prints one value (peer[N].key allowed)

Exit status 0 when the check holds, 1 with a message when not.
"""

import re
import sys
import tomllib


def load(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


def flatten(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix[:-1]}[{i}]."))
        return out
    return {prefix[:-1]: value}


def equal(got_path, want_path):
    got, want = flatten(load(got_path)), flatten(load(want_path))
    problems = []
    for k in sorted(set(got) | set(want)):
        if k not in got:
            problems.append(f"missing {k} (want {want[k]!r})")
        elif k not in want:
            problems.append(f"unexpected {k} = {got[k]!r}")
        elif got[k] != want[k] or type(got[k]) is bool and type(want[k]) is not bool:
            problems.append(f"{k}: got {got[k]!r}, want {want[k]!r}")
    for p in problems:
        print(p)
    return 1 if problems else 0


def documented_keys(doc_path):
    """{table: [keys]} from the `## \\`[table]\\`` sections' key tables."""
    tables, current = {}, None
    with open(doc_path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^## `\[\[?([a-z_]+)\]\]?`", line)
            if m:
                current = m.group(1)
                tables.setdefault(current, [])
                continue
            if line.startswith("## "):
                current = None
                continue
            m = re.match(r"^\| `([a-z_]+)` \|", line)
            if current and m:
                tables[current].append(m.group(1))
    return tables


def documented(got_path, doc_path, exempt=()):
    got = load(got_path)
    tables = documented_keys(doc_path)
    if not tables or sum(len(v) for v in tables.values()) < 20:
        print(f"could not read the key tables of {doc_path}: {tables}")
        return 1
    missing = []
    for table, keys in tables.items():
        value = got.get(table)
        if isinstance(value, list):  # [[peer]]
            present = set().union(*(p.keys() for p in value)) if value else set()
        elif isinstance(value, dict):
            present = set(value)
        else:
            present = set()
        missing += [
            f"{table}.{k}" for k in keys if k not in present and f"{table}.{k}" not in exempt
        ]
    for m in missing:
        print(f"documented key not produced from UCI: {m}")
    n = sum(len(v) for v in tables.values())
    if not missing:
        print(f"all {n} documented keys present")
    return 1 if missing else 0


def get(path, dotted):
    value = load(path)
    for part in dotted.split("."):
        m = re.match(r"^([a-z_]+)\[(\d+)\]$", part)
        if m:
            value = value[m.group(1)][int(m.group(2))]
        else:
            value = value[part]
    print(value)
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "equal":
        return equal(argv[2], argv[3])
    if len(argv) >= 4 and argv[1] == "documented":
        return documented(argv[2], argv[3], tuple(argv[4:]))
    if len(argv) == 4 and argv[1] == "get":
        return get(argv[2], argv[3])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
