"""Replica registration credentials: what a replica may present instead of the admin token.

The admin token (``token``) opens the whole admin API and never leaves the controller (and
the operator). A replica gets a credential of its own: an HMAC-SHA256, under a key derived
from the admin token (so only the controller, or whoever deploys it, can make one), of its
*scope*:

* ``id:<replica id>`` (VM replicas: one credential per replica), or
* ``group:<group>``: ids ``<group>-<n>``. The replica groups of a service are its kinds
  (``spot``, ``ondemand``) and their later generations (``ondemand-g2``); a kind's credential
  covers every generation of it, so a rollout changes no credential. Kubernetes pods of one
  StatefulSet share a pod template, so a pod's credential names its kind at most; VM
  replicas get theirs the same way.

With it a replica may register, heartbeat and deregister the ids of its scope, and only from
the address its registration names (``lb_agent.admin``); nothing else. The key cannot be
recovered from a credential, nor the admin token from the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from lb_agent.control.fleet import parse_group

#: The env var a replica's registration credential arrives in (Kubernetes pods, local runs).
CREDENTIAL_ENV = "SKYFORM_REPLICA_CREDENTIAL"
#: What a credential looks like on the wire: ``Authorization: Bearer skr1.<hex>``.
PREFIX = "skr1."
_KEY_LABEL = b"skyform replica registration key v1"
_GROUP_INDEX = re.compile(r"^(?P<group>.+)-(?P<index>[0-9]+)$")


def registration_key(admin_token: str) -> bytes:
    """The key replica credentials are made with (derived from the admin token)."""
    return hmac.new(admin_token.encode(), _KEY_LABEL, hashlib.sha256).digest()


def credential(key: bytes, scope: str) -> str:
    """The credential of ``scope`` (``id:<replica id>`` or ``group:<group>``)."""
    return PREFIX + hmac.new(key, scope.encode(), hashlib.sha256).hexdigest()


def replica_credential(admin_token: str, replica_id: str) -> str:
    """The credential of one replica id (VM replicas)."""
    return credential(registration_key(admin_token), f"id:{replica_id}")


def group_credential(admin_token: str, group: str) -> str:
    """The credential of a replica group's ids ``<group>-<n>`` (Kubernetes pods)."""
    return credential(registration_key(admin_token), f"group:{group}")


def scopes(replica_id: str) -> list[str]:
    """The scopes whose credential covers ``replica_id``: its own, its group's and, for a
    later generation's group, its kind's."""
    out = [f"id:{replica_id}"]
    m = _GROUP_INDEX.match(replica_id)
    if m:
        out.append(f"group:{m['group']}")
        kind = parse_group(m["group"])
        if kind is not None and kind[0] != m["group"]:
            out.append(f"group:{kind[0]}")
    return out


def covers(key: bytes, presented: str, replica_id: str) -> bool:
    """True when ``presented`` is a credential of a scope that covers ``replica_id``."""
    if not presented.startswith(PREFIX):
        return False
    ok = False
    for scope in scopes(replica_id):  # no early exit: the same work whatever matches
        ok |= hmac.compare_digest(presented.encode(), credential(key, scope).encode())
    return ok
