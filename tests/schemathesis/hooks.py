"""What the Nereid API's OpenAPI document cannot say in JSON Schema, told to
schemathesis so that the requests it calls valid are valid.

* Custom string formats (the document names them; here is how to make one):
  ``ipv4-cidr`` (no host bits), ``ssh-public-key`` (a well-formed OpenSSH
  line), ``fwrule`` (Triton's firewall rule language).
* Rules between fields, applied to positive cases only (a negative case must
  stay invalid): a network's gateway and provision range lie inside its
  subnet; an image's requirements agree with its type; a global firewall rule
  has no owner; an image upload's ``sha256`` is the hash of its body.

Nothing here weakens a check: the server still answers every request, and
every failure schemathesis finds fails the test.
"""

import base64
import hashlib
import ipaddress
import struct

import schemathesis
from hypothesis import strategies as st

# -- formats ---------------------------------------------------------------

cidrs = st.builds(
    lambda addr, prefix: str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False)),
    st.ip_addresses(v=4),
    st.integers(8, 30),
)
schemathesis.openapi.format("ipv4-cidr", cidrs)


def _ssh_string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


ssh_keys = st.builds(
    lambda key, comment: " ".join(
        filter(
            None,
            [
                "ssh-ed25519",
                base64.b64encode(_ssh_string(b"ssh-ed25519") + _ssh_string(key)).decode(),
                comment,
            ],
        )
    ),
    st.binary(min_size=32, max_size=32),
    st.from_regex(r"\A[A-Za-z0-9@._-]{0,24}\Z"),
)
schemathesis.openapi.format("ssh-public-key", ssh_keys)

ipv4 = st.ip_addresses(v=4).map(str)
tag_name = st.from_regex(r"\Ak[a-z0-9_]{0,8}\Z")
target = st.one_of(
    st.uuids().map(lambda u: f"vm {u}"),
    ipv4.map(lambda a: f"ip {a}"),
    cidrs.map(lambda c: f"subnet {c}"),
    tag_name.map(lambda k: f"tag {k}"),
    st.tuples(tag_name, st.from_regex(r"\Av[a-z0-9]{0,8}\Z")).map(lambda kv: f'tag {kv[0]} = "{kv[1]}"'),
)
targets = st.one_of(
    st.just("any"),
    st.just("all vms"),
    target,
    st.lists(target, min_size=1, max_size=4).map(lambda ts: "(" + " OR ".join(ts) + ")"),
)
port = st.one_of(
    st.integers(1, 65535).map(str),
    st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(
        lambda ab: f"{min(ab)}-{max(ab)}"
    ),
)
single_port = st.integers(1, 65535).map(str)
ports = st.one_of(
    st.just("all"),
    st.just("PORT all"),
    single_port.map(lambda p: f"PORT {p}"),
    st.lists(port, min_size=1, max_size=4).map(lambda ps: "PORTS " + ", ".join(ps)),
    st.lists(single_port, min_size=1, max_size=4).map(
        lambda ps: "(" + " AND ".join(f"PORT {p}" for p in ps) + ")"
    ),
)
icmp_type = st.one_of(
    st.just("TYPE all"),
    st.integers(0, 255).map(lambda t: f"TYPE {t}"),
    st.tuples(st.integers(0, 255), st.integers(0, 255)).map(lambda tc: f"TYPE {tc[0]} CODE {tc[1]}"),
)
protocol = st.one_of(
    st.tuples(st.sampled_from(["tcp", "udp"]), ports).map(" ".join),
    st.just("icmp all"),
    icmp_type.map(lambda t: f"icmp {t}"),
    st.lists(icmp_type, min_size=1, max_size=3).map(lambda ts: "icmp (" + " AND ".join(ts) + ")"),
)
rules = st.builds(
    lambda f, t, action, proto, prio: f"FROM {f} TO {t} {action} {proto}{prio}",
    targets,
    targets,
    st.sampled_from(["ALLOW", "BLOCK", "allow", "block"]),
    protocol,
    st.one_of(st.just(""), st.integers(0, 100).map(lambda p: f" PRIORITY {p}")),
)
schemathesis.openapi.format("fwrule", rules)

# -- rules between fields (positive cases only) ----------------------------


def _positive(case) -> bool:
    meta = getattr(case, "meta", None)
    if meta is None:
        return False
    return meta.generation.mode.is_positive


def _network(body: dict) -> None:
    try:
        net = ipaddress.ip_network(body.get("subnet"), strict=True)
    except (TypeError, ValueError):
        return
    hosts = net.num_addresses - 2
    first = int(net.network_address) + 1
    size = min(hosts, 65536)
    body["provision_start"] = str(ipaddress.ip_address(first))
    body["provision_end"] = str(ipaddress.ip_address(first + size - 1))
    if body.get("gateway") is not None:
        body["gateway"] = str(ipaddress.ip_address(first))


def _fabric_network(body: dict) -> None:
    _network(body)
    # NAT goes out from the gateway: none, no NAT.
    if body.get("internet_nat") and body.get("gateway") is None:
        body["internet_nat"] = None


def _instance(body: dict) -> None:
    # One NIC option per NIC at most, in the order of the networks.
    opts, nets = body.get("nic_options"), body.get("networks")
    if isinstance(opts, list) and isinstance(nets, list):
        del opts[len(nets):]


def _image(body: dict) -> None:
    req = body.get("requirements")
    if not isinstance(req, dict):
        return
    req.pop("brand", None)
    lo, hi = req.get("min_ram_mb"), req.get("max_ram_mb")
    if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
        req["min_ram_mb"], req["max_ram_mb"] = hi, lo


def _fwrule(body: dict) -> None:
    if body.get("global"):
        body["owner"] = None


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if not _positive(case):
        return
    path, method = case.operation.path, case.operation.method.upper()
    body = case.body if isinstance(case.body, dict) else None
    if method == "POST" and path == "/v1/networks" and body is not None:
        _network(body)
    elif method == "POST" and path == "/v1/fabrics/vlans/{vlan_id}/networks" and body is not None:
        _fabric_network(body)
    elif method == "POST" and path == "/v1/instances" and body is not None:
        _instance(body)
    elif method == "POST" and path == "/v1/images" and body is not None:
        _image(body)
    elif method == "POST" and path == "/v1/fwrules" and body is not None:
        _fwrule(body)
    elif method == "PUT" and path == "/v1/images/{id}/file" and case.query and "sha256" in case.query:
        data = case.body
        if hasattr(data, "data"):
            data = data.data
        if isinstance(data, str):
            data = data.encode()
        if isinstance(data, (bytes, bytearray)):
            case.query["sha256"] = hashlib.sha256(data).hexdigest()
