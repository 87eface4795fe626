"""The container image's checks without a Docker engine (run by scripts/image-check).

1. `rust-version`: the workspace's `rust-version`, the README's "Rust X+", the tool check in
   scripts/common.sh and the build stage's `FROM rust:X-...` all say one version, and no
   crate in the lock file (`cargo metadata --locked`) needs a newer one.
2. `build-stage`: lays out exactly what the build stage's COPY instructions copy from the
   build context, which the Docker SDK's own context code filters through .dockerignore, and
   runs the stage's RUN instructions, as written (the same `--locked` flags), in a chroot:
   an overlay over this machine's root stands in for the rust image, with this machine's
   toolchain mounted where the image has it (/usr/local/cargo, /usr/local/rustup) and each
   cache mount bound to a folder that outlives the run (the build folder inside the
   workspace to CARGO_TARGET_DIR, so warm runs rebuild only what changed). Then what the
   final stage copies from the build stage must exist, run, and need nothing from the
   system but what the final base image has (glibc and libgcc, at its glibc version).

Every finding is one line naming the file and what is wrong; the exit status is 1 on any.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

# The environment of the official rust images (docker-library/rust), which the build stage
# runs in: the toolchain lives under /usr/local.
RUST_IMAGE_ENV = {
    "PATH": "/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "CARGO_HOME": "/usr/local/cargo",
    "RUSTUP_HOME": "/usr/local/rustup",
    "HOME": "/root",
}

# What a final base image provides to a dynamically linked binary: its shared libraries and
# the glibc version they come with (distroless cc: glibc, libgcc; Debian 12 ships glibc 2.36).
RUNTIME_BASES = {
    "gcr.io/distroless/cc-debian12": (
        (2, 36),
        {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2", "libpthread.so.0",
         "libdl.so.2", "librt.so.1", "libutil.so.1"},
    ),
}


class Finding(Exception):
    """One problem, said in one line."""


@dataclass
class Stage:
    """One FROM ... section of the Dockerfile."""

    base: str
    name: str | None
    line: int
    instructions: list[tuple[str, str, int]] = field(default_factory=list)


def parse_stages(dockerfile: Path) -> list[Stage]:
    """The Dockerfile's stages with their instructions (comments dropped, lines 1-based)."""
    stages: list[Stage] = []
    for item in DockerfileParser(str(dockerfile)).structure:
        instruction, value, line = item["instruction"], item["value"], item["startline"] + 1
        if instruction == "COMMENT":
            continue
        if instruction == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(base=words[0], name=name, line=line))
        elif not stages:
            raise Finding(f"{dockerfile.name}:{line}: {instruction} before the first FROM is not supported by image-check")
        else:
            stages[-1].instructions.append((instruction, value, line))
    if len(stages) < 2:
        raise Finding(f"{dockerfile.name}: expected a build stage and a final stage, found {len(stages)} stage(s)")
    return stages


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def rust_version_findings(root: Path, stages: list[Stage]) -> list[str]:
    """Where the workspace's claimed Rust version is not the one place's truth."""
    findings = []
    manifest = tomllib.loads((root / "Cargo.toml").read_text())
    claimed = manifest.get("workspace", {}).get("package", {}).get("rust-version")
    if not claimed:
        return ["Cargo.toml: [workspace.package] has no rust-version"]
    metadata = subprocess.run(
        ["cargo", "metadata", "--locked", "--format-version", "1"],
        cwd=root, capture_output=True, text=True, check=False,
    )
    if metadata.returncode != 0:
        return [f"cargo metadata --locked failed: {metadata.stderr.strip().splitlines()[-1]}"]
    packages = json.loads(metadata.stdout)["packages"]
    needing = [(version_tuple(p["rust_version"]), p["rust_version"], p["name"], p["version"])
               for p in packages if p.get("rust_version") and p.get("source")]  # not the workspace's own
    highest = max(needing)
    if version_tuple(claimed) < highest[0]:
        findings.append(
            f"Cargo.toml: rust-version {claimed} is false: {highest[2]} {highest[3]} in Cargo.lock "
            f"needs Rust {highest[1]}")
    build = stages[0]
    match = re.fullmatch(r"(?:docker\.io/(?:library/)?)?rust:(\d+\.\d+(?:\.\d+)?)(?:-[a-z0-9-]+)?", build.base)
    if not match:
        findings.append(f"Dockerfile:{build.line}: the build stage is not FROM rust:<version>-<debian> ({build.base})")
    elif match.group(1) != claimed:
        findings.append(f"Dockerfile:{build.line}: FROM {build.base} builds with Rust {match.group(1)}, "
                        f"Cargo.toml says rust-version {claimed}")
    for path, pattern in (("README.md", r"Rust (\d+\.\d+(?:\.\d+)?)\+"),
                          ("scripts/common.sh", r"install Rust (\d+\.\d+(?:\.\d+)?)\+")):
        said = re.findall(pattern, (root / path).read_text())
        if not said:
            findings.append(f"{path}: says no Rust version (expected 'Rust {claimed}+')")
        findings += [f"{path}: says Rust {v}+, Cargo.toml says rust-version {claimed}" for v in said if v != claimed]
    if not findings:
        at_highest = sorted(f"{n[2]} {n[3]}" for n in needing if n[0] == highest[0])
        print(f"image-check: rust-version {claimed} everywhere; the highest in Cargo.lock ({len(packages)} "
              f"packages) is {highest[1]}, declared by {at_highest[0]} and {len(at_highest) - 1} more")
    return findings


