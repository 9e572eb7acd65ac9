"""InfluxDB OSS 2.x: `influxd` built from its Go module, with libflux built by cargo.

Cold build on 2 cores: the Rust libflux and the Go server take most of it (see
BUILD_ESTIMATE and the README's table). Go's module and build caches and cargo's registry live in their usual
places, so a retry after a failure resumes instead of starting over.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from dcpulse.services import cache
from dcpulse.services.onboarding import credentials_path
from dcpulse.services.process import ManagedProcess
from dcpulse.services.shell import run_logged
from dcpulse.settings import InfluxSettings

MODULE = "github.com/influxdata/influxdb/v2"
FLUX_MODULE = "github.com/influxdata/flux"
GO_TAGS = "sqlite_foreign_keys,sqlite_json"
# Static link of the Rust staticlib needs these system libraries.
NATIVE_LIBS = "-lgcc_s -lutil -lrt -lpthread -lm -ldl"
BUILD_ESTIMATE = "about 7 minutes on 2 cores with cold Go/cargo caches, measured; cached afterwards"


def flux_version_from_go_mod(go_mod: str) -> str:
    """The flux module version influxd's go.mod requires (libflux must match it)."""
    for line in go_mod.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in (FLUX_MODULE, "require") and FLUX_MODULE in parts:
            return parts[parts.index(FLUX_MODULE) + 1]
    raise ValueError(f"{FLUX_MODULE} is not required by this go.mod")


def render_flux_pc(lib_dir: Path, include_dir: Path, version: str) -> str:
    """pkg-config file for cgo's `#cgo pkg-config: flux` (lib_dir holds only libflux.a)."""
    return (
        f"Name: flux\nDescription: Flux language runtime (libflux)\nVersion: {version}\n"
        f"Cflags: -I{include_dir}\n"
        f"Libs: -L{lib_dir} -lflux {NATIVE_LIBS}\n"
    )


def influxd_argv(binary: Path, settings: InfluxSettings, data_dir: Path) -> list[str]:
    return [
        str(binary),
        f"--bolt-path={data_dir / 'influxd.bolt'}",
        f"--engine-path={data_dir / 'engine'}",
        f"--sqlite-path={data_dir / 'influxd.sqlite'}",
        f"--http-bind-address={settings.host}:{settings.port}",
        "--reporting-disabled",
        "--ui-disabled",
        "--log-level=info",
    ]


