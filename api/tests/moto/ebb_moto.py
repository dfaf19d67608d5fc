#!/usr/bin/env python3
"""moto's EC2 emulator, extended with DescribeReservedInstances, for Ebb's tests.

moto 5.2.5 implements DescribeInstances, DescribeInstanceTypes and tags but
answers DescribeReservedInstances with HTTP 500 "not yet implemented". This
launcher imports moto, adds

* a reserved-instances backend (per account and region, in memory),
* a DescribeReservedInstances response in EC2's real XML shape (the
  `reservedInstancesSet` of `item`s documented in the EC2 API reference; the
  element names are those aws-sdk-ec2's generated deserializer matches), and
* a test-only seeding endpoint, `POST /ebb-test/seed`, that stores reserved
  instances and launches tagged instances through stock moto's RunInstances,
* a test-only fault endpoint, `POST /ebb-test/fail`, that makes the next N
  EC2 requests of a region (optionally of one action) fail with an EC2 error such as
  RequestLimitExceeded (EC2's XML error shape), so the SDK's retries and
  Ebb's error handling meet a real throttling answer,

and then serves moto's threaded (werkzeug) server on a loopback port. Every
other request goes to stock moto unchanged, so the Rust SDK parses real EC2
XML throughout.

Usage: ebb_moto.py [--host 127.0.0.1] [--port 0] [--port-file PATH]

With `--port 0` the OS picks a free port; the port is printed and, with
`--port-file`, written to that file once the server accepts connections.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import ipaddress
import json
import os
import re
import sys
import threading
import urllib.parse
import uuid
from typing import Any
from xml.sax.saxutils import escape

import moto
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.responses.reserved_instances import ReservedInstances
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

# The version the tests were written against; other versions may differ in
# what they implement (a later moto may implement the call itself).
MOTO_VERSION = "5.2.5"

# The EC2 API version whose XML namespace real responses carry.
EC2_XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"

# States EC2 reports for reserved instances (ReservedInstanceState).
RI_STATES = {
    "payment-pending",
    "active",
    "payment-failed",
    "retired",
    "queued",
    "queued-deleted",
}

# One year, EC2's shorter reservation term, in seconds.
ONE_YEAR_SECS = 31_536_000


class ReservedInstancesStore:
    """Reserved instances per (account, region), as the seeding endpoint stored them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def add(self, account: str, region: str, ri: dict[str, Any]) -> None:
        with self._lock:
            self._items.setdefault((account, region), []).append(ri)

    def clear(self, account: str, region: str) -> None:
        with self._lock:
            self._items.pop((account, region), None)

    def list(self, account: str, region: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items.get((account, region), []))


STORE = ReservedInstancesStore()


class Faults:
    """EC2 errors armed per region (and optionally per action) by `POST /ebb-test/fail`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[str, dict[str, Any]] = {}

    def arm(self, region: str, code: str, status: int, count: int, action: str | None) -> None:
        with self._lock:
            self._armed[region] = {"code": code, "status": status, "count": count, "action": action}

    def clear(self, region: str) -> None:
        with self._lock:
            self._armed.pop(region, None)

    def armed(self, region: str) -> bool:
        with self._lock:
            return self._armed.get(region, {}).get("count", 0) > 0

    def take(self, region: str, action: str) -> tuple[str, int] | None:
        """The error to answer this request with, if one is armed for it."""
        with self._lock:
            armed = self._armed.get(region)
            if not armed or armed["count"] <= 0:
                return None
            if armed["action"] and armed["action"] != action:
                return None
            armed["count"] -= 1
            return armed["code"], armed["status"]


FAULTS = Faults()

# SigV4's credential scope names the region: `Credential=KEY/DATE/REGION/ec2/...`.
SIGV4_REGION = re.compile(r"Credential=[^/]+/[0-9]+/([a-z0-9-]+)/")


def ec2_error_xml(code: str, message: str) -> str:
    """An error body in EC2's shape (`Response/Errors/Error`, then `RequestID`)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Errors><Error><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    )