def context_paths(root: Path) -> set[str]:
    """Paths in the build context, as `docker build` sends it (the Docker SDK's own filter)."""
    ignore = root / ".dockerignore"
    patterns = []
    if ignore.exists():
        # As docker.api.build reads the file: stripped lines, no comments, no blanks.
        patterns = [line.strip() for line in ignore.read_text().splitlines()]
        patterns = [p for p in patterns if p and not p.startswith("#")]
    return exclude_paths(str(root), patterns, dockerfile="Dockerfile")


def substitute(value: str, variables: dict[str, str]) -> str:
    """Dockerfile variable substitution ($NAME, ${NAME}, ${NAME:-default})."""
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        default = match.group(3)
        return variables.get(name) or (default if default is not None else "")
    return re.sub(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})", replace, value)


def split_flags(value: str) -> tuple[dict[str, list[str]], str]:
    """Leading `--name=value` flags of COPY/RUN, and the rest of the instruction."""
    flags: dict[str, list[str]] = {}
    rest = value.lstrip()
    while match := re.match(r"--([a-z-]+)(?:=(\S+))?\s+", rest):
        flags.setdefault(match.group(1), []).append(match.group(2) or "")
        rest = rest[match.end():]
    return flags, rest


class FileTimes:
    """The time each laid-out file's content was first seen at its path in the image.

    Cargo decides freshness by file times, and a new clone's files are all new. Giving a file
    the time its content first appeared keeps a build folder that only image-check writes to
    warm across clones (unchanged crates are not rebuilt), and any changed content a time
    later than every build before it (it is rebuilt)."""

    def __init__(self, path: Path):
        self.path = path
        self.seen: dict[str, list] = json.loads(path.read_text()) if path.exists() else {}

    def stamp(self, file: Path, image_path: str) -> None:
        if file.is_symlink():
            return
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        known = self.seen.get(image_path)
        if not known or known[0] != digest:
            known = self.seen[image_path] = [digest, time.time_ns()]
        os.utime(file, ns=(known[1], known[1]))

    def save(self) -> None:
        self.path.write_text(json.dumps(self.seen, sort_keys=True))


def copy_sources(sources: list[str], dest: str, workdir: str, context: set[str], root: Path,
                 upper: Path, times: FileTimes, line: int) -> int:
    """Places what `COPY sources dest` copies under `upper`; returns the number of files."""
    files = sorted(p for p in context if not (root / p).is_dir() or (root / p).is_symlink())
    target = PurePosixPath(dest) if dest.startswith("/") else PurePosixPath(workdir) / dest
    copied = 0
    for source in sources:
        normal = os.path.normpath(source)
        if normal.startswith(".."):
            raise Finding(f"Dockerfile:{line}: COPY {source} points outside the build context")
        if any(c in normal for c in "*?["):
            matched = [f for f in files if fnmatch.fnmatchcase(f, normal) and f.count("/") == normal.count("/")]
            pairs = [(f, target / PurePosixPath(f).name) for f in matched]
        elif normal == ".":
            pairs = [(f, target / f) for f in files]
        elif normal in files:
            into_dir = dest.endswith("/") or len(sources) > 1
            pairs = [(normal, target / PurePosixPath(normal).name if into_dir else target)]
        else:
            pairs = [(f, target / PurePosixPath(f).relative_to(normal)) for f in files if f.startswith(normal + "/")]
        if not pairs:
            raise Finding(f"Dockerfile:{line}: COPY {source}: no such file in the build context "
                          f"(after .dockerignore)")
        for relative, destination in pairs:
            out = upper / str(destination).lstrip("/")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / relative, out, follow_symlinks=False)
            times.stamp(out, str(destination))
            copied += 1
    return copied


@dataclass
class BuildPlan:
    """What the sandbox runs: binds, then each RUN with its environment and directory."""

    root: str
    upper: str
    work: str
    binds: list[tuple[str, str]]
    runs: list[dict]


