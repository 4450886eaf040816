"""Every Dockerfile stage gets the inputs it needs and can run its commands.

No Docker engine runs here or in CI, so this test rebuilds what ``docker build`` would see:
the build context (the files on disk minus ``.dockerignore``, matched with Docker's rules), each
stage's files (what its ``COPY`` lines bring, what its known commands produce), and its
environment. It then checks what broke the dashboard image before: a Node stage whose build
runs the Python app, a ``COPY`` that overwrites installed ``node_modules``, secrets and virtual
environments in the context. The Python stage that writes the OpenAPI document really runs, on
a copy of exactly the files the image would hold.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- .dockerignore


@dataclass(frozen=True)
class IgnoreRule:
    regex: re.Pattern[str]
    exception: bool  # a "!pattern" line: re-includes what earlier lines excluded
    text: str


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's translation (moby/patternmatcher): ``**`` any depth, ``*``/``?`` within a name."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i == len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch in ".+()|{}$^":
            out += "\\" + ch
        else:  # letters, "/", and character classes [...] pass through
            out += ch
        i += 1
    return re.compile(out + "$")


@cache
def ignore_rules() -> tuple[IgnoreRule, ...]:
    rules = []
    path = ROOT / ".dockerignore"
    for line in (path.read_text() if path.exists() else "").splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        exception = text.startswith("!")
        pattern = os.path.normpath(text.removeprefix("!").strip()).lstrip("/")
        rules.append(IgnoreRule(_pattern_regex(pattern), exception, text))
    return tuple(rules)


def ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for rule in ignore_rules():
        if any(rule.regex.match(c) for c in candidates):
            excluded = not rule.exception
    return excluded


@cache
def context_files() -> frozenset[str]:
    """The build context: every file under the repository root that .dockerignore keeps."""
    exceptions = [r.text[1:] for r in ignore_rules() if r.exception]
    files = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel = Path(dirpath).relative_to(ROOT).as_posix()
        prefix = "" if rel == "." else rel + "/"
        dirnames[:] = [
            d
            for d in dirnames
            if not ignored(prefix + d) or any(e.startswith(prefix + d + "/") for e in exceptions)
        ]
        files.update(prefix + f for f in filenames if not ignored(prefix + f))
    return frozenset(files)


def test_dockerignore_keeps_secrets_environments_data_and_caches_out() -> None:
    for path in [
        ".env",
        ".env.production",
        ".git/config",
        ".venv/bin/python",
        "client_sdk/.venv/bin/python",
        "frontend/node_modules/react/index.js",
        "fedlora-data/fedlora.sqlite",
        "fedlora-data/artifacts/ab/cd",
        "demo-out/summary.json",
        "bench/results/quality.json",
        "api/__pycache__/main.cpython-311.pyc",
        ".mypy_cache/3.11/api/main.data.json",
        ".pytest_cache/v/cache/lastfailed",
        "client_sdk/fedlora_client.egg-info/PKG-INFO",
        "frontend/dist/index.html",
        "frontend/openapi.json",
    ]:
        assert ignored(path), f".dockerignore lets {path} into the build context"
    on_disk = {".env", ".venv", "fedlora-data", ".git", "frontend/node_modules", "bench/results"}
    leaked = {f for f in context_files() for d in on_disk if f == d or f.startswith(d + "/")}
    assert not leaked, f"in the build context: {sorted(leaked)[:5]}"


# --------------------------------------------------------------------------- the Dockerfile


@dataclass
class Stage:
    """What one stage holds, as far as this model knows: image path -> where it came from
    (``context:<path>``, ``stage:<name>``, ``run:<command>``), its environment, its commands."""

    name: str
    base: str
    workdir: str = "/"
    user: str = "root"
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    copies: list[tuple[str | None, list[str]]] = field(default_factory=list)
    runs: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # cmd, cwd, env
    overwrites: list[str] = field(default_factory=list)  # installed files a COPY replaced


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per line, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in (ln.strip() for ln in text.splitlines()):
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), args.strip()))
    return out


def _abs(path: str, workdir: str) -> str:
    return os.path.normpath(path if path.startswith("/") else f"{workdir}/{path}")


def _copy(stage: Stage, srcs: list[str], dest: str) -> None:
    """``COPY srcs dest`` from the build context (Docker's rules: a directory's contents)."""
    into_dir = dest.endswith("/") or len(srcs) > 1 or any((ROOT / s).is_dir() for s in srcs)
    dest = _abs(dest, stage.workdir)
    installed = [p.removesuffix("/") for p, how in stage.files.items() if p.endswith("/")]
    for src in (s.rstrip("/") for s in srcs):
        for f in sorted(context_files()):
            if f != src and not f.startswith(src + "/"):
                continue
            rel = PurePosixPath(f).name if f == src else f[len(src) + 1 :]
            target = os.path.normpath(f"{dest}/{rel}") if into_dir else dest
            if any(target.startswith(d + "/") for d in installed):
                stage.overwrites.append(target)
            stage.files[target] = f"context:{f}"


def _produces(command: str, workdir: str) -> list[str]:
    """What the commands this Dockerfile runs leave behind (a model of each; "/" = a tree)."""
    argv = shlex.split(command)
    if argv[:2] == ["npm", "ci"]:
        return [f"{workdir}/node_modules/"]
    if argv[:3] == ["npm", "run", "build"]:
        vite = (ROOT / "frontend" / "vite.config.ts").read_text()
        m = re.search(r'outDir:\s*"([^"]+)"', vite)
        return [_abs(m.group(1) if m else "dist", workdir) + "/"]
    if argv[:3] == ["python", "-m", "api.openapi"] and len(argv) > 3:
        return [_abs(argv[3], workdir)]
    return []


def _npm_commands(script: str, package: dict[str, dict[str, str]]) -> list[str]:
    """``npm run SCRIPT`` expanded through package.json's scripts into the commands it runs."""
    out = []
    for command in re.split(r"&&|;", package["scripts"][script]):
        argv = shlex.split(command)
        out += _npm_commands(argv[2], package) if argv[:2] == ["npm", "run"] else [command.strip()]
    return out


