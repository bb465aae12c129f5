#!/usr/bin/python
# -*- coding: utf-8 -*-
# Part of kvmnet; MIT OR Apache-2.0 (see the collection's LICENSE).

DOCUMENTATION = r"""
---
module: kvmnet_spec
short_description: Make a KVM host's networking match a kvmnet spec
description:
  - Applies a kvmnet spec (a YAML file on the managed host) with C(kvmnet apply --json), or
    removes everything kvmnet owns with C(kvmnet destroy --json).
  - The module reports changed only when kvmnet's plan had steps, so a host that already
    matches its spec reports no change.
  - Check mode runs only the plan (C(kvmnet plan --json), or C(kvmnet destroy --dry-run
    --json) for I(state=absent)) and changes nothing.
  - Diff mode shows the plan as a diff, one line per step, removed objects as C(-) lines and
    created ones as C(+) lines; an update shows its old and new values.
  - kvmnet's errors (an invalid spec, a conflict with objects kvmnet does not own, a failed
    and rolled back apply) fail the task with kvmnet's messages.
version_added: "0.1.0"
options:
  src:
    description:
      - Path of the spec on the managed host. Required with I(state=present).
    type: path
  state:
    description:
      - C(present) applies the spec; C(absent) removes every object kvmnet made in the scope,
        gives back what it borrowed and restores the sysctls it changed (it needs no spec).
    type: str
    choices: [present, absent]
    default: present
  confirm_within:
    description:
      - Passed as C(--confirm-within); the change is reverted unless C(kvmnet confirm) comes
        in time (for changes that may cut the connection Ansible uses, such as moving the
        uplink onto a bridge). Only with I(state=present).
    type: str
  netns:
    description:
      - Operate inside this network namespace (C(--netns)); a sandbox. C(apply) creates it if
        it is missing; with I(state=absent), a namespace that does not exist has nothing to
        remove.
    type: str
  binary:
    description:
      - The kvmnet executable, a path or a name looked up on PATH.
    type: str
    default: kvmnet
notes:
  - Needs root on the managed host (C(become)), as kvmnet does.
  - kvmnet reads C(KVMNET_STATE_DIR) (default /var/lib/kvmnet); set it with the task's
    C(environment) keyword to use another state directory.
  - Supports check mode and diff mode.
requirements:
  - kvmnet on the managed host
author:
  - kvmnet contributors
"""

EXAMPLES = r"""
- name: Networks and VM ports as the spec says
  kvmnet.kvmnet.kvmnet_spec:
    src: /etc/kvmnet/kvmnet.yaml

- name: A change that may cut this connection, reverted unless confirmed within a minute
  kvmnet.kvmnet.kvmnet_spec:
    src: /etc/kvmnet/kvmnet.yaml
    confirm_within: 60s
  register: net

- name: Confirm it, from a fresh connection
  ansible.builtin.command: kvmnet confirm
  when: net is changed

- name: Try a spec in a sandbox namespace
  kvmnet.kvmnet.kvmnet_spec:
    src: /srv/lab.yaml
    netns: lab

- name: Remove everything kvmnet made in the sandbox
  kvmnet.kvmnet.kvmnet_spec:
    state: absent
    netns: lab
"""