def plan_build_stage(stage: Stage, root: Path, sandbox: Path,
                     cargo_home: Path, rustup_home: Path, target_dir: Path) -> BuildPlan:
    """Lays out the build stage's COPYs in the overlay's upper folder and plans its RUNs.

    The build folder and other caches persist in `target_dir`/image-check, which only
    image-check builds into (so file times decide freshness there, see FileTimes)."""
    upper, work, chroot = sandbox / "upper", sandbox / "work", sandbox / "root"
    state = target_dir / "image-check"
    (state / "target").mkdir(parents=True, exist_ok=True)
    times = FileTimes(state / "file-times.json")
    for folder in (upper, work, chroot):
        folder.mkdir(parents=True)
    context = context_paths(root)
    env = dict(RUST_IMAGE_ENV)
    variables: dict[str, str] = {}
    workdir = "/"
    binds = [(str(cargo_home), "/usr/local/cargo"), (str(rustup_home), "/usr/local/rustup")]
    runs = []
    copied = 0  # what Docker would copy; none is no error here: the RUN lines then say what is missing
    for instruction, value, line in stage.instructions:
        value = value if instruction == "RUN" else substitute(value, {**variables, **env})
        if instruction == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / value)
            (upper / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif instruction == "ENV":
            words = shlex.split(value)
            pairs = [w.split("=", 1) for w in words] if "=" in words[0] else [[words[0], " ".join(words[1:])]]
            env.update({k: v for k, v in pairs})
        elif instruction == "ARG":
            name, _, default = value.partition("=")
            variables.setdefault(name, default)
        elif instruction == "LABEL":
            pass
        elif instruction == "COPY":
            flags, rest = split_flags(value)
            if "from" in flags:
                raise Finding(f"Dockerfile:{line}: the build stage copies from another stage or image "
                              "(--from), which image-check does not lay out")
            words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            if len(words) < 2:
                raise Finding(f"Dockerfile:{line}: COPY needs a source and a destination")
            copied += copy_sources(words[:-1], words[-1], workdir, context, root, upper, times, line)
        elif instruction == "RUN":
            flags, command = split_flags(value)
            for mount in flags.pop("mount", []):
                spec = dict(part.split("=", 1) for part in mount.split(","))
                if spec.get("type") != "cache" or "target" not in spec:
                    raise Finding(f"Dockerfile:{line}: RUN --mount={mount}: only type=cache mounts are supported")
                mount_target = str(PurePosixPath(workdir) / spec["target"])
                if mount_target.startswith("/usr/local/cargo/") or mount_target == "/usr/local/cargo":
                    continue  # inside the toolchain's folder, bound above: it persists already
                if mount_target == str(PurePosixPath(workdir) / "target"):
                    binds.append((str(state / "target"), mount_target))
                else:
                    cache = state / "cache" / spec.get("id", mount_target.strip("/").replace("/", "_"))
                    cache.mkdir(parents=True, exist_ok=True)
                    binds.append((str(cache), mount_target))
            if flags:
                raise Finding(f"Dockerfile:{line}: RUN --{next(iter(flags))} is not supported by image-check")
            for call in re.finditer(r"\bcargo\s+(?:build|fetch|install)\b[^&;|]*", command):
                if "--locked" not in call.group(0).split():
                    raise Finding(f"Dockerfile:{line}: `{call.group(0).strip()}` without --locked "
                                  "could build another dependency tree than Cargo.lock's")
            argv = json.loads(command) if command.startswith("[") else ["/bin/sh", "-c", command]
            runs.append({"argv": argv, "env": {**variables, **env}, "workdir": workdir, "line": line})
        else:
            raise Finding(f"Dockerfile:{line}: {instruction} in the build stage is not supported by image-check")
    times.save()
    print(f"image-check: laid out {copied} files from the build context ({len(context)} paths "
          f"after .dockerignore) into the build stage's {workdir}")
    return BuildPlan(str(chroot), str(upper), str(work), binds, runs)


def run_sandbox(plan: BuildPlan) -> None:
    """Inside a private mount namespace: mounts, then each RUN in the chroot (exits on failure)."""
    root = plan.root
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir=/,upperdir={plan.upper},workdir={plan.work}", root], check=True)
    subprocess.run(["mount", "--rbind", "/proc", f"{root}/proc"], check=True)
    subprocess.run(["mount", "--rbind", "/dev", f"{root}/dev"], check=True)
    for source, target in plan.binds:
        inside = Path(root) / target.lstrip("/")
        inside.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", source, str(inside)], check=True)
    for run in plan.runs:
        env = [f"{k}={v}" for k, v in run["env"].items()]
        started = time.monotonic()
        print(f"image-check: RUN (Dockerfile:{run['line']}) in {run['workdir']}", flush=True)
        done = subprocess.run(["chroot", root, "/usr/bin/env", "-i", "-C", run["workdir"], *env, *run["argv"]],
                              check=False)
        if done.returncode != 0:
            print(f"image-check: Dockerfile:{run['line']}: RUN failed (exit {done.returncode})", file=sys.stderr)
            sys.exit(1)
        print(f"image-check: RUN (Dockerfile:{run['line']}) took {time.monotonic() - started:.0f} s", flush=True)


def elf_findings(binary: Path, shown: str, base: str) -> list[str]:
    """A binary the final base image cannot run: a library it lacks, a newer glibc."""
    glibc, libraries = RUNTIME_BASES[base]
    dynamic = subprocess.run(["readelf", "-d", "-W", "-V", str(binary)], capture_output=True, text=True, check=False)
    if dynamic.returncode != 0:
        return [f"{shown}: not an ELF binary ({dynamic.stderr.strip()})"]
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic.stdout))
    findings = [f"{shown} needs {lib}, which {base} does not have" for lib in sorted(needed - libraries)]
    versions = {version_tuple(v) for v in re.findall(r"Name: GLIBC_([0-9.]+)", dynamic.stdout)}
    if versions and max(versions) > glibc:
        newest = ".".join(map(str, max(versions)))
        findings.append(f"{shown} needs glibc {newest}, {base} has {'.'.join(map(str, glibc))}")
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    if version.returncode != 0:
        findings.append(f"{shown} --version failed (exit {version.returncode}): {version.stderr.strip()}")
    else:
        print(f"image-check: {shown}: {version.stdout.strip()}; needs {', '.join(sorted(needed))}")
    return findings


