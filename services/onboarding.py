"""First-start InfluxDB set-up through its HTTP API: org, buckets, scoped tokens.

The admin password and every token are generated here and kept in one JSON file readable
only by its owner (0600). Nothing here prints or logs a secret.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import httpx

from dcpulse.private_files import MissingSecret, write_private
from dcpulse.settings import InfluxSettings, Settings


@dataclass(frozen=True)
class Credentials:
    org_id: str
    admin_token: str
    admin_password: str
    write_token: str  # write-only on the dcpulse buckets: the sink's
    read_token: str  # read-only on the dcpulse buckets: for queries


def credentials_path(state_dir: Path) -> Path:
    return state_dir / "influxdb" / "credentials.json"


def token_file(settings: Settings, access: Literal["read", "write"]) -> Path:
    configured = settings.influx.read_token_file if access == "read" else settings.influx.write_token_file
    return configured or credentials_path(settings.services.state_dir).with_name(f"{access}-token")


def influx_token(settings: Settings, access: Literal["read", "write"]) -> str:
    """The token for `access`, from its file: the one minted at onboarding unless another is set.
    Only this token is read: no process but `services` opens the file holding the admin token."""
    path = token_file(settings, access)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise MissingSecret(f"no InfluxDB {access} token in {path}: run `dcpulse services up` to onboard the "
                           f"local server, or set influx.{access}_token_file") from None


def load_credentials(path: Path) -> Credentials | None:
    try:
        return Credentials(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def save_credentials(path: Path, creds: Credentials) -> None:
    write_private(path, json.dumps(asdict(creds)))


def bucket_permissions(actions: tuple[str, ...], org_id: str, bucket_ids: list[str]) -> list[dict]:
    """Authorization permissions granting `actions` on exactly these buckets."""
    return [
        {"action": action, "resource": {"type": "buckets", "id": bucket_id, "orgID": org_id}}
        for action in actions
        for bucket_id in bucket_ids
    ]


class InfluxOnboarding:
    def __init__(self, settings: InfluxSettings, credentials_file: Path) -> None:
        self.settings = settings
        self.credentials_file = credentials_file

    def ensure(self) -> Credentials:
        """Onboard if the server is fresh; make sure buckets and tokens exist. Idempotent."""
        creds = load_credentials(self.credentials_file)
        with httpx.Client(base_url=self.settings.url, timeout=10.0) as http:
            allowed = http.get("/api/v2/setup").raise_for_status().json()["allowed"]
            if allowed:
                creds = self._setup(http)
            elif creds is None:
                raise RuntimeError(
                    f"InfluxDB at {self.settings.url} is already set up but {self.credentials_file} "
                    "is missing: stop it and remove its state directory to start over"
                )
            http.headers["Authorization"] = f"Token {creds.admin_token}"
            if not (creds.write_token and creds.read_token):  # fresh, or minting was interrupted
                write, read = self.scoped_tokens(http, creds.org_id)
                creds = replace(creds, write_token=write, read_token=read)
                save_credentials(self.credentials_file, creds)
            else:
                self._ensure_buckets(http, creds.org_id)
        # Each scoped token in a file of its own: a process reads only the one it needs.
        write_private(self.credentials_file.with_name("write-token"), creds.write_token)
        write_private(self.credentials_file.with_name("read-token"), creds.read_token)
        return creds

    def _setup(self, http: httpx.Client) -> Credentials:
        admin_token = secrets.token_urlsafe(48)
        password = secrets.token_urlsafe(24)
        buckets = self.settings.buckets
        body = {
            "username": self.settings.admin_user,
            "password": password,
            "org": self.settings.org,
            "bucket": buckets.raw,
            "retentionPeriodSeconds": buckets.raw_retention_hours * 3600,
            "token": admin_token,
        }
        response = http.post("/api/v2/setup", json=body)
        _raise_for(response, "onboarding")
        org_id = response.json()["org"]["id"]
        creds = Credentials(org_id, admin_token, password, write_token="", read_token="")
        # Keep the admin token even if a later step fails: the server is now set up.
        save_credentials(self.credentials_file, creds)
        return creds

    def _ensure_buckets(self, http: httpx.Client, org_id: str) -> list[str]:
        ids = []
        for name, retention_s in self.settings.buckets.retention_seconds().items():
            found = http.get("/api/v2/buckets", params={"orgID": org_id, "name": name})
            if found.status_code != 404:  # 404 is influxd's answer for "no such bucket"
                _raise_for(found, "bucket lookup")
            existing = found.json().get("buckets", []) if found.is_success else []
            if existing:
                ids.append(existing[0]["id"])
                continue
            created = http.post("/api/v2/buckets", json={
                "orgID": org_id, "name": name,
                "retentionRules": [{"type": "expire", "everySeconds": retention_s}],
            })
            _raise_for(created, f"creating bucket {name}")
            ids.append(created.json()["id"])
        return ids

    def scoped_tokens(self, http: httpx.Client, org_id: str) -> tuple[str, str]:
        """With an admin-authorised client: the buckets (those missing), then a new write-only
        and a new read-only token of them."""
        bucket_ids = self._ensure_buckets(http, org_id)

        def mint(description: str, actions: tuple[str, ...]) -> str:
            response = http.post("/api/v2/authorizations", json={
                "orgID": org_id, "description": description,
                "permissions": bucket_permissions(actions, org_id, bucket_ids),
            })
            _raise_for(response, f"creating token {description!r}")
            return response.json()["token"]

        return mint("dcpulse sink: write-only", ("write",)), mint("dcpulse queries: read-only", ("read",))


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    try:
        message = response.json().get("message", response.text)
    except ValueError:
        message = response.text
    raise RuntimeError(f"InfluxDB {what} failed: HTTP {response.status_code}: {message}")