class InfluxServer:
    """Provision (build), start and probe the local influxd."""

    def __init__(self, settings: InfluxSettings, cache_dir: Path, state_dir: Path) -> None:
        self.settings = settings
        self.home = cache.artefact_dir(cache_dir, "influxdb", settings.version)
        self.build_dir = cache_dir / "build" / f"influxdb-{settings.version}"
        self.state = state_dir / "influxdb"
        self.data_dir = self.state / "data"
        self.run_dir = self.state / "run"  # influxd reads ./config.* : keep its cwd empty
        self.log_file = self.state / "influxd.log"
        self.credentials_file = credentials_path(state_dir)
        self.process = ManagedProcess("influxdb", self.state / "influxd.pid", marker=str(self.data_dir))

    @property
    def binary(self) -> Path:
        return self.home / "bin" / "influxd"

    def is_provisioned(self) -> bool:
        return cache.is_complete(self.home) and self.binary.is_file()

    def provision(self, log: Callable[[str], None]) -> None:
        if self.is_provisioned():
            return
        for tool in ("go", "cargo", "pkg-config", "cc"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"`{tool}` is not on PATH: building influxd needs Go, Rust, pkg-config and a C compiler")
        self.build_dir.mkdir(parents=True, exist_ok=True)
        build_log = self.build_dir / "build.log"
        env = {
            "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "1",
            "RUSTUP_TOOLCHAIN": "stable",  # flux pins Rust 1.72, which rustup cannot fetch here
            "RUSTFLAGS": "--cap-lints=warn",  # newer rustc lints would trip deny(warnings)
        }
        log(f"building influxd {self.settings.version} ({BUILD_ESTIMATE}); log: {build_log}")
        started = time.monotonic()

        def step(label: str, cmd: list[str], cwd: Path, extra: dict[str, str] | None = None) -> None:
            log(f"[{_elapsed(started)}] {label}")
            run_logged(cmd, cwd=cwd, log_file=build_log, env={**env, **(extra or {})}, heartbeat=log)

        src = self.build_dir / "influxdb"
        flux_src = self.build_dir / "flux"
        module_dir = _download_module(f"{MODULE}@v{self.settings.version}", self.build_dir, build_log)
        _fresh_copy(module_dir, src)
        flux_version = flux_version_from_go_mod((src / "go.mod").read_text())
        flux_dir = _download_module(f"{FLUX_MODULE}@{flux_version}", self.build_dir, build_log)
        # libflux's build script reads ../stdlib, so both trees are needed side by side.
        for part in ("libflux", "stdlib"):
            _fresh_copy(flux_dir / part, flux_src / part, keep=("target",))
        step(f"compiling libflux {flux_version} with cargo (the longest step)",
             ["cargo", "build", "--release", "-p", "flux"], flux_src / "libflux")
        pkg_dir = self.build_dir / "pkgconfig"
        lib_dir = pkg_dir / "lib"
        lib_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(flux_src / "libflux" / "target" / "release" / "libflux.a", lib_dir / "libflux.a")
        (pkg_dir / "flux.pc").write_text(
            render_flux_pc(lib_dir, flux_src / "libflux" / "include", flux_version)
        )
        step("downloading influxd's Go dependencies", ["go", "mod", "download"], src)
        manifest = {"influxdb": self.settings.version, "flux": flux_version, "tags": GO_TAGS}
        with cache.building(self.home, manifest) as scratch:
            (scratch / "bin").mkdir()
            step("compiling influxd with go build",
                 ["go", "build", "-v", "-tags", GO_TAGS, "-ldflags", f"-X main.version=v{self.settings.version}",
                  "-o", str(scratch / "bin" / "influxd"), "./cmd/influxd"],
                 src, {"PKG_CONFIG_PATH": str(pkg_dir)})
            out = subprocess.run([str(scratch / "bin" / "influxd"), "version"], capture_output=True, text=True, check=True)
            log(f"[{_elapsed(started)}] built: {out.stdout.strip()}")
        # The sources and cargo target take gigabytes; the binary alone is what we keep.
        shutil.rmtree(self.build_dir, ignore_errors=True)

    def start(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return self.process.start(
            influxd_argv(self.binary, self.settings, self.data_dir),
            cwd=self.run_dir, log_file=self.log_file,
        )

    def is_healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.settings.url}/health", timeout=3.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("status") == "pass"

    def version(self) -> str:
        try:
            return httpx.get(f"{self.settings.url}/health", timeout=3.0).json().get("version", "?")
        except (httpx.HTTPError, ValueError):
            return "?"


def _download_module(spec: str, cwd: Path, log_file: Path) -> Path:
    """`go mod download -json` a module; returns its (read-only) directory in the module cache."""
    result = subprocess.run(
        ["go", "mod", "download", "-json", spec], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}, check=False,
    )
    with open(log_file, "a") as log:
        log.write(f"\n$ go mod download -json {spec}\n{result.stdout}{result.stderr}")
    try:
        info = json.loads(result.stdout)
    except json.JSONDecodeError:
        info = {}
    if result.returncode != 0 or "Dir" not in info:
        raise RuntimeError(f"go mod download {spec} failed: {info.get('Error') or result.stderr.strip()}")
    return Path(info["Dir"])


def _fresh_copy(source: Path, target: Path, keep: tuple[str, ...] = ()) -> None:
    """Copy a read-only module tree to a writable place, keeping named build subdirs."""
    if target.exists():
        for child in target.iterdir():
            if child.name in keep:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    shutil.copytree(source, target, dirs_exist_ok=True)
    for root, dirs, files in os.walk(target):
        for name in dirs + files:
            path = Path(root) / name
            path.chmod(path.stat().st_mode | 0o200)
    Path(target).chmod(Path(target).stat().st_mode | 0o200)


def _elapsed(started: float) -> str:
    seconds = int(time.monotonic() - started)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"