def parse_time(value: str, field: str) -> dt.datetime:
    """An RFC 3339 timestamp (with `Z` or an offset) as an aware datetime."""
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise ValueError(f"`{field}`: not an RFC 3339 timestamp: {value!r}") from e
    if parsed.tzinfo is None:
        raise ValueError(f"`{field}`: timestamp needs a UTC offset: {value!r}")
    return parsed.astimezone(dt.timezone.utc)


def format_time(t: dt.datetime) -> str:
    """EC2's timestamp format: `2025-01-31T12:00:00.000Z`."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{t.microsecond // 1000:03d}Z"
    )


def state_at(ri: dict[str, Any], now: dt.datetime) -> str:
    """The state EC2 would report now.

    A seeded `state` is reported as is. Otherwise the state follows the
    clock as on EC2: `queued` before the start, `active` during the term,
    `retired` once the end has passed.
    """
    if ri.get("state"):
        return ri["state"]
    if now < ri["start"]:
        return "queued"
    if now >= ri["end"]:
        return "retired"
    return "active"


def seed_reserved_instance(account: str, region: str, spec: dict[str, Any]) -> str:
    """Validates one seeded reservation and stores it; returns its id."""
    known = {
        "id",
        "instance_type",
        "instance_count",
        "availability_zone",
        "start",
        "end",
        "state",
        "offering_class",
        "offering_type",
    }
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"unknown reserved instance fields: {sorted(unknown)}")
    now = dt.datetime.now(dt.timezone.utc)
    start = parse_time(spec["start"], "start") if "start" in spec else now - dt.timedelta(days=1)
    end = (
        parse_time(spec["end"], "end")
        if "end" in spec
        else start + dt.timedelta(seconds=ONE_YEAR_SECS)
    )
    if end <= start:
        raise ValueError("`end` must be after `start`")
    state = spec.get("state")
    if state is not None and state not in RI_STATES:
        raise ValueError(f"`state`: not a reserved instance state: {state!r}")
    zone = spec.get("availability_zone")
    if zone is not None and not zone.startswith(region):
        raise ValueError(f"`availability_zone` {zone!r} is not in region {region!r}")
    count = spec.get("instance_count", 1)
    if not isinstance(count, int) or count < 1:
        raise ValueError("`instance_count` must be a positive integer")
    offering_class = spec.get("offering_class", "standard")
    if offering_class not in ("standard", "convertible"):
        raise ValueError(f"`offering_class`: {offering_class!r}")
    ri = {
        "id": spec.get("id") or str(uuid.uuid4()),
        "instance_type": spec["instance_type"],
        "instance_count": count,
        "availability_zone": zone,
        "start": start,
        "end": end,
        "state": state,
        "offering_class": offering_class,
        "offering_type": spec.get("offering_type", "No Upfront"),
    }
    STORE.add(account, region, ri)
    return ri["id"]


def reserved_instance_xml(ri: dict[str, Any], now: dt.datetime) -> str:
    """One `item` of `reservedInstancesSet`, element for element as EC2 sends it."""
    duration = int((ri["end"] - ri["start"]).total_seconds())
    zone = ri["availability_zone"]
    # Regional reservations carry no availabilityZone element at all.
    zone_xml = f"<availabilityZone>{escape(zone)}</availabilityZone>" if zone else ""
    scope = "Availability Zone" if zone else "Region"
    return (
        "<item>"
        f"<reservedInstancesId>{escape(ri['id'])}</reservedInstancesId>"
        f"<instanceType>{escape(ri['instance_type'])}</instanceType>"
        f"{zone_xml}"
        f"<start>{format_time(ri['start'])}</start>"
        f"<end>{format_time(ri['end'])}</end>"
        f"<duration>{duration}</duration>"
        "<fixedPrice>0.0</fixedPrice>"
        "<usagePrice>0.0</usagePrice>"
        f"<instanceCount>{ri['instance_count']}</instanceCount>"
        "<productDescription>Linux/UNIX</productDescription>"
        f"<state>{escape(state_at(ri, now))}</state>"
        "<instanceTenancy>default</instanceTenancy>"
        "<currencyCode>USD</currencyCode>"
        f"<offeringType>{escape(ri['offering_type'])}</offeringType>"
        "<recurringCharges/>"
        f"<offeringClass>{escape(ri['offering_class'])}</offeringClass>"
        f"<scope>{scope}</scope>"
        "</item>"
    )


def describe_reserved_instances(self: ReservedInstances) -> str:
    """DescribeReservedInstances for moto's EC2 responder.

    Supports `ReservedInstancesId.N`, `OfferingClass` and `OfferingType`.
    `Filter.N` is refused rather than ignored, so that a client that starts
    filtering on the server finds out that the emulator does not.
    """
    self.error_on_dryrun()
    if self._get_param("Filters"):
        raise EC2ClientError(
            "InvalidParameterValue",
            "ebb_moto: Filter.N is not supported for DescribeReservedInstances",
        )
    ids = set(self._get_param("ReservedInstancesIds", []) or [])
    offering_class = self._get_param("OfferingClass")
    offering_type = self._get_param("OfferingType")
    now = dt.datetime.now(dt.timezone.utc)
    items = [
        ri
        for ri in STORE.list(self.current_account, self.region)
        if (not ids or ri["id"] in ids)
        and (not offering_class or ri["offering_class"] == offering_class)
        and (not offering_type or ri["offering_type"] == offering_type)
    ]
    body = "".join(reserved_instance_xml(ri, now) for ri in items)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<DescribeReservedInstancesResponse xmlns="{EC2_XMLNS}">'
        f"<requestId>{uuid.uuid4()}</requestId>"
        f"<reservedInstancesSet>{body}</reservedInstancesSet>"
        "</DescribeReservedInstancesResponse>"
    )


# moto's EC2 responder finds actions by method name, so replacing the
# not-implemented method is all the wiring the call needs.
ReservedInstances.describe_reserved_instances = describe_reserved_instances  # type: ignore[method-assign]


class Seeder:
    """`POST /ebb-test/seed`: stores reserved instances and launches instances.

    Body (JSON): `{"region": "us-east-1", "reset": true,
    "reserved_instances": [...], "instances": [...]}`. With `reset`, the
    region's reserved instances are dropped and its instances terminated
    first and its armed faults disarmed, so a test can run again against
    the same emulator. A reserved instance has `instance_type`,
    `instance_count`, optional `availability_zone` (absent: regional scope),
    `start`/`end` (RFC 3339), `state` (absent: follows the clock),
    `offering_class`, `offering_type` and `id`. An instance has
    `instance_type`, `availability_zone`, `tags` (object), `count` and
    `stopped` (stop it after launch); each one is launched by its own
    RunInstances call against this server (stock moto), so each is its own
    EC2 reservation and a DescribeInstances page of N reservations holds N
    instances.

    Answers `{"reserved_instance_ids": [...], "instance_ids": [...]}`.
    """

    def __init__(self) -> None:
        self.endpoint = ""

    def seed(self, body: dict[str, Any]) -> dict[str, Any]:
        import boto3  # moto depends on boto3; imported late to keep startup quick

        unknown = set(body) - {
            "region",
            "account_id",
            "reset",
            "reserved_instances",
            "instances",
        }
        if unknown:
            raise ValueError(f"unknown seed fields: {sorted(unknown)}")
        region = body["region"]
        account = body.get("account_id", "123456789012")
        ec2 = boto3.client(
            "ec2",
            region_name=region,
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        if body.get("reset"):
            FAULTS.clear(region)
            STORE.clear(account, region)
            live = [
                i["InstanceId"]
                for page in ec2.get_paginator("describe_instances").paginate()
                for r in page["Reservations"]
                for i in r["Instances"]
                if i["State"]["Name"] != "terminated"
            ]
            if live:
                ec2.terminate_instances(InstanceIds=live)
        ri_ids = [seed_reserved_instance(account, region, ri) for ri in body.get("reserved_instances", [])]
        instance_ids: list[str] = []
        instances = body.get("instances", [])
        if instances:
            image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
            for spec in instances:
                unknown = set(spec) - {
                    "instance_type",
                    "availability_zone",
                    "tags",
                    "count",
                    "stopped",
                }
                if unknown:
                    raise ValueError(f"unknown instance fields: {sorted(unknown)}")
                tags = [{"Key": k, "Value": v} for k, v in spec.get("tags", {}).items()]
                for _ in range(spec.get("count", 1)):
                    args: dict[str, Any] = {
                        "ImageId": image_id,
                        "MinCount": 1,
                        "MaxCount": 1,
                        "InstanceType": spec["instance_type"],
                        "Placement": {"AvailabilityZone": spec["availability_zone"]},
                    }
                    if tags:
                        args["TagSpecifications"] = [{"ResourceType": "instance", "Tags": tags}]
                    out = ec2.run_instances(**args)
                    ids = [i["InstanceId"] for i in out["Instances"]]
                    if spec.get("stopped"):
                        ec2.stop_instances(InstanceIds=ids)
                    instance_ids.extend(ids)
        return {"reserved_instance_ids": ri_ids, "instance_ids": instance_ids}


def request_action(environ: dict[str, Any]) -> str:
    """The EC2 `Action` of a query-protocol request, leaving its body readable."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    params = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    params.update(urllib.parse.parse_qs(environ.get("QUERY_STRING", "")))
    return params.get("Action", [""])[0]


