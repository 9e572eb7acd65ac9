"""An isolated pipeline on the shared local servers: its own topic prefix (with the roles' Kafka
ACLs on it), its own raw, analytics and alerts buckets and its own least-privilege tokens
(write-only and read-only on those buckets, as onboarding mints for the standard ones), for
tests and benchmarks that must not see (or disturb) anyone else's data. Settings reach the pipeline's child processes through the
environment, so the context sets DCPULSE_* variables for its duration and restores them after."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from influxdb_client import InfluxDBClient
from dcpulse import kafka_clients
from dcpulse.private_files import write_private
from dcpulse.services.kafka_acls import pipeline_grants, revoke
from dcpulse.services.onboarding import bucket_permissions
from dcpulse.services.topics import provision_pipeline
from dcpulse.settings import Settings


def _admin(base: Settings, admin_token: str) -> httpx.Client:
    return httpx.Client(base_url=base.influx.url, headers={"Authorization": f"Token {admin_token}"}, timeout=10.0)


@contextmanager
def sandbox(base: Settings, admin_token: str, name: str) -> Iterator[Settings]:
    """Create `<name>-<uuid>` topics and buckets, yield the settings that use them, delete all."""
    prefix = f"{name}-{uuid.uuid4().hex[:6]}"
    bucket = prefix.replace("-", "_")
    with InfluxDBClient(url=base.influx.url, token=admin_token, org=base.influx.org) as client:
        created = [client.buckets_api().create_bucket(bucket_name=f"{bucket}_{kind}", org=base.influx.org)
                   for kind in ("raw", "analytics", "alerts")]
    org_id, ids = created[0].org_id, [b.id for b in created]
    with _admin(base, admin_token) as http:
        tokens = {access: http.post("/api/v2/authorizations", json={
                      "orgID": org_id, "description": f"{prefix}: {access}-only",
                      "permissions": bucket_permissions((access,), org_id, ids)}).raise_for_status().json()
                  for access in ("write", "read")}
    # The tokens in files of the sandbox's own (paths in the environment, never the tokens).
    token_dir = base.services.state_dir / "sandboxes" / prefix
    for access, authorization in tokens.items():
        write_private(token_dir / f"{access}-token", authorization["token"])
    env = {"DCPULSE_TOPICS__PREFIX": prefix, "DCPULSE_INFLUX__BUCKETS__ANALYTICS": f"{bucket}_analytics",
           "DCPULSE_INFLUX__BUCKETS__RAW": f"{bucket}_raw", "DCPULSE_INFLUX__BUCKETS__ALERTS": f"{bucket}_alerts",
           "DCPULSE_INFLUX__WRITE_TOKEN_FILE": str(token_dir / "write-token"),
           "DCPULSE_INFLUX__READ_TOKEN_FILE": str(token_dir / "read-token")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        settings = Settings()
        provision_pipeline(settings)
        yield settings
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        with _admin(base, admin_token) as http:
            for authorization in tokens.values():
                http.delete(f"/api/v2/authorizations/{authorization['id']}").raise_for_status()
        shutil.rmtree(token_dir, ignore_errors=True)
        with InfluxDBClient(url=base.influx.url, token=admin_token, org=base.influx.org) as client:
            for bucket_obj in created:
                client.buckets_api().delete_bucket(bucket_obj)
        kafka = kafka_clients.access(base, "admin")
        admin = kafka_clients.admin(kafka, "dcpulse-sandbox")
        try:
            # Our topics and the Faust app's internal ones (changelogs) share the prefix.
            admin.delete_topics([t for t in admin.list_topics() if t.startswith(prefix)])
        finally:
            admin.close()
        revoke(kafka, pipeline_grants(base.topics.model_copy(update={"prefix": prefix})))
