"""Which failed launches are the location's fault: the classifier of providers' error texts.

Owns: ``classify(text)``, which reads the output of a failed ``up`` (or a pod's events) and
says whether the launch failed because of *where* it was placed, and how:

* ``capacity``: the zone has no capacity now (AWS ``InsufficientInstanceCapacity``,
  ``InsufficientHostCapacity``, ``InsufficientCapacity``, spot ``capacity-not-available``;
  GCP ``ZONE_RESOURCE_POOL_EXHAUSTED[_WITH_DETAILS]``, ``STOCKOUT`` and "does not have enough
  resources available to fulfill the request");
* ``quota``: an account limit in that region (AWS ``MaxSpotInstanceCountExceeded``,
  ``VcpuLimitExceeded``, ``InstanceLimitExceeded``, and for a replica region's network
  ``VpcLimitExceeded``, ``InternetGatewayLimitExceeded``; GCP ``QUOTA_EXCEEDED`` /
  "Quota '...' exceeded");
* ``price``: the spot market price is above the maximum (AWS ``SpotMaxPriceTooLow``);
* ``unsupported``: the instance type is not offered in that zone (AWS ``Unsupported``, GCP
  "machine type ... does not exist in zone");
* ``unschedulable``: Kubernetes could not place the pod ("0/3 nodes are available: 3
  Insufficient nvidia.com/gpu", ``Unschedulable``).

Anything else (a bad image id, credentials, a syntax error) is None: not a location problem,
so placement does not move the replica for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("capacity", "quota", "price", "unsupported", "unschedulable")


@dataclass(frozen=True)
class LaunchFailure:
    """A launch that failed because of its location."""

    kind: str
    #: The provider's error code or phrase that matched (``InsufficientInstanceCapacity``).
    code: str
    #: The zone or region the message names, when it names one.
    where: str | None = None


# Order matters: the first match wins, and the specific codes come before generic phrases
# (a Pulumi-wrapped AWS error mentions "StatusCode: 500" and the code; GCP wraps in
# "googleapi: Error 403").
_RULES: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("price", "SpotMaxPriceTooLow", re.compile(r"\bSpotMaxPriceTooLow\b")),
    ("quota", "MaxSpotInstanceCountExceeded", re.compile(r"\bMaxSpotInstanceCountExceeded\b")),
    ("quota", "VcpuLimitExceeded", re.compile(
        r"\bVcpuLimitExceeded\b|requested more vCPU capacity than your current vCPU limit")),
    ("quota", "InstanceLimitExceeded", re.compile(r"\bInstanceLimitExceeded\b")),
    # A replica region's own network (components/clouds/aws_regions.py) at the account's
    # limits there: the region, not the replica, is the problem.
    ("quota", "VpcLimitExceeded", re.compile(
        r"\bVpcLimitExceeded\b|maximum number of VPCs has been reached")),
    ("quota", "InternetGatewayLimitExceeded", re.compile(
        r"\bInternetGatewayLimitExceeded\b")),
    ("capacity", "InsufficientInstanceCapacity", re.compile(
        r"\bInsufficientInstanceCapacity\b|"
        r"We currently do not have sufficient \S+ capacity")),
    ("capacity", "InsufficientHostCapacity", re.compile(r"\bInsufficientHostCapacity\b")),
    ("capacity", "InsufficientCapacity", re.compile(r"\bInsufficientCapacity\b")),
    ("capacity", "capacity-not-available", re.compile(
        r"\bcapacity-not-available\b|\bcapacity-oversubscribed\b")),
    ("unsupported", "Unsupported", re.compile(
        r"\bUnsupported\b.*not supported in your requested Availability Zone|"
        r"Your requested instance type \(\S+\) is not supported in your requested "
        r"Availability Zone", re.S)),
    ("capacity", "ZONE_RESOURCE_POOL_EXHAUSTED", re.compile(
        r"\bZONE_RESOURCE_POOL_EXHAUSTED(?:_WITH_DETAILS)?\b")),
    ("capacity", "STOCKOUT", re.compile(r"\bSTOCKOUT\b")),
    ("capacity", "resources-unavailable", re.compile(
        r"does not have enough resources available to fulfill the request")),
    ("quota", "QUOTA_EXCEEDED", re.compile(
        r"\bQUOTA_EXCEEDED\b|Quota '[^']+' exceeded|\bquotaExceeded\b")),
    ("unsupported", "machine-type-not-in-zone", re.compile(
        r"[Mm]achine type[^.\n]* does not exist in zone|"
        r"Invalid value for field 'resource\.machineType'.*does not exist", re.S)),
    ("unschedulable", "Insufficient", re.compile(
        r"\d+/\d+ nodes are available:[^\n]*Insufficient [\w./-]+")),
    ("unschedulable", "Unschedulable", re.compile(
        r"\bUnschedulable\b|\d+/\d+ nodes are available:[^\n]*(?:didn't match|untolerated)")),
)

_ZONE = re.compile(
    r"(?:Availability Zone you requested \(|Availability Zone \(|zones/|zone '|in region |"
    r"zone )([a-z]+(?:-[a-z0-9]+)+)")


def classify(text: str | None) -> LaunchFailure | None:
    """The location problem in a failed launch's output, or None when it is not one."""
    if not text:
        return None
    for kind, code, rule in _RULES:
        if rule.search(text):
            where = _ZONE.search(text)
            return LaunchFailure(kind, code, where.group(1) if where else None)
    return None