@cache
def stages() -> dict[str, Stage]:
    result: dict[str, Stage] = {}
    stage: Stage | None = None
    for op, args in _instructions():
        if op == "FROM":
            m = re.fullmatch(r"(\S+)(?: AS (\S+))?", args, flags=re.I)
            assert m is not None, f"FROM {args}"
            base = m.group(1)
            stage = Stage(m.group(2) or f"stage{len(result)}", base)
            if base in result:  # FROM an earlier stage: it starts with what that one holds
                parent = result[base]
                stage.workdir, stage.user = parent.workdir, parent.user
                stage.env, stage.files = {**parent.env}, {**parent.files}
            result[stage.name] = stage
            continue
        assert stage is not None, f"{op} before FROM"
        if op == "WORKDIR":
            stage.workdir = _abs(args, stage.workdir)
        elif op == "USER":
            stage.user = args.split(":")[0]
        elif op == "ENV":
            stage.env.update(re.findall(r"(\w+)=(\S+)", args))
        elif op == "COPY":
            argv = shlex.split(args)
            source = next((a.split("=", 1)[1] for a in argv if a.startswith("--from=")), None)
            *srcs, dest = [a for a in argv if not a.startswith("--")]
            stage.copies.append((source, srcs))
            if source is None:
                _copy(stage, srcs, dest)
            else:
                for src in srcs:
                    stage.files[_abs(dest, stage.workdir)] = f"stage:{source}:{_abs(src, '/')}"
        elif op == "RUN":
            stage.runs.append((args, stage.workdir, dict(stage.env)))
            for produced in _produces(args, stage.workdir):
                stage.files[produced] = f"run:{args}"
    return result


def _holds(stage: Stage, path: str) -> bool:
    return path in stage.files or any(
        p.endswith("/") and (path + "/").startswith(p) for p in stage.files
    )


def test_every_copy_source_is_in_the_context_or_an_earlier_stage() -> None:
    names = list(stages())
    for stage in stages().values():
        for source, srcs in stage.copies:
            for src in srcs:
                if source is None:
                    path = src.rstrip("/")
                    assert (ROOT / path).exists(), f"{stage.name}: COPY {src}: no such path"
                    assert any(f == path or f.startswith(path + "/") for f in context_files()), (
                        f"{stage.name}: COPY {src}: .dockerignore leaves nothing of it"
                    )
                    continue
                assert source in names[: names.index(stage.name)], (
                    f"{stage.name}: COPY --from={source}: no earlier stage of that name"
                )
                assert _holds(stages()[source], _abs(src, "/")), (
                    f"{stage.name}: COPY --from={source} {src}: nothing in that stage makes it"
                )