def make_app(seeder: Seeder) -> Any:
    """moto's WSGI application with the seeding endpoint in front of it."""
    moto_app = DomainDispatcherApplication(create_backend_app)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO", "").startswith("/ebb-test/"):
            request = Request(environ)
            if request.path == "/ebb-test/seed" and request.method == "POST":
                try:
                    result = seeder.seed(json.loads(request.get_data(as_text=True)))
                    response = Response(json.dumps(result), 200, mimetype="application/json")
                except Exception as e:  # the test sees the message, the server stays up
                    response = Response(f"{type(e).__name__}: {e}\n", 400, mimetype="text/plain")
            elif request.path == "/ebb-test/fail" and request.method == "POST":
                # {"region": ..., "code": "RequestLimitExceeded", "status": 503,
                #  "count": N, "action": "DescribeInstanceTypes" (optional)}
                body = json.loads(request.get_data(as_text=True))
                FAULTS.arm(
                    body["region"],
                    body.get("code", "RequestLimitExceeded"),
                    int(body.get("status", 503)),
                    int(body["count"]),
                    body.get("action"),
                )
                response = Response("armed\n", 200, mimetype="text/plain")
            elif request.path == "/ebb-test/health":
                response = Response("ok\n", 200, mimetype="text/plain")
            else:
                response = Response("unknown ebb-test endpoint\n", 404, mimetype="text/plain")
            return response(environ, start_response)
        match = SIGV4_REGION.search(environ.get("HTTP_AUTHORIZATION", ""))
        fault = None
        if match and FAULTS.armed(match.group(1)):
            fault = FAULTS.take(match.group(1), request_action(environ))
        if fault is not None:
            code, status = fault
            response = Response(
                ec2_error_xml(code, "Request limit exceeded (ebb_moto fault)."),
                status,
                mimetype="text/xml",
            )
            return response(environ, start_response)
        return moto_app(environ, start_response)

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    args = parser.parse_args()

    if not ipaddress.ip_address(args.host).is_loopback:
        print(f"ebb_moto: refusing to bind {args.host}: tests use loopback only", file=sys.stderr)
        return 2
    if moto.__version__ != MOTO_VERSION:
        print(
            f"ebb_moto: moto {moto.__version__} found, the tests expect {MOTO_VERSION}",
            file=sys.stderr,
        )
        return 2

    seeder = Seeder()
    server = make_server(
        args.host,
        args.port,
        make_app(seeder),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    port = server.server_address[1]
    seeder.endpoint = f"http://{args.host}:{port}"
    if args.port_file:
        tmp = f"{args.port_file}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"ebb_moto: moto {moto.__version__} listening on {seeder.endpoint}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