RETURN = r"""
changes:
  description: kvmnet's steps as its C(--json) prints them (C(op), C(kind), C(name), and
    the fields of the object); empty when nothing had to change.
  returned: success
  type: list
  elements: dict
  sample: [{"op": "create", "kind": "bridge", "name": "virbr0", "network": "default", "mtu": 1500}]
plan:
  description: The steps as text, one line each (C(+) create or add, C(-) delete or remove,
    C(~) update or set).
  returned: success
  type: list
  elements: str
  sample: ["+ bridge virbr0 (mtu 1500, network default)"]
command:
  description: The kvmnet command line the module ran.
  returned: always
  type: list
  elements: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

SIGNS = {"create": "+", "add": "+", "delete": "-", "remove": "-"}
# Fields left out of a step's text: its identity, and values too long for a line (the
# nftables ruleset) or shown another way (an update's changes).
NOT_SHOWN = ("op", "kind", "name", "rules", "changes", "from", "to")


def details(step):
    name = str(step.get("name"))
    # Values the name already says (an address's address and device) are not repeated.
    parts = [
        f"{k} {v}"
        for k, v in sorted(step.items())
        if k not in NOT_SHOWN
        and v is not None
        and not isinstance(v, (dict, list))
        and str(v) not in name.split()
    ]
    return f" ({', '.join(parts)})" if parts else ""


def sides(step):
    """The step as (before, after) lines of the diff: None where the object is absent."""
    what = f"{step.get('kind')} {step.get('name')}"
    sign = SIGNS.get(step.get("op"), "~")
    if sign == "+":
        return None, what + details(step)
    if sign == "-":
        return what + details(step), None
    changes = step.get("changes")
    if isinstance(changes, dict) and changes:
        old = ", ".join(f"{k} {v.get('from')}" for k, v in sorted(changes.items()))
        new = ", ".join(f"{k} {v.get('to')}" for k, v in sorted(changes.items()))
        return f"{what} ({old})", f"{what} ({new})"
    return f"{what}: {step.get('from')}", f"{what}: {step.get('to')}"


def plan_lines(steps):
    lines = []
    for step in steps:
        before, after = sides(step)
        sign = SIGNS.get(step.get("op"), "~")
        if sign == "~":
            lines.append(f"~ {before} -> {after}")
        else:
            lines.append(f"{sign} {before or after}")
    return lines


def diff_of(steps, before_header, after_header):
    before, after = [], []
    for step in steps:
        b, a = sides(step)
        if b is not None:
            before.append(b + "\n")
        if a is not None:
            after.append(a + "\n")
    return {
        "before_header": before_header,
        "after_header": after_header,
        "before": "".join(before),
        "after": "".join(after),
    }


def error_text(data, stderr):
    """kvmnet's own words for a failure: every error of an invalid spec with its place, or
    the one error message, else its stderr."""
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(
                f"{e.get('path')}:{e.get('line')}:{e.get('column')}: {e.get('message')}"
                for e in errors
            )
        if data.get("error"):
            return str(data["error"])
    return stderr.strip() or "no message"


def run(module, cmd):
    rc, out, err = module.run_command(cmd)
    try:
        data = json.loads(out) if out.strip() else None
    except ValueError:
        data = None
    if rc != 0:
        kind = data.get("kind") if isinstance(data, dict) else None
        module.fail_json(
            msg=f"kvmnet failed ({kind or 'exit ' + str(rc)}): {error_text(data, err)}",
            rc=rc,
            kind=kind,
            errors=data.get("errors", []) if isinstance(data, dict) else [],
            stdout=out,
            stderr=err,
            command=cmd,
        )
    if not isinstance(data, dict) or not isinstance(data.get("changes"), list):
        module.fail_json(msg="kvmnet printed no plan", stdout=out, stderr=err, command=cmd)
    return data["changes"]


def command(module):
    p = module.params
    binary = p["binary"]
    if "/" not in binary:
        binary = module.get_bin_path(binary, required=True)
    scope = ["--netns", p["netns"]] if p["netns"] else []
    if p["state"] == "absent":
        dry = ["--dry-run"] if module.check_mode else []
        return [binary, "destroy", "--json"] + dry + scope
    verb = "plan" if module.check_mode else "apply"
    cmd = [binary, verb, p["src"], "--json"] + scope
    if p["confirm_within"] and not module.check_mode:
        cmd += ["--confirm-within", p["confirm_within"]]
    return cmd


def main():
    module = AnsibleModule(
        argument_spec={
            "src": {"type": "path"},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "confirm_within": {"type": "str"},
            "netns": {"type": "str"},
            "binary": {"type": "str", "default": "kvmnet"},
        },
        required_if=[("state", "present", ["src"])],
        supports_check_mode=True,
    )
    p = module.params
    scope = f"netns {p['netns']}" if p["netns"] else "host"
    # kvmnet refuses a namespace that does not exist for destroy; nothing is there to remove.
    if p["state"] == "absent" and p["netns"] and not os.path.exists(f"/run/netns/{p['netns']}"):
        module.exit_json(changed=False, changes=[], plan=[], command=[])
    cmd = command(module)
    steps = run(module, cmd)
    after = p["src"] if p["state"] == "present" else "nothing (destroy)"
    result = {
        "changed": bool(steps),
        "changes": steps,
        "plan": plan_lines(steps),
        "command": cmd,
    }
    if module._diff:
        result["diff"] = diff_of(steps, f"kvmnet {scope} (live)", after)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