def test_no_copy_overwrites_what_a_stage_installed() -> None:
    for stage in stages().values():
        assert not stage.overwrites, (
            f"{stage.name}: a COPY replaces installed files, e.g. {stage.overwrites[:3]}"
        )
    # what keeps it so, also on a fresh clone that has no node_modules to copy yet
    assert ignored("frontend/node_modules/.package-lock.json")


def test_node_stage_builds_without_python() -> None:
    """The Node image has no Python: ``npm run build`` must get the OpenAPI document as a file."""
    package = json.loads((ROOT / "frontend" / "package.json").read_text())
    node_stages = [s for s in stages().values() if s.base.startswith("node:")]
    assert node_stages, "no Node stage builds the dashboard"
    checked = 0
    for stage in node_stages:
        for command, cwd, env in stage.runs:
            argv = shlex.split(command)
            commands = _npm_commands(argv[2], package) if argv[:2] == ["npm", "run"] else [command]
            for cmd in commands:
                program, *rest = shlex.split(cmd)
                assert not program.startswith(("python", "pip")), f"{stage.name}: runs {cmd}"
                if program != "node":
                    continue
                script_path = _abs(rest[0], cwd)
                origin = stage.files.get(script_path, "")
                assert origin.startswith("context:"), f"{stage.name}: {script_path} is not there"
                script = (ROOT / origin.removeprefix("context:")).read_text()
                if "execFileSync(python" not in script:
                    continue
                # gen-client.mjs runs the Python app unless FEDLORA_OPENAPI names a spec file
                assert "process.env.FEDLORA_OPENAPI" in script
                spec = env.get("FEDLORA_OPENAPI")
                assert spec, f"{stage.name}: `{cmd}` would run Python; set FEDLORA_OPENAPI"
                assert _holds(stage, _abs(spec, cwd)), (
                    f"{stage.name}: FEDLORA_OPENAPI={spec}, a file the stage does not hold"
                )
                checked += 1
    assert checked, "the dashboard build no longer generates its client: update this test"


def test_openapi_stage_runs_on_the_image_files(tmp_path: Path) -> None:
    """Run the stage that writes the OpenAPI document on a copy of exactly the image's files,
    and check the document holds what the client generator reads from it."""
    found = [(s, r) for s in stages().values() for r in s.runs if "api.openapi" in r[0]]
    assert len(found) == 1, "exactly one stage should write the OpenAPI document"
    stage, (command, cwd, env) = found[0]
    image = tmp_path / "image"
    (image / "tmp").mkdir(parents=True)  # every image has /tmp
    for path, origin in stage.files.items():
        if origin.startswith("context:"):
            target = image / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / origin.removeprefix("context:"), target)
    before = set(image.rglob("*"))
    # absolute image paths point into the sandbox; `python` is this interpreter
    sandboxed = re.sub(r"(?<![\w.])/", f"{image}/", command)
    run_env = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run_env = {k: v for k, v in run_env.items() if not k.startswith("FEDLORA_")}
    done = subprocess.run(
        ["sh", "-c", sandboxed], cwd=image / cwd.lstrip("/"), env=run_env,
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (output,) = _produces(command, cwd)
    if stage.user not in ("root", "0"):  # it can write only to /tmp (and its home) in the image
        written = set(image.rglob("*")) - before
        elsewhere = [p for p in written if not p.is_relative_to(image / "tmp")]
        assert not elsewhere, f"{stage.name} runs as {stage.user} and writes {elsewhere[:3]}"
    document = json.loads((image / output.lstrip("/")).read_text())
    gen = (ROOT / "frontend" / "scripts" / "gen-client.mjs").read_text()
    form_path = re.search(r'FORM_PATH = "([^"]+)"', gen)
    assert form_path is not None
    body = document["paths"][form_path.group(1)]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].startswith("#/components/")