def final_stage_findings(stages: list[Stage], upper: Path) -> list[str]:
    """What the final stage copies from the build stage exists and runs on the final base."""
    final, build = stages[-1], stages[0]
    base = final.base.split("@")[0].rsplit(":", 1)[0]
    if base not in RUNTIME_BASES:
        return [f"Dockerfile:{final.line}: image-check does not know what {final.base} provides"]
    findings, placed, user = [], set(), None
    for instruction, value, line in final.instructions:
        if instruction == "COPY":
            flags, rest = split_flags(value)
            if flags.get("from") != [build.name]:
                findings.append(f"Dockerfile:{line}: the final stage copies from somewhere other than the build stage")
                continue
            *sources, dest = shlex.split(rest)
            for source in sources:
                built = upper / source.lstrip("/")
                if not built.is_file():
                    findings.append(f"Dockerfile:{line}: COPY --from={build.name} {source}: the build stage made no such file")
                    continue
                placed.add(str(PurePosixPath(dest) / built.name) if dest.endswith("/") else dest)
                findings += elf_findings(built, source, base)
        elif instruction == "USER":
            user = value.split(":")[0]
        elif instruction == "ENTRYPOINT":
            entry = json.loads(value)[0] if value.startswith("[") else value.split()[0]
            if entry not in placed:
                findings.append(f"Dockerfile:{line}: ENTRYPOINT {entry} is not a file the final stage copies in")
    if user in (None, "0", "root"):
        findings.append(f"Dockerfile:{final.line}: the final stage runs as root (set USER to a non-root uid)")
    return findings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the build context (the workspace)")
    parser.add_argument("--target-dir", type=Path, required=True, help="where the build folder's cache mount persists")
    parser.add_argument("--sandbox", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.sandbox:
        run_sandbox(BuildPlan(**json.loads(options.sandbox.read_text())))
        return 0

    root = options.root.resolve()
    findings: list[str] = []
    try:
        stages = parse_stages(root / "Dockerfile")
        findings += rust_version_findings(root, stages)
        cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
        rustup_home = Path(os.environ.get("RUSTUP_HOME", Path.home() / ".rustup"))
        options.target_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="image-check-") as tmp:
            plan = plan_build_stage(stages[0], root, Path(tmp), cargo_home, rustup_home,
                                       options.target_dir.resolve())
            (Path(tmp) / "plan.json").write_text(json.dumps(plan.__dict__))
            started = time.monotonic()
            # A private mount namespace: the overlay and the binds vanish with the process.
            inner = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                                    __file__, "--target-dir", str(options.target_dir), "--sandbox",
                                    str(Path(tmp) / "plan.json")], check=False)
            if inner.returncode != 0:
                findings.append("Dockerfile: the build stage failed (its output is above)")
            else:
                print(f"image-check: the build stage ran in {time.monotonic() - started:.0f} s")
                findings += final_stage_findings(stages, Path(plan.upper))
    except Finding as finding:
        findings.append(str(finding))
    for finding in findings:
        print(f"image-check: {finding}", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
